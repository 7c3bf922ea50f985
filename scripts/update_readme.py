"""Write the generated parts of README.md and docs/*.md (``--check``: only say if stale).

A generated part sits between a pair of comment lines, ``<!-- KIND:NAME -->`` and
``<!-- /KIND:NAME -->``; everything outside the pairs is written by hand. Three kinds:

``results:NAME`` (docs/benchmarks.md, one pair for every ``benchmarks/results/NAME.md``)
    The result copied verbatim, its headings two levels down (``#`` becomes ``###``) so that
    they nest under the page's sections, and a line saying which script produced it.
``summary:quantization``, ``summary:selection`` (README.md), ``summary:finetune-memory``
(docs/quantization.md)
    Tables of headline figures, built from ``benchmarks/results/*.json``; each README row links
    to the full table in docs/benchmarks.md.
``options:COMMAND`` (any docs/*.md)
    The options of ``leanfit COMMAND``, read from the CLI's argparse parser.

Run from anywhere with the project's Python: ``python scripts/update_readme.py`` rewrites the
files that are out of date; ``--check`` exits with 1 if any is. A results file without its
markers (or markers without a results file) is an error naming the file and the markers to add.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BENCHMARKS_DOC = DOCS / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results"

Loader = Callable[[str], Any]


# ---------------------------------------------------------------------------------------------
# Markers


def marker_pattern(kind: str, name: str = r"[\w-]+") -> re.Pattern[str]:
    """Matches one generated part: group 1 the opening line, 2 the name, 3 the closing line."""
    return re.compile(f"(<!-- {kind}:({name}) -->).*?(<!-- /{kind}:\\2 -->)", re.DOTALL)


def marker_names(text: str, kind: str) -> list[str]:
    """The names of the generated parts of ``kind`` in ``text``, in order (repeats kept)."""
    return [match[2] for match in marker_pattern(kind).finditer(text)]


def replace_blocks(text: str, kind: str, blocks: dict[str, str], where: str) -> str:
    """``text`` with the part between each pair of ``kind`` markers replaced by ``blocks[name]``.

    Raises
    ------
    ValueError
        Listing every name of ``blocks`` without exactly one pair of markers in ``text`` and
        every pair of markers whose name is not in ``blocks``; ``where`` names the file.
    """
    found = marker_names(text, kind)
    problems = [
        f"{where} must have one pair of markers <!-- {kind}:{name} --> … "
        f"<!-- /{kind}:{name} -->; found {found.count(name)}"
        for name in sorted(blocks)
        if found.count(name) != 1
    ]
    problems += [
        f"{where} has markers <!-- {kind}:{name} --> but nothing generates {kind}:{name}"
        for name in sorted(set(found) - set(blocks))
    ]
    if problems:
        raise ValueError("\n".join(problems))
    for name, content in blocks.items():
        body = f"\n{content.strip()}\n"
        text = marker_pattern(kind, re.escape(name)).sub(
            lambda m, body=body: m[1] + body + m[3], text
        )
    return text


# ---------------------------------------------------------------------------------------------
# results: the benchmark tables, verbatim


def read_results(folder: Path | None = None) -> dict[str, str]:
    """Every ``NAME.md`` of ``folder`` (default RESULTS), by NAME (``*_quick.md`` from quick
    runs excluded)."""
    folder = RESULTS if folder is None else folder
    paths = [path for path in sorted(folder.glob("*.md")) if not path.stem.endswith("_quick")]
    return {path.stem: path.read_text(encoding="utf-8") for path in paths}


def producer(name: str) -> str:
    """The script that writes result ``name``: ``benchmarks/NAME.py``, else the one whose name
    ``name`` extends (``selection_scale_census`` comes from ``selection_scale.py``)."""
    script = name
    while not (ROOT / "benchmarks" / f"{script}.py").is_file() and "_" in script:
        script = script.rsplit("_", 1)[0]
    return script if (ROOT / "benchmarks" / f"{script}.py").is_file() else name


def results_block(name: str, markdown: str) -> str:
    """A result with its headings demoted by two levels, followed by where it comes from."""
    lines = [f"##{line}" if line.startswith("#") else line for line in markdown.strip().split("\n")]
    origin = (
        f"<sub>Produced by `benchmarks/{producer(name)}.py` into `benchmarks/results/{name}.md`, "
        "copied here by `scripts/update_readme.py`.</sub>"
    )
    return "\n".join([*lines, "", origin])


def splice(text: str, results: dict[str, str], where: str = "docs/benchmarks.md") -> str:
    """``text`` (docs/benchmarks.md) with every result between its markers."""
    blocks = {name: results_block(name, markdown) for name, markdown in results.items()}
    return replace_blocks(text, "results", blocks, where)


# ---------------------------------------------------------------------------------------------
# summary: headline tables of the README, from the JSON results


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def result_link(name: str, results: dict[str, str]) -> str:
    """A link to result ``name`` in docs/benchmarks.md (the anchor of its first heading)."""
    title = next(line for line in results[name].splitlines() if line.startswith("# "))
    return f"[{name}](docs/benchmarks.md#{slug(title[2:])})"


def num(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; from 10⁴ on as ``1.6e9`` (two significant digits)."""
    if abs(value) >= 1e4:
        exponent = math.floor(math.log10(abs(value)))
        return f"{value / 10**exponent:.1f}e{exponent}"
    return f"{value:.{digits}f}"


def ppl(value: float) -> str:
    """A perplexity: four significant digits below 10⁴ (21.05, 454.1, 1121), else ``7.6e4``."""
    return num(value) if value >= 1e4 else f"{value:.4g}"


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| what | result | full table |", "|---|---|---|"]
    lines += [f"| {what} | {result} | {link} |" for what, result, link in rows]
    return "\n".join(lines)


def quantization_summary(load: Loader, results: dict[str, str]) -> str:
    """Headline figures of the quantization half (weight error, perplexity, speed, memory)."""
    pipeline = {(r["model"], r["bits"]): r for r in load("loftq_pipeline")["records"]}
    calibrated = load("loftq_calibrated")
    by_method = {
        (r["plan"], r["rank"], r["method"]): r for r in calibrated["records"] if r["rank"] == 16
    }
    full_lora = next(r for r in load("loftq_finetune")["smollm2"] if r["init"] == "full-precision")
    speed = load("loftq_speed")["whole_machine"]
    end_to_end = load("quantize_end_to_end")
    bert = next(r for r in end_to_end["quantize"] if r["model"] == "bert-base-sized")
    memory = load("quantize_memory")["records"]
    streamed = sorted(
        (r for r in memory if r["method"] == "streaming" and r["checkpoint"].startswith("synth")),
        key=lambda r: r["file_gb"],
    )
    small, large = streamed[0], streamed[-1]
    loaded = next(
        r for r in memory if r["method"] == "from_pretrained" and r["file_gb"] == large["file_gb"]
    )
    tuning = {(r["model"], r["tokens"]): r for r in finetune_memory_rows(load)}

    def errors(model: str) -> str:
        row = pipeline[(model, 2)]
        return f"{model}: QLoRA {num(row['QLoRA error'])} → LoftQ {num(row['LoftQ error'])}"

    def perplexities(plan: str, key: str) -> str:
        methods = ("QLoRA", "LoftQ", "calibrated LoftQ")
        return " · ".join(f"{m} {ppl(by_method[(plan, 16, m)][key])}" for m in methods)

    smol = pipeline[("smollm2", 2)]
    fp32_mb = next(r["model_fp32_mb"] for r in memory if r["checkpoint"].startswith("SmolLM2"))
    ratios = [r["leanfit_error"] / r["reference_error"] - 1 for r in speed]
    speedups = [r["speedup"] for r in speed]
    link = functools.partial(result_link, results=results)
    rows = [
        (
            "Weight error at 2 bits, rank 16 (relative Frobenius, all targets)",
            f"{errors('minilm')}; {errors('smollm2')}",
            link("loftq_pipeline"),
        ),
        (
            "SmolLM2-135M held-out perplexity, 2 bits, rank 16, at initialization "
            f"(full precision {ppl(calibrated['meta']['ppl_full_precision'])})",
            perplexities("2 bits", "ppl_init"),
            link("loftq_calibrated"),
        ),
        (
            f"… after 8 LoRA steps (full-precision LoRA: {ppl(full_lora['ppl_finetuned'])})",
            perplexities("2 bits", "ppl_finetuned"),
            link("loftq_calibrated"),
        ),
        (
            "… 4 bits, rank 16, after 8 LoRA steps",
            perplexities("4 bits", "ppl_finetuned"),
            link("loftq_calibrated"),
        ),
        (
            "SmolLM2-135M stored at 2 bits (embeddings kept in float)",
            f"backbone {smol['backbone (MB)']:.0f} MB + adapter {smol['adapter (MB)']:.0f} MB "
            f"(float32: {fp32_mb:.0f} MB)",
            link("loftq_pipeline"),
        ),
        (
            "LoftQ speed against the published algorithm (exact SVD every step), "
            f"{len(speed)} model/bits/rank settings, whole machine",
            f"{min(speedups):.1f}–{max(speedups):.1f}× faster; error at most "
            f"{100 * max(ratios):.1f} % above the reference's",
            link("loftq_speed"),
        ),
        (
            "The whole `leanfit quantize` command against the published algorithm run end to "
            "end (110M-parameter BERT-base-sized encoder, start-up and I/O included; reference "
            f"on {end_to_end['meta']['reference_threads']} torch thread(s))",
            f"{bert['speedup_leanfit']:.1f}× ({bert['reference']['wall_s']:.0f} s → "
            f"{bert['leanfit']['wall_s']:.0f} s), `--workers 2`: "
            f"{bert['speedup_leanfit_workers2']:.1f}×; `leanfit --help` "
            f"{end_to_end['startup']['leanfit --help']['wall_s']:.2f} s",
            link("quantize_end_to_end"),
        ),
        (
            f"Peak memory of `leanfit quantize` as the checkpoint grows from "
            f"{small['file_gb']:g} to {large['file_gb']:g} GB",
            f"{small['peak_anon_mb']:.0f} → {large['peak_anon_mb']:.0f} MB anonymous; peak RSS "
            f"{large['peak_rss_mb']:.0f} MB vs {loaded['peak_rss_mb']:.0f} MB loading the model "
            "first",
            link("quantize_memory"),
        ),
        (
            "Peak memory of a LoRA step on the 2-bit backbone (lowest of leanfit's settings, "
            "fresh processes, imports included) against PEFT LoRA on the float32 model and "
            "against `leanfit finetune` on the float32 weights",
            "; ".join(
                f"{model} 1 × {tokens}: {row['best']:.0f} MB, **{row['best'] / row['peft']:.2f}×**"
                f" and {row['best'] / row['anchor']:.2f}×"
                for (model, tokens), row in tuning.items()
                if (model, tokens) in (("smollm2", 512), ("llama-1.1b", 256)) and row["anchor"]
            ),
            link("finetune_memory"),
        ),
    ]
    return table(rows)


def finetune_memory_rows(load: Loader) -> list[dict[str, Any]]:
    """Per model and length: leanfit's lowest peak at 2 bits against PEFT LoRA's lowest and
    the in-tool float32 anchor's (``leanfit-fp``), NF4 QLoRA's, the plain PEFT paths' ratio,
    and the step time against the fastest float32 step."""
    data = load("finetune_memory")
    key = "peak_cuda_mb" if data["meta"]["device"] == "cuda" else "peak_rss_mb"
    records = data["records"]
    rows = []
    for model, tokens in dict.fromkeys((r["model"], r["tokens"]) for r in records):
        group = [r for r in records if (r["model"], r["tokens"]) == (model, tokens)]
        ours = [r for r in group if r["tool"] in ("leanfit", "leanfit-peft") and r["bits"] == 2]
        peft = [r for r in group if r["tool"] == "peft"]
        if not ours or not peft:
            continue
        best = min(ours, key=lambda r: r[key])
        anchor = min((r[key] for r in group if r["tool"] == "leanfit-fp"), default=None)
        plain_peft = next((r for r in peft if not r["options"]), None)
        plain = next((r for r in ours if r["tool"] == "leanfit-peft"), None)
        qlora = [r[key] for r in group if r["tool"] == "bnb-nf4"]
        floats = peft + [r for r in group if r["tool"] == "leanfit-fp"]
        rows.append(
            {
                "model": model,
                "tokens": tokens,
                "peft": min(r[key] for r in peft),
                "anchor": anchor,
                "qlora": min(qlora) if qlora else None,
                "best": best[key],
                "time_ratio": best["step_seconds"] / min(r["step_seconds"] for r in floats),
                "plain_ratio": plain[key] / plain_peft[key] if plain and plain_peft else None,
            }
        )
    return rows


def finetune_memory_summary(load: Loader) -> str:
    """docs/quantization.md's table: peak memory of a LoRA step, leanfit at 2 bits against
    PEFT LoRA on the float32 model, the same loop on the float32 weights, and NF4 QLoRA."""

    def mb(value: float | None) -> str:
        return "–" if value is None else f"{value:.0f}"

    def ratio(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}×"

    lines = [
        "| model | tokens | PEFT LoRA MB | leanfit float32 MB | NF4 QLoRA MB | leanfit 2-bit MB "
        "| vs PEFT | vs leanfit float32 | step time | plain PEFT paths |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in finetune_memory_rows(load):
        anchor = row["anchor"]
        lines.append(
            f"| {row['model']} | 1 × {row['tokens']} | {mb(row['peft'])} | {mb(anchor)} | "
            f"{mb(row['qlora'])} | {mb(row['best'])} | **{row['best'] / row['peft']:.2f}×** | "
            f"{ratio(None if anchor is None else row['best'] / anchor)} | "
            f"{row['time_ratio']:.2f}× | {ratio(row['plain_ratio'])} |"
        )
    return "\n".join(lines)


def selection_summary(load: Loader, results: dict[str, str]) -> str:
    """Headline figures of the selection half (Adult, accuracy of influence, utility, scale)."""
    adult = load("selection_adult")
    rows_by_name = adult["table"]
    before = rows_by_name["untrimmed"]
    dp = rows_by_name["DP influence, 5 %"]
    robust = rows_by_name["robustness influence, 5 %"]
    random = next(row for name, row in rows_by_name.items() if name.startswith("random"))
    utility_name = next(name for name in rows_by_name if name.startswith("utility influence"))
    utility = rows_by_name[utility_name]
    pearson = adult["loo"]["pearson"]
    verdicts = load("protect_utility")["verdicts"]
    scale = load("selection_scale")
    big = load("selection_load")
    stream = max(scale["streaming"], key=lambda r: r["n"])
    steering = load("selection_steering")
    table_name, max_drop = steering["meta"]["dataset"], steering["meta"]["max_accuracy_drop"]

    def steered(strategy: str, rule: str, key: str) -> float:
        """Mean over the splits of the steering benchmark's new table."""
        rows = [
            r
            for r in steering["records"]
            if r.get("dataset") == table_name and (r["strategy"], r["rule"]) == (strategy, rule)
        ]
        return sum(r[key] for r in rows) / len(rows)

    link = functools.partial(result_link, results=results)

    def answers(method: str) -> str:
        return ", ".join(f"{data} *{v[method]['answer']}*" for data, v in verdicts.items())

    rows = [
        (
            "Adult (paper protocol), remove the 5 % of rows most harmful to fairness",
            f"test \\|DP\\| {num(before['dp_abs'])} → {num(dp['dp_abs'])}, accuracy "
            f"{num(before['accuracy'])} → {num(dp['accuracy'])} (random 5 %: "
            f"{num(random['dp_abs'])}, {num(random['accuracy'])})",
            link("selection_adult"),
        ),
        (
            "… 5 % most harmful to robustness (overshoot attack)",
            f"robust accuracy {num(before['robust_acc'])} → {num(robust['robust_acc'])}, "
            f"accuracy {num(robust['accuracy'])}",
            link("selection_adult"),
        ),
        (
            "… most harmful to utility, at the budget of best test accuracy "
            f"({100 * utility['budget']:.1f} %, as in the paper)",
            f"accuracy {num(before['accuracy'])} → {num(utility['accuracy'])}",
            link("selection_adult"),
        ),
        (
            f"Influence against leave-one-out retraining ({adult['loo']['n_points']} rows), "
            "Pearson r",
            f"utility {pearson['utility']:.4f}, fairness {pearson['fairness']:.4f}, "
            f"robustness {pearson['robustness']:.4f}",
            link("selection_adult"),
        ),
        (
            "Fairness trimming that protects utility reaches plain trimming's lowest \\|DP\\| "
            "with more accuracy?",
            f"constrained: {answers('constrained')}; Pareto: {answers('pareto')}",
            link("protect_utility"),
        ),
        (
            f"Budget chosen on validation only (`--budget auto`, accuracy drop ≤ {max_drop:g}), "
            f"{table_name} (new table, {steering['meta']['splits']} splits, test never seen)",
            f"test \\|DP\\| {num(steered('untrimmed', '', 'dp_abs'))} → "
            f"{num(steered('plain', 'auto', 'dp_abs'))} plain, "
            f"{num(steered('constrained', 'auto', 'dp_abs'))} constrained; accuracy "
            f"{num(steered('untrimmed', '', 'accuracy'))} → "
            f"{num(steered('plain', 'auto', 'accuracy'))}, "
            f"{num(steered('constrained', 'auto', 'accuracy'))} (random: "
            f"{num(steered('plain', 'auto', 'random_dp_abs'))}, "
            f"{num(steered('plain', 'auto', 'random_accuracy'))})",
            link("selection_steering"),
        ),
        (
            f"Influence of {scale['adult']['n_train']:,} Adult rows against a direct "
            "reference implementation",
            f"{scale['adult']['speedup']:.1f}× faster, max relative difference "
            f"{scale['adult']['max_rel_diff']:.1e}",
            link("selection_scale"),
        ),
        (
            f"{big['rows']:,} rows × {big['features']} features (fit, influence, trim 5 %)",
            f"{sum(big['seconds'][k] for k in ('fit', 'influence', 'trim')):.0f} s, "
            f"peak RSS {big['peak_rss_mb']:.0f} MB; streamed {stream['n']:,} rows: "
            f"{stream['total_s']:.0f} s, peak RSS {stream['peak_rss_mb']:.0f} MB",
            link("selection_load"),
        ),
    ]
    return table(rows)


def load_json(name: str) -> Any:
    """``benchmarks/results/NAME.json``."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise ValueError(f"{path.relative_to(ROOT)} is missing: run benchmarks/{name}.py")
    return json.loads(path.read_text(encoding="utf-8"))


def summaries(load: Loader = load_json, results: dict[str, str] | None = None) -> dict[str, str]:
    results = read_results() if results is None else results
    return {
        "quantization": quantization_summary(load, results),
        "selection": selection_summary(load, results),
    }


def doc_summaries(load: Loader = load_json) -> dict[str, dict[str, str]]:
    """The summary tables of docs/ pages, by file name."""
    return {"quantization.md": {"finetune-memory": finetune_memory_summary(load)}}


# ---------------------------------------------------------------------------------------------
# options: the CLI reference, from the argparse parsers


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """``leanfit``'s subcommand parsers by name (imports leanfit: run with the project's Python)."""
    from leanfit.cli import build_parser

    parser = build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


TYPE_NAMES = {int: "INT", float: "FLOAT", Path: "PATH"}


def value_name(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    """What an option takes: its metavar, its choices, else its type (``TEXT`` for strings)."""
    if action.option_strings and action.nargs == 0:
        return ""
    if action.choices is None and (action.metavar is None or not action.option_strings):
        return TYPE_NAMES.get(action.type, "TEXT")
    return formatter._format_args(action, action.dest.upper())


def option_row(action: argparse.Action, formatter: argparse.HelpFormatter, excludes: str) -> str:
    """One table row: the option (or positional argument), its value, default and help."""
    if action.option_strings:
        name = ", ".join(f"`{opt}`" for opt in action.option_strings)
    else:
        name = f"`{action.metavar or action.dest.upper()}` (positional)"
    value = value_name(action, formatter)
    default = action.default
    hidden = default is None or default is False or default == [] or default == argparse.SUPPRESS
    shown = "" if hidden else f"`{default}`"
    text = formatter._expand_help(action) if action.help else ""
    if action.required and action.option_strings:
        text = f"required; {text}"
    value = f"`{value}`" if value else ""
    return f"| {name} | {cell(value)} | {shown} | {cell(text + excludes)} |"


DEFAULT_GROUPS = ("positional arguments", "options")


def options_table(parser: argparse.ArgumentParser) -> str:
    """Every option of ``parser`` as Markdown: one table, then one per titled argument group."""
    formatter = parser._get_formatter()
    exclusive = {
        action: [a for a in group._group_actions if a is not action]
        for group in parser._mutually_exclusive_groups
        for action in group._group_actions
    }
    groups: dict[str, list[argparse.Action]] = {}
    for group in parser._action_groups:
        title = "" if group.title in DEFAULT_GROUPS else str(group.title)
        groups.setdefault(title, []).extend(
            a for a in group._group_actions if not isinstance(a, argparse._HelpAction)
        )
    sections = []
    for title, actions in groups.items():
        if not actions:
            continue
        lines = [f"*{title}*", ""] if title else []
        lines += ["| option | value | default | meaning |", "|---|---|---|---|"]
        for action in actions:
            others = [o.option_strings[0] for o in exclusive.get(action, [])]
            excludes = f" (excludes {', '.join(others)})" if others else ""
            lines.append(option_row(action, formatter, excludes))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """The long option strings of ``parser`` (``--help`` excluded)."""
    return [
        opt
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
        for opt in action.option_strings
        if opt.startswith("--")
    ]


# ---------------------------------------------------------------------------------------------
# Files


def updated_files() -> dict[Path, tuple[str, str]]:
    """Every generated file as (current text, text with every generated part up to date)."""
    results = read_results()
    files = {README: README.read_text(encoding="utf-8")}
    files.update({path: path.read_text(encoding="utf-8") for path in sorted(DOCS.glob("*.md"))})
    parsers = (
        subcommand_parsers()
        if any(marker_names(text, "options") for text in files.values())
        else {}
    )
    documents = doc_summaries()
    updated = {}
    for path, text in files.items():
        where = str(path.relative_to(ROOT))
        new = text
        if path == README:
            new = replace_blocks(new, "summary", summaries(results=results), where)
        if path.parent == DOCS and path.name in documents:
            new = replace_blocks(new, "summary", documents[path.name], where)
        if path == BENCHMARKS_DOC:
            new = splice(new, results, where)
        wanted = marker_names(new, "options")
        unknown = sorted(set(wanted) - set(parsers))
        if unknown:
            raise ValueError(f"{where}: no subcommand {unknown}; leanfit has {sorted(parsers)}")
        blocks = {name: options_table(parsers[name]) for name in wanted}
        new = replace_blocks(new, "options", blocks, where)
        updated[path] = (text, new)
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    try:
        files = updated_files()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    stale = [path for path, (old, new) in files.items() if old != new]
    for path in stale:
        name = path.relative_to(ROOT)
        if args.check:
            print(f"{name} is out of date: run python scripts/update_readme.py", file=sys.stderr)
        else:
            path.write_text(files[path][1], encoding="utf-8")
            print(f"{name} updated")
    if not stale:
        print("README.md and docs/ are in sync with benchmarks/results and the CLI")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
