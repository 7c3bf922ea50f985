"""``leanfit experiment``: run one of the influence-selection scenarios and write its report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leanfit.cli import SUBCOMMANDS
from leanfit.exceptions import BadInputError

#: The scenarios of :data:`leanfit.selection.scenarios.experiment.SCENARIOS`, listed here so
#: that building the parser does not import the selection stack.
SCENARIO_NAMES = ("shift", "poisoning", "adaptive", "online", "active", "surrogate")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help=SUBCOMMANDS["experiment"],
        description="Run a scenario of influence-based data selection over several seeds "
        "and write results.json, results.md (mean ± std over seeds) and PNG plots to --out: "
        "shift (fairness under distribution shift), poisoning (defence against anchoring "
        "attacks), adaptive (adaptive evasion attacks), online (noisy batches), active "
        "(active learning with the influence tree), surrogate (non-convex models).",
    )
    parser.add_argument("scenario", choices=SCENARIO_NAMES, help="the scenario to run")
    parser.add_argument(
        "--dataset",
        help="data set (shift: adult, german, compas; poisoning: german, compas, adult, bank; "
        "adaptive: adult, german, compas, bank; online: adult, compas, bank; active: adult, "
        "compas, bank, german; surrogate: adult or tweets, default both)",
    )
    parser.add_argument("--quick", action="store_true", help="small budget (about a minute)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="override a configuration field (VALUE parsed as JSON if it can be, e.g. "
        "--set strength=2 --set budgets=[0.01,0.05]); repeatable",
    )  # fmt: skip
    shift = parser.add_argument_group("shift with your own files (all three, with --target "
                                      "and --sensitive)")  # fmt: skip
    shift.add_argument("--train", help="CSV of the source training data")
    shift.add_argument("--val", help="CSV of the labelled target sample")
    shift.add_argument("--test", help="CSV of the target test data")
    shift.add_argument("--target", help="name of the label column")
    shift.add_argument("--sensitive", help="name of the sensitive attribute column")
    shift.add_argument("--positive", help="label value of the favourable outcome")
    shift.add_argument("--privileged", help="sensitive value of the privileged group")
    shift.add_argument("--kind", help="shift of a vendored table: age, group or country")
    shift.add_argument("--strength", type=float, help="tilt of the vendored shift")
    parser.set_defaults(func=run)


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """Configuration fields set on the command line (``--set`` and the named options)."""
    values: dict[str, object] = {}
    for item in args.set:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise BadInputError(f"--set must look like FIELD=VALUE; got {item!r}")
        values[field.strip()] = _parse_value(text)
    if args.dataset is not None:
        if args.scenario == "surrogate":
            values["cases"] = [args.dataset]
        else:
            values["dataset"] = args.dataset
    files = {"train_csv": args.train, "val_csv": args.val, "test_csv": args.test}
    named = {
        **files, "target": args.target, "sensitive": args.sensitive,
        "positive": args.positive, "privileged": args.privileged, "kind": args.kind,
        "strength": args.strength,
    }  # fmt: skip
    given = {k: v for k, v in named.items() if v is not None}
    if given and args.scenario != "shift":
        flags = ", ".join(f"--{k.removesuffix('_csv')}" for k in given)
        raise BadInputError(f"{flags} apply to the shift scenario only; got {args.scenario!r}")
    values.update(given)
    return values


def run(args: argparse.Namespace) -> int:
    from leanfit.reports import markdown_table
    from leanfit.selection.scenarios.experiment import (
        get_scenario,
        run_experiment,
        summary_table,
        write_experiment,
    )

    scenario = get_scenario(args.scenario)
    if args.out.exists() and not args.overwrite:
        raise BadInputError(f"output {str(args.out)!r} exists; pass --overwrite to replace it")
    base = scenario.config_type.QUICK if args.quick else {}
    try:
        config = scenario.config_type.from_dict({**base, **overrides(args)})
    except TypeError as err:  # a field of the wrong kind
        raise BadInputError(f"bad configuration for {args.scenario}: {err}") from err
    result = run_experiment(args.scenario, config, seeds=args.seeds, quick=args.quick,
                            progress=not args.quiet)  # fmt: skip
    write_experiment(result, args.out, overwrite=args.overwrite)
    print(markdown_table(summary_table(result)), end="")
    print(f"wrote {args.out}/results.json, results.md and plots ({result.elapsed_seconds:.0f} s)")
    return 0
