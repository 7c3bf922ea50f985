"""``leanfit quantize``: a round trip on real MiniLM weights, and refusals with exit code 2."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from leanfit.checkpoints import load, merge_into
from leanfit.cli import main
from leanfit.pipeline import LoftQConfig
from leanfit.pretrained import model_path
from leanfit.quantization import QuantLinear


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread, as in tests/quantization: on a shared 2-core machine competing
    OpenMP threads slow the SVDs down many times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "leanfit.cli", *args], capture_output=True, text=True, check=False
    )


def test_quantize_minilm_then_load_matches_the_merged_reference(tmp_path, capsys):
    out = tmp_path / "minilm-nf4"
    options = "--bits 4 --rank 8 --iters 2 --alpha 32 --double-quant --quiet".split()
    code = main(["quantize", "minilm", *options, "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    totals = json.loads((out / "loftq_report.json").read_text())["totals"]
    assert f"QLoRA error {totals['qlora_error']:.4f}, loftq error" in printed
    assert f"wrote {out}" in printed and totals["matrices"] == 37
    assert totals["loftq_error"] < totals["qlora_error"]
    expected = LoftQConfig(bits=4, rank=8, iters=2, lora_alpha=32.0, double_quant=True)
    assert LoftQConfig.load(out / "loftq_config.json") == expected
    # 4-bit codes, float32 scales stored as int8 codes (+ one float per 256 blocks): ~4.13.
    assert 4.12 < totals["bits_per_param"] < 4.14

    model = load(out).eval()
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 37
    reference = merge_into(AutoModel.from_pretrained(model_path("minilm")), out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "backbone")  # the copied tokenizer
    batch = tokenizer(["Mr. Darcy danced only twice."], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        expected_hidden = reference(**batch).last_hidden_state
    # float32, same weights; LoRA (scaling 4) as a separate path: rounding ~1e-6 per layer.
    torch.testing.assert_close(hidden, expected_hidden, rtol=0, atol=1e-4)


def test_an_existing_output_is_refused_with_exit_code_2_and_one_line(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    result = run_cli("quantize", "minilm", "--out", str(out), "--quiet")
    assert result.returncode == 2 and "exists; pass --overwrite" in result.stderr
    assert "Traceback" not in result.stderr and (out / "keep.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "5"], "--bits must be one of (2, 3, 4) with method 'nf'; got 5"),
        (
            ["--rank", "400"],
            "--rank must be below min(n_out, n_in) of every target; got 400 for 'encoder.layer.0",
        ),
        (["--target", "nothing"], "no weight matched the target patterns ['nothing']"),
        (["--threads", "0"], "--threads must be an int >= 1; got 0"),
    ],
)
def test_bad_options_are_named(tmp_path, capsys, args, message):
    assert main(["quantize", "minilm", "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_model_is_named(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_method_options_are_the_config_fields_with_no_default_of_their_own():
    import dataclasses

    from leanfit.cli import build_parser, config_from_args, config_option, parser_of

    parser = parser_of(build_parser(["quantize"]), "quantize")
    by_dest = {action.dest: action for action in parser._actions}
    exposed = [f for f in dataclasses.fields(LoftQConfig) if "help" in f.metadata]
    assert {f.name for f in exposed} == {
        "bits", "rank", "iters", "method", "block_size", "svd", "lora_alpha", "double_quant",
        "avg_bits", "first_high_layers", "high_bits", "bits_budget", "include_conv", "seed",
        "init", "calibration", "calib_tokens", "calib_damp",
    }  # fmt: skip
    for field in exposed:
        action = by_dest[field.name]
        assert action.option_strings == [config_option(field)]
        assert action.help.startswith(field.metadata["help"])
        assert action.default is field.default
    # --target is a plain repeatable option (a regex may hold commas) with no default of its own
    assert by_dest["targets"].default is None
    args = parser.parse_args(["minilm", "--out", "out"])
    assert config_from_args(LoftQConfig, args, targets=None) == LoftQConfig()


def test_options_build_the_config_field_by_field():
    from leanfit.cli import build_parser, parser_of
    from leanfit.cli.quantize import config_of

    parser = parser_of(build_parser(["quantize"]), "quantize")
    argv = [
        "minilm", "--out", "out", "--bits", "3", "--rank", "4", "--iters", "2", "--method",
        "uniform", "--block-size", "32", "--svd", "exact", "--alpha", "8", "--double-quant",
        "--bits-budget", "3.5", "--high-bits", "4", "--target", "q,k", "--target", "v",
        "--include-conv", "--seed", "7", "--calib-tokens", "64", "--calib-damp", "0.1",
    ]  # fmt: skip
    assert config_of(parser.parse_args(argv)) == LoftQConfig(
        bits=3, rank=4, iters=2, method="uniform", block_size=32, svd="exact", lora_alpha=8.0,
        double_quant=True, bits_budget=3.5, high_bits=4, targets=("q,k", "v"),
        include_conv=True, seed=7, calib_tokens=64, calib_damp=0.1,
    )  # fmt: skip
