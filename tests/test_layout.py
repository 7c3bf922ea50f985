"""The package layout keeps its arrows one way and has no import cycle (issue: one concern per
folder). Every ``import`` of a leanfit module counts, at module level or inside a function,
since a lazy import is still a dependency."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = {
    "leanfit.quantization": 0,
    "leanfit.checkpoints": 1,
    "leanfit.pipeline": 2,
    "leanfit.finetune": 3,
}
"""The LoftQ side, bottom up: a package may import its own layer and the ones below."""

SHARED = (
    "leanfit.exceptions",
    "leanfit.checks",
    "leanfit.io",
    "leanfit.heap",
    "leanfit.quiet",
    "leanfit.lazy",
    "leanfit._version",
    "leanfit.datasets",
    "leanfit.reports",
)
"""Imported by either side; they import neither side."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def leanfit_imports(path: Path) -> set[str]:
    """The leanfit modules ``path`` imports (``from leanfit.x import y`` counts as
    ``leanfit.x.y`` when that is a module, else ``leanfit.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("leanfit"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("leanfit"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: leanfit_imports(path) for name, path in MODULES.items()}


def package_of(module: str, packages) -> str | None:
    return next((p for p in packages if module == p or module.startswith(p + ".")), None)


def test_loftq_side_imports_only_downwards():
    wrong = []
    for module, imports in GRAPH.items():
        layer = LAYERS.get(package_of(module, LAYERS) or "")
        if layer is None:
            continue
        for imported in imports:
            other = package_of(imported, LAYERS)
            if other is not None and LAYERS[other] > layer:
                wrong.append(f"{module} -> {imported}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_the_two_halves_and_the_shared_modules_stay_apart():
    selection = [m for m in GRAPH if m.startswith("leanfit.selection")]
    loftq = [m for m in GRAPH if package_of(m, LAYERS)]
    shared = [m for m in GRAPH if package_of(m, SHARED)]
    crossing = [f"{m} -> {i}" for m in selection for i in GRAPH[m] if package_of(i, LAYERS)] + [
        f"{m} -> {i}" for m in loftq for i in GRAPH[m] if i.startswith("leanfit.selection")
    ]
    crossing += [
        f"{m} -> {i}"
        for m in shared
        for i in GRAPH[m]
        if package_of(i, LAYERS) or i.startswith(("leanfit.selection", "leanfit.cli"))
    ]
    assert not crossing, "\n".join(sorted(crossing))


def test_no_import_cycle():
    """Tarjan's strongly connected components over the module graph: every one is a single
    module (a package's ``__init__`` importing its own submodules is not a cycle, as long as
    the submodules do not import the package back)."""
    graph = {m: {i for i in GRAPH[m] if i in GRAPH and i != m} for m in GRAPH}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_modules_stay_short():
    """About 600 lines a module at most; 700 leaves room for the few that are one idea each
    (the selection workflow, the fine-tuning loop, the quantizers: 640-690 lines)."""
    lengths = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert not {m: n for m, n in lengths.items() if n > 700}
