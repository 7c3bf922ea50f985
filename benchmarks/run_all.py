"""Run every benchmark script of this folder, one after the other, in full or quick mode.

Each script writes its own ``results/NAME.json`` and ``results/NAME.md`` (``NAME_quick.*`` in
quick mode). In quick mode a script without a ``--quick`` option is skipped. The scripts run
one at a time (they time themselves; running them together would disturb the timings), each
in its own process; a failing script is reported and the others still run.

Usage::

    python benchmarks/run_all.py              # full (what `make bench` runs)
    python benchmarks/run_all.py --quick      # quick (`make bench-quick`)
    python benchmarks/run_all.py --only loftq_speed selection_scale

Exit code 1 if any script failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def scripts() -> list[Path]:
    return sorted(
        p for p in HERE.glob("*.py") if p.name != Path(__file__).name and p.name[0] != "_"
    )


def has_quick(script: Path) -> bool:
    return "--quick" in script.read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script with --quick")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts")
    args = parser.parse_args(argv)
    chosen = [s for s in scripts() if not args.only or s.stem in args.only]
    unknown = set(args.only or ()) - {s.stem for s in chosen}
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; have {[s.stem for s in scripts()]}")
    failed = []
    for script in chosen:
        if args.quick and not has_quick(script):
            print(f"== {script.stem}: skipped (no quick mode)", flush=True)
            continue
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"== {script.stem}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, check=False).returncode
        seconds = time.perf_counter() - start
        print(f"== {script.stem}: exit {code} after {seconds:.0f} s", flush=True)
        if code:
            failed.append(script.stem)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
