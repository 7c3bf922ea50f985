"""Pieces shared by the benchmark scripts: real weight matrices and the results writer.

Scripts run as files (``python benchmarks/NAME.py``), so they import this module as ``_common``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from leanfit.io import atomic_output
from leanfit.pretrained import model_path

SMOLLM2_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def minilm_weights() -> list[torch.Tensor]:
    """The weights of every nn.Linear in all-MiniLM-L6-v2 (37 matrices, out × in)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_path("minilm"))
    return [m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def smollm2_weights() -> list[torch.Tensor]:
    """The attention and MLP projections of SmolLM2-135M-Instruct (210 matrices), from GGUF."""
    from transformers import AutoModelForCausalLM

    path = model_path("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return [
        m.weight.detach().float().clone()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in SMOLLM2_TARGETS
    ]


LOADERS: dict[str, Callable[[], list[torch.Tensor]]] = {
    "minilm": minilm_weights,
    "smollm2": smollm2_weights,
}


def write_results(out: Path, name: str, *, quick: bool, meta: dict, records: list, markdown: str):
    """Write ``NAME.json`` (meta + records) and ``NAME.md`` into ``out``, atomically.

    Quick runs write ``NAME_quick.*`` so they never replace the full results the README shows.
    """
    name = f"{name}_quick" if quick else name
    with atomic_output(out / f"{name}.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    with atomic_output(out / f"{name}.md", overwrite=True) as tmp:
        tmp.write_text(markdown)
    print(f"wrote {out / name}.json and .md")


def machine() -> str:
    """This machine for the results' captions, e.g. ``x86_64 Linux, 2 CPUs``."""
    import os
    import platform

    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs"


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (e.g. ``RssAnon``, ``VmHWM``); Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


class PeakSampler:
    """Peak of RssAnon (kB) sampled every millisecond in a background thread."""

    def __init__(self) -> None:
        self.peak = status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb("RssAnon"))
            time.sleep(0.001)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kb("RssAnon"))
