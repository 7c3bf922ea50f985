"""``leanfit select``: influence-based training-data selection with a report.

Data: a vendored table (``--dataset``) or the user's CSV files (``--train``/``--test``,
optionally ``--val``). Everything else is :func:`leanfit.selection.run_selection`.

The method options are derived from the fields of
:class:`~leanfit.selection.config.SelectionConfig` (:func:`leanfit.cli.add_config_options`),
each default and help text written there once. Imports of numpy, pandas, scikit-learn and the
heavy modules of :mod:`leanfit.selection` happen inside :func:`run`, so that ``leanfit --help``
stays quick. The library checks every value; an option whose parameter has another name
declares it as its ``dest`` (``--l2`` sets ``l2_reg``), so that errors name the option
(:func:`leanfit.cli.option_table`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leanfit.cli import add_config_options, comma_items, config_from_args
from leanfit.cli.data import TABULAR_NAMES
from leanfit.exceptions import BadInputError
from leanfit.selection.config import ModelSettings, SelectionConfig
from leanfit.selection.defaults import DEFAULT_SEED

#: Options of the CSV input only.
CSV_ONLY = ("target", "sensitive", "positive", "privileged", "categorical", "val")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="score training rows by influence, trim the harmful ones, report",
        description="Influence-based data selection: fit an L2 logistic regression, score "
        "every training row by its influence on validation utility, fairness and robustness, "
        "remove the most harmful rows, retrain, compare with random removal on the test set, "
        "and explain the influence with rules. Writes a report with tables and figures.",
        epilog="--dataset adult follows the paper's protocol (λ = 2.2622, no intercept, "
        "adult.test split 50/50 into validation and test); arrests, bank, german and compas "
        "are split 60/20/20, stratified by label × sensitive group. Without --val, the --test "
        "file is split 50/50 into validation and test. --budget auto chooses the budget on the "
        "validation set only; the test set is never used for a choice.",
    )
    data = parser.add_argument_group("data (either --dataset or --train/--test)")
    data.add_argument("--dataset", choices=TABULAR_NAMES, help="a vendored data set")
    data.add_argument("--train", type=Path, help="training CSV file (header row)")
    data.add_argument("--val", type=Path, help="validation CSV (default: half of --test)")
    data.add_argument("--test", type=Path, help="test CSV file")
    data.add_argument("--target", help="target column (binary)")
    data.add_argument("--sensitive", help="sensitive attribute column (binary)")
    data.add_argument(
        "--positive",
        help="target value of the favourable outcome (default: 1, True, yes, Y, >50K, good "
        "… when the other value is their opposite; the report states the choice)",
    )
    data.add_argument(
        "--privileged",
        help="sensitive value of the privileged group (default: 1 for 0/1, else the group "
        "with the higher favourable rate in --train; the report states the choice)",
    )
    data.add_argument(
        "--categorical",
        action="append",
        metavar="COL[,COL...]",
        help="numeric-coded columns to treat as categories (string columns always are)",
    )
    # The seed of the splits is the protocol's (DEFAULT_SEED), not SelectionConfig.seed's
    # default: it is a data option, and the run passes it on to the config.
    data.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the splits, random removals and rule trees (default {DEFAULT_SEED})",
    )
    method = parser.add_argument_group("method")
    add_config_options(method, SelectionConfig)
    # The model's options default to the data's protocol (the paper's Adult model, else
    # ModelSettings' defaults), so None here means "the protocol's", not a default of the
    # parser's own.
    method.add_argument(
        "--l2", dest="l2_reg", type=float, help="L2 penalty λ (default: 2.2622 on adult, else 1)"
    )
    method.add_argument(
        "--intercept",
        dest="fit_intercept",
        action=argparse.BooleanOptionalAction,
        help="fit an intercept (default: no on adult, yes otherwise)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", dest="out_dir", type=Path, help="output directory (default selection-NAME)"
    )
    output.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace):
    from leanfit.selection.protocols import split_csv, split_dataset

    if args.dataset is not None:
        given = [f"--{name}" for name in CSV_ONLY if getattr(args, name) is not None]
        if args.train is not None or args.test is not None or given:
            raise BadInputError(
                f"--dataset excludes --train, --test and {', '.join(f'--{n}' for n in CSV_ONLY)}"
            )
        return split_dataset(args.dataset, random_state=args.seed)
    missing = [
        f"--{name}" for name in ("train", "test", "target", "sensitive") if not getattr(args, name)
    ]
    if missing:
        raise BadInputError(
            f"give --dataset NAME, or --train, --test, --target and --sensitive; missing {missing}"
        )
    return split_csv(
        args.train,
        args.test,
        args.val,
        target=args.target,
        sensitive=args.sensitive,
        positive=args.positive,
        privileged=args.privileged,
        categorical=list(comma_items(args.categorical)),
        random_state=args.seed,
        assume_conventions=True,
    )


def run(args: argparse.Namespace) -> int:
    from leanfit.selection.workflow import run_selection

    split = _load(args)
    model = ModelSettings(
        split.l2_reg if args.l2_reg is None else args.l2_reg,
        split.fit_intercept if args.fit_intercept is None else args.fit_intercept,
    )
    config = config_from_args(
        SelectionConfig,
        args,
        model=model,
        seed=args.seed,
        max_categories=args.max_categories or None,  # --max-categories 0: no limit
    )
    name = args.dataset or args.train.stem
    result = run_selection(
        split.train,
        split.val,
        split.test,
        config,
        out_dir=args.out_dir or Path(f"selection-{name}"),
        overwrite=args.overwrite,
        progress=not args.quiet,
        description=split.description,
    )
    print(result.summary())
    return 0
