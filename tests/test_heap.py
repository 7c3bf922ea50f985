"""Giving freed memory back: large blocks mapped on their own leave the process when freed."""

import subprocess
import sys
import textwrap

import pytest

FRAGMENT = """
import sys
import torch
from leanfit.heap import map_large_blocks

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

applied = map_large_blocks() if sys.argv[1] == "mapped" else False
torch.ones(1 << 20)  # a first 4 MiB block, freed: glibc's own threshold rises above it
before = anon_mb()
large, kept = [], []
for _ in range(20):  # 4 MiB blocks, each followed by a small block that stays
    large.append(torch.ones(1 << 20))
    kept.append(torch.ones(64))
del large
print(applied, anon_mb() - before)
"""


def retained(mode: str) -> tuple[bool, float]:
    code = textwrap.dedent(FRAGMENT)
    run = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
    )
    applied, grown = run.stdout.split()
    return applied == "True", float(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_large_blocks_mapped_on_their_own_leave_when_freed():
    applied, mapped = retained("mapped")
    _, heap = retained("heap")
    assert applied
    # 80 MiB were made and freed. From the heap, the small blocks between them pin the pages
    # (measured: all 80 MiB stay); mapped on their own, each block is unmapped when freed
    # (measured: < 1 MiB stays; 8 MiB allows for the interpreter's own allocations).
    assert heap > 40, heap
    assert mapped < 8, mapped
