"""The LoftQ run's report files: ``loftq_report.json`` and ``loftq_report.md``."""

from __future__ import annotations

import json
from pathlib import Path

from leanfit.checkpoints.layout import REPORT_JSON, REPORT_MD
from leanfit.pipeline.config import LoftQReport


def write_reports(root: Path, report: LoftQReport) -> None:
    """``loftq_report.json`` and ``loftq_report.md`` in ``root``."""
    from leanfit.reports import markdown_table, write_report

    (root / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    totals = report.summary()
    config = report.config
    rows = [
        {
            "matrix": m.name,
            "shape": "×".join(map(str, m.matrix_shape)),
            "bits": m.bits,
            "QLoRA": m.qlora_error,
            "LoftQ per iteration": ", ".join(f"{e:.4f}" for e in m.errors) or "–",
            "kept": m.best_iter,
            "error": m.error,
            "bits/param": m.bits_per_param,
            "time (s)": m.seconds,
        }
        for m in report.matrices
    ]
    summary = [
        {
            "matrices": totals["matrices"],
            "QLoRA error": totals["qlora_error"],
            "LoftQ error": totals["loftq_error"],
            "bits/param (targets)": totals["bits_per_param"],
            "bits/param (backbone)": totals["backbone_bits_per_param"],
            "adapter params": totals["adapter_params"],
            "time (s)": totals["seconds"],
            "RSS start → peak (MB)": f"{totals['start_rss_mb']:.0f} → {totals['peak_rss_mb']:.0f}",
            "anon start → peak (MB)": (
                f"{totals['start_anon_mb']:.0f} → {totals['peak_anon_mb']:.0f}"
            ),
        }
    ]
    settings = (
        f"Source `{report.source}` ({report.model_type}); targets: {report.target_rule}; "
        f"init {config.init}, "
        f"{config.method.upper()}{config.bits}"
        + (
            f" (mixed, high {config.high_bits})"
            if config.avg_bits is not None or config.first_high_layers is not None
            else ""
        )
        + (
            f" to {config.high_bits} bits allocated under a budget of {config.bits_budget:g} "
            "stored bits/param"
            if config.bits_budget is not None
            else ""
        )
        + f", block {config.block_size}, rank {config.rank}, alpha {config.lora.alpha:g}, "
        f"T = {config.iters}, {config.svd} SVD, double quant {config.double_quant}.\n\n"
        + (
            f"Calibrated on {config.calibration!r} ({config.calib_tokens} tokens, damping "
            f"{config.calib_damp:g}). Errors are relative output errors on the calibration "
            "tokens X: ‖X (W − Q − (alpha/r)·B·A)ᵀ‖/‖X Wᵀ‖ (Gram damped), QLoRA with B = 0. "
            if config.calibration
            else "Errors are relative Frobenius errors: QLoRA ‖W − Q‖/‖W‖ with Q = quantize(W), "
            "LoftQ ‖W − Q − (alpha/r)·B·A‖/‖W‖ after each iteration. "
        )
        + "The kept iterate is the best one. "
        "Totals weigh each matrix by ‖W‖² (the relative error of all targets together). "
        "Bits/param count packed codes and scales. Memory: resident set size of the process "
        "(psutil) at the start of the walk and its peak; anon = RSS minus file-backed pages "
        "(memory-mapped checkpoint pages are page cache, not allocations)."
    )
    write_report(
        root / REPORT_MD,
        "LoftQ report",
        [
            ("Settings", settings),
            ("Totals", markdown_table(summary)),
            ("Matrices", markdown_table(rows, floatfmt={"QLoRA": ".4f", "error": ".4f"})),
        ],
    )
