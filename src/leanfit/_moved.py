"""Old import paths of what moved out of :mod:`leanfit.quantization`, kept for one release.

Until leanfit 0.3 the package was one flat folder. Its modules now live by concern
(:mod:`leanfit.quantization` the maths, :mod:`leanfit.checkpoints` reading and writing,
:mod:`leanfit.pipeline` running a quantization, :mod:`leanfit.finetune` training and
evaluation). Importing an old module path, or an old name from :mod:`leanfit.quantization`,
still works and warns with a :class:`DeprecationWarning` naming the new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

REMOVAL = "leanfit 0.4"

MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "leanfit.quantization.apply": (
        "leanfit.quantization.config",
        "leanfit.pipeline.walker",
        "leanfit.pipeline.computers",
        "leanfit.pipeline.memory",
        "leanfit.checkpoints.base",
    ),
    "leanfit.quantization.artifacts": (
        "leanfit.checkpoints.layout",
        "leanfit.checkpoints.writer",
        "leanfit.checkpoints.loading",
    ),
    "leanfit.quantization.checkpoint": (
        "leanfit.checkpoints.source",
        "leanfit.checkpoints.base",
        "leanfit.checkpoints.gguf_source",
    ),
    "leanfit.quantization.targets": ("leanfit.checkpoints.targets",),
    "leanfit.quantization.resume": ("leanfit.checkpoints.resume",),
    "leanfit.quantization.synthetic": ("leanfit.checkpoints.synthetic",),
    "leanfit.quantization.memory": ("leanfit.pipeline.memory",),
    "leanfit.quantization.parallel": ("leanfit.pipeline.parallel",),
    "leanfit.quantization.distributed": ("leanfit.pipeline.distributed",),
    "leanfit.quantization.calibration": ("leanfit.pipeline.calibration",),
    "leanfit.quantization.allocation": ("leanfit.pipeline.allocation",),
    "leanfit.quantization.finetune": ("leanfit.finetune.training",),
    "leanfit.quantization.data": ("leanfit.finetune.data",),
    "leanfit.quantization.evaluate": ("leanfit.finetune.evaluate",),
    "leanfit.quantization.runs": ("leanfit.finetune.runs",),
    "leanfit.quantization.options": ("leanfit.finetune.options",),
}
"""Old module path -> the modules its names now live in (searched in this order)."""

MOVED_NAMES: dict[str, str] = {
    "quantize_checkpoint": "leanfit.pipeline",
    "quantize_module": "leanfit.pipeline",
    "estimate_checkpoint_memory": "leanfit.pipeline",
    "load": "leanfit.checkpoints",
    "load_into": "leanfit.checkpoints",
    "merge_into": "leanfit.checkpoints",
}
"""Names that :mod:`leanfit.quantization` exported and that now live elsewhere."""


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warn_moved` that points at the code doing the import:
    the first frame outside this module, ``leanfit.quantization`` and importlib (whose
    frames :func:`warnings.warn` skips without counting them)."""
    frame, level = sys._getframe(2), 2
    while frame.f_back is not None:
        internal = frame.f_code.co_filename.startswith("<frozen importlib")
        ours = frame.f_globals.get("__name__") in (__name__, "leanfit.quantization")
        if not internal and not ours:
            break
        frame, level = frame.f_back, level + (not internal)
    return level


_warned: set[str] = set()


def warn_moved(old: str, new: str) -> None:
    """Warn, once per process, that ``old`` is deprecated in favour of ``new``, at the
    importing line (``from leanfit.quantization import name`` looks ``name`` up twice)."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(
        f"{old} moved to {new}; the old path is deprecated and will be removed in {REMOVAL}",
        DeprecationWarning,
        stacklevel=_caller_stacklevel(),
    )


def moved_name(name: str) -> Any:
    """``leanfit.quantization.<name>`` for a name that moved (PEP 562 ``__getattr__``)."""
    home = MOVED_NAMES.get(name)
    if home is None:
        raise AttributeError(f"module 'leanfit.quantization' has no attribute {name!r}")
    warn_moved(f"leanfit.quantization.{name}", f"{home}.{name}")
    return getattr(importlib.import_module(home), name)


class _AliasModule(types.ModuleType):
    """An old module path whose names are looked up in their new modules."""

    def __init__(self, name: str, homes: tuple[str, ...]) -> None:
        super().__init__(name, f"Deprecated alias of {', '.join(homes)}.")
        self._homes = homes

    def __getattr__(self, attribute: str) -> Any:
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module paths of :data:`MOVED_MODULES`, each as an :class:`_AliasModule`
    (so patching an attribute through an old path does not reach the new module)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = MOVED_MODULES[spec.name]
        warn_moved(spec.name, " and ".join(homes))
        return _AliasModule(spec.name, homes)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module was built by :meth:`create_module`."""


def install() -> None:
    """Put the finder of the old module paths first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
