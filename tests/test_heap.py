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


def heap_mb():
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            return (end - start) / 2**20
    return 0.0

applied = map_large_blocks() if sys.argv[1] == "mapped" else False
torch.ones(4 << 20)  # a 16 MiB block, freed: glibc's own threshold rises above 4 MiB
before, heap = anon_mb(), heap_mb()
large, kept = [], []
for _ in range(20):  # 4 MiB blocks, each followed by a small block that stays
    large.append(torch.ones(1 << 20))
    kept.append(torch.ones(64))
heap = heap_mb() - heap
del large
print(applied, heap, anon_mb() - before)
"""


def blocks(mode: str) -> tuple[bool, float, float]:
    """(applied, MiB the C heap grew by while the blocks live, MiB still resident once freed)."""
    code = textwrap.dedent(FRAGMENT)
    run = subprocess.run(
        [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
    )
    applied, heap, grown = run.stdout.split()
    return applied == "True", float(heap), float(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_large_blocks_mapped_on_their_own_leave_when_freed():
    applied, heap, retained = blocks("mapped")
    _, heap_by_default, _ = blocks("heap")
    assert applied
    # glibc's own threshold, raised by the freed 16 MiB block, serves the twenty 4 MiB blocks
    # from the heap (it grows by their 80 MiB); mapped on their own, they leave it alone.
    assert heap_by_default > 60 and heap < 8, (heap_by_default, heap)
    # 80 MiB were made and freed: mapped on their own, each block is unmapped when freed
    # (measured: < 1 MiB stays; 8 MiB allows for the interpreter's own allocations).
    assert retained < 8, retained
