"""What the ``leanfit`` command imports and prints, checked on real processes.

Start-up: ``leanfit --help`` and ``leanfit SUBCOMMAND --help`` import none of the heavy
libraries, and ``leanfit quantize`` imports nothing of the selection side or the plotting
stack. The import list is ``sys.modules`` at the end of a fresh process that runs the
command (``python -X importtime`` would miss modules imported by ``importlib``). How long
start-up takes is measured in ``benchmarks/quantize_end_to_end.py``, never asserted here.

Noise: a command that imports PEFT (and through it bitsandbytes) prints nothing on stderr
that is not about the run.
"""

import json
import logging
import subprocess
import sys

import pytest
import torch
from transformers import BertConfig, BertModel

from leanfit.checkpoints.layout import read_adapter_config, write_adapter_config
from leanfit.cli import SUBCOMMANDS, build_parser, main
from leanfit.cli.data import TABULAR_NAMES
from leanfit.datasets import TABULAR
from tests.shared import TINY_BERT, quantize_tiny_causal_lm

#: Libraries that take seconds to import; a help text needs none of them.
HEAVY = {"torch", "sklearn", "transformers", "peft", "matplotlib", "pandas", "scipy"}
#: What ``leanfit quantize`` must never import: the selection side, the plotting stack, and
#: PEFT (importing it, and bitsandbytes through it, took longer than quantizing a small model;
#: the adapter config is written without it).
NOT_FOR_QUANTIZE = {
    "leanfit.selection", "sklearn", "fairlearn", "imodels", "matplotlib", "peft", "bitsandbytes",
}  # fmt: skip
#: Nor, for a model type with a target table, the model's code and transformers' loading and
#: quantizer machinery (about 2 s of imports: torch.distributed, torch._dynamo, generation),
#: nor pandas (the report tables are built from records).
NOT_FOR_A_TABLE_TYPE = {
    "transformers.modeling_utils", "transformers.models.bert.modeling_bert",
    "transformers.quantizers", "leanfit.checkpoints.hf", "pandas",
}  # fmt: skip
NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


#: The body of the ``leanfit`` script, then ``sys.modules`` as the last line on stderr.
MODULES_AFTER = """
import json, sys
from leanfit.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print("sys.modules:", json.dumps(sorted(sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def run_leanfit(*args: str, list_modules: bool = False) -> subprocess.CompletedProcess:
    """``leanfit ARGS`` in a fresh process (with ``list_modules``: then print ``sys.modules``)."""
    entry = ["-c", MODULES_AFTER] if list_modules else ["-m", "leanfit.cli"]
    command = [sys.executable, *entry, *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def imported_modules(result: subprocess.CompletedProcess) -> set[str]:
    """The modules a ``run_leanfit(..., list_modules=True)`` process had imported at the end."""
    last = result.stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("sys.modules: "), result.stderr[-2000:]
    return set(json.loads(last.removeprefix("sys.modules: ")))


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def hits(modules: set[str], forbidden: set[str]) -> set[str]:
    """The forbidden packages (or subpackages such as ``leanfit.selection``) imported."""
    return {f for f in forbidden if any(m == f or m.startswith(f + ".") for m in modules)}


def listed(help_text: str) -> set[str]:
    """The subcommand lines of a help text found among ``listed_summaries()``, whitespace
    removed (argparse wraps long lines, also after a hyphen)."""
    text = "".join(help_text.split())
    return {line for line in listed_summaries() if line in text}


def listed_summaries() -> set[str]:
    return {"".join(f"{name} {summary}".split()) for name, summary in SUBCOMMANDS.items()}


def test_module_list_is_read():
    # The list must hold real imports, or the absence checks below prove nothing.
    result = run_leanfit("quantize", "--help", list_modules=True)
    modules = imported_modules(result)
    assert {"argparse", "leanfit.cli", "leanfit.cli.quantize"} <= modules
    assert "--bits" in result.stdout


def test_top_level_help_imports_no_subcommand():
    result = run_leanfit("--help", list_modules=True)
    assert result.returncode == 0
    assert listed(result.stdout) == listed_summaries()
    modules = imported_modules(result)
    assert not top_level(modules) & HEAVY, sorted(top_level(modules) & HEAVY)
    assert not {m for m in modules if m.startswith("leanfit.cli.")}


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_subcommand_help_imports_nothing_heavy(command):
    result = run_leanfit(command, "--help", list_modules=True)
    assert result.returncode == 0 and f"usage: leanfit {command}" in result.stdout
    heavy = top_level(imported_modules(result)) & HEAVY
    assert not heavy, sorted(heavy)


def test_the_complete_parser_has_every_option_and_the_same_listing():
    parser = build_parser()
    assert listed(parser.format_help()) == listed_summaries()
    args = parser.parse_args(["quantize", "model", "--out", "out", "--workers", "2"])
    assert (args.command, args.workers) == ("quantize", 2)


def test_unknown_subcommand_lists_them_all():
    result = run_leanfit("quantise")
    assert result.returncode == 2
    assert "invalid choice: 'quantise'" in result.stderr
    assert all(name in result.stderr for name in SUBCOMMANDS)


def test_data_names_match_the_vendored_tables():
    assert TABULAR_NAMES == tuple(sorted(TABULAR))


def test_quantize_imports_no_selection_or_plotting(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(**TINY_BERT, max_position_embeddings=32)
    BertModel(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    result = run_leanfit(
        "quantize", str(tmp_path / "model"), "--out", str(out), "--rank", "4", "--quiet",
        list_modules=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    modules = imported_modules(result)
    assert "leanfit.cli.quantize" in modules and "torch" in modules
    assert not hits(modules, NOT_FOR_QUANTIZE), sorted(hits(modules, NOT_FOR_QUANTIZE))
    assert not hits(modules, NOT_FOR_A_TABLE_TYPE), sorted(hits(modules, NOT_FOR_A_TABLE_TYPE))
    assert not {m for m in modules if m.startswith("leanfit.cli.") and m != "leanfit.cli.quantize"}


def test_a_peft_command_prints_no_dependency_noise(tmp_path):
    control = subprocess.run(
        [sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, check=False
    )
    if NOTICE not in control.stderr:
        pytest.skip("bitsandbytes prints no kernel notice on this CPU (needs AVX512-BF16)")
    directory = quantize_tiny_causal_lm(tmp_path)
    result = run_leanfit(
        "evaluate", str(directory), "--task", "causal-lm", "--text", "pride_and_prejudice",
        "--max-tokens", "64", "--window", "16", "--stride", "8", "--fidelity-examples", "2",
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"perplexity"' in result.stdout
    # --quiet: no progress bars, and nothing else either (the kernel notice, PEFT's use of a
    # deprecated transformers property, transformers' "Loading weights" bar).
    assert result.stderr == ""


def test_only_the_kernel_notice_is_dropped_and_only_inside_leanfit(caplog):
    from leanfit.quiet import dependency_noise_dropped

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with dependency_noise_dropped():
            logger.warning(NOTICE + ": %s. Please make sure you already `pip install kernels`", "x")
            logger.warning("another bitsandbytes warning")
        logger.warning(NOTICE + ": outside leanfit's calls")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["another bitsandbytes warning", NOTICE + ": outside leanfit's calls"]


#: Imports leanfit's dependencies (which add warning filters of their own), then every part
#: of leanfit, and prints whether the warning filters and the loggers' filters, handlers and
#: levels are as they were before leanfit.
HOST_STATE = """
import importlib, logging, warnings
import numpy, pandas, scipy, sklearn, torch, transformers, peft, safetensors, tqdm

def state():
    loggers = {name: (tuple(l.filters), tuple(l.handlers), l.level)
               for name, l in logging.root.manager.loggerDict.items()
               if isinstance(l, logging.Logger)}
    root = logging.getLogger()
    return list(warnings.filters), (tuple(root.filters), tuple(root.handlers), root.level), loggers

before = state()
for name in ("leanfit", "leanfit.quantization", "leanfit.checkpoints", "leanfit.pipeline",
             "leanfit.finetune.runs", "leanfit.finetune.training", "leanfit.selection",
             "leanfit.datasets", "leanfit.reports"):
    importlib.import_module(name)
after = state()
print(before[0] == after[0], before[1] == after[1],
      all(after[2].get(name) == kept for name, kept in before[2].items()),
      [name for name, (filters, _, _) in after[2].items() if filters])
"""


def test_importing_leanfit_leaves_the_hosts_warnings_and_logging_alone():
    result = subprocess.run(
        [sys.executable, "-c", HOST_STATE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True", "True", "[]"]


def test_version_needs_no_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("leanfit ")


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
def test_adapter_config_written_without_peft_reads_as_peft_writes_it(tmp_path, task_type):
    from peft import LoraConfig

    modules = ["layers.1.v_proj", "layers.0.q_proj"]
    write_adapter_config(tmp_path, rank=8, alpha=16, target_modules=modules, task_type=task_type)
    expected = LoraConfig(
        r=8, lora_alpha=16, target_modules=modules, task_type=task_type, lora_dropout=0.0,
        bias="none",
    )  # fmt: skip
    assert LoraConfig.from_pretrained(str(tmp_path)).to_dict() == expected.to_dict()
    assert read_adapter_config(tmp_path)["target_modules"] == sorted(modules)
