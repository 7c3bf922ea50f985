"""``make demo``: run every part of leanfit on real data and models, and say where it wrote.

Each step is a function of the output directory that writes its files there and returns a
one-line summary.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from leanfit.datasets import TABULAR
from leanfit.pretrained import PACKAGES, model_path


def datasets_step(out: Path) -> str:
    """Summarize the vendored tabular data sets and the packaged models in ``datasets.md``."""
    lines = ["| data set | rows | target = positive | sensitive = privileged | P(y=1) | P(s=1) |"]
    lines.append("|---|---:|---|---|---:|---:|")
    for name, loader in TABULAR.items():
        ds = loader()
        lines.append(
            f"| {name} | {len(ds):,} | {ds.target} = {ds.positive} | "
            f"{ds.sensitive} = {ds.privileged} | {ds.y.mean():.3f} | {ds.s.mean():.3f} |"
        )
    lines += ["", "| model | path |", "|---|---|"]
    lines += [f"| {name} | `{model_path(name)}` |" for name in PACKAGES]
    path = out / "datasets.md"
    path.write_text("\n".join(lines) + "\n")
    return f"data sets and models: {path}"


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Use ``count`` torch threads inside the block, then restore the previous number."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def loftq_minilm_step(out: Path) -> str:
    """Quantize MiniLM at 2 and 4 bits, QLoRA init and LoftQ (T = 5, rank 16); compare errors.

    Writes ``loftq-minilm-{bits}bit-{init}/`` (backbone, adapter, report) and
    ``loftq_minilm.md``, a table of the total relative errors ‖W − Q − (α/r)·B·A‖/‖W‖.
    """
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint
    from leanfit.reports import markdown_table

    rows = []
    for bits in (2, 4):
        for init in ("qlora", "loftq"):
            config = LoftQConfig(bits=bits, rank=16, iters=5, init=init)
            target = out / f"loftq-minilm-{bits}bit-{init}"
            # One thread: the small SVDs gain little from more, and on a busy 2-core machine
            # competing OpenMP threads made this step 8x slower (3.4 min instead of 25 s).
            with _torch_threads(1):
                report = quantize_checkpoint(
                    model_path("minilm"), target, config, overwrite=True, progress=False
                )
            rows.append(
                {
                    "bits": bits,
                    "init": init,
                    "T": config.iters,
                    "rank": config.rank,
                    "relative error": report.error,
                    "bits/param": report.bits_per_param,
                    "time (s)": report.seconds,
                    "output": target.name,
                }
            )
    table = markdown_table(rows, floatfmt={"relative error": ".4f", "time (s)": ".1f"})
    path = out / "loftq_minilm.md"
    path.write_text(
        "# LoftQ vs QLoRA on all-MiniLM-L6-v2 (37 linear matrices, NF, block 64)\n\n"
        "Total relative error ‖W − Q − (α/r)·B·A‖_F / ‖W‖_F over the quantized matrices "
        "(QLoRA: B = 0).\n\n" + table
    )
    print(table)
    errors = {(r["bits"], r["init"]): r["relative error"] for r in rows}
    return (
        f"LoftQ on MiniLM: error {errors[2, 'qlora']:.3f} → {errors[2, 'loftq']:.3f} at 2 bits, "
        f"{errors[4, 'qlora']:.3f} → {errors[4, 'loftq']:.3f} at 4 bits: {path}"
    )


def selection_step(out: Path) -> str:
    """Influence-based data selection on Adult (the paper's protocol), all objectives, 5 %."""
    from leanfit.selection import ModelSettings, SelectionConfig, adult_protocol, run_selection

    split = adult_protocol()
    config = SelectionConfig(model=ModelSettings(split.l2_reg, split.fit_intercept))
    result = run_selection(
        split.train,
        split.val,
        split.test,
        config,
        out_dir=out / "selection-adult",
        overwrite=True,
        description=split.description,
    )
    metrics = result.metrics.set_index("model")
    before, after = metrics.loc["untrimmed"], metrics.loc["fairness influence"]
    random = metrics.loc["random"]
    return (
        f"data selection on Adult: trimming {result.n_removed:,} rows by fairness influence "
        f"takes DP {before['dp']:.3f} → {after['dp']:.3f} at accuracy {before['accuracy']:.3f} → "
        f"{after['accuracy']:.3f} (random: DP {random['dp']:.3f}, accuracy "
        f"{random['accuracy']:.3f}); report {result.report}"
    )


STEPS: list[Callable[[Path], str]] = [datasets_step, loftq_minilm_step, selection_step]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the leanfit demo.")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summaries = [step(args.out) for step in STEPS]
    print("\nleanfit demo finished; outputs:")
    for summary in summaries:
        print(f"  - {summary}")


if __name__ == "__main__":
    main()
