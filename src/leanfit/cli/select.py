"""``leanfit select``: influence-based training-data selection with a report.

Data: a vendored table (``--dataset``) or the user's CSV files (``--train``/``--test``,
optionally ``--val``). Everything else is :func:`leanfit.selection.run_selection`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leanfit.datasets import TABULAR
from leanfit.exceptions import BadInputError, bad_value
from leanfit.selection.influence import MAX_CATEGORIES
from leanfit.selection.protocols import DEFAULT_SEED, split_csv, split_dataset
from leanfit.selection.workflow import OBJECTIVES, run_selection

CSV_ONLY = ("target", "sensitive", "positive", "privileged", "categorical", "val")


def parse_budget(text: str) -> int | float:
    """``--budget``: a fraction in (0, 1) or a whole count ≥ 1 (its range is checked later,
    against the number of training rows)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise bad_value("--budget", text, "a fraction in (0, 1) or a whole count >= 1")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="score training rows by influence, trim the harmful ones, report",
        description="Influence-based data selection: fit an L2 logistic regression, score "
        "every training row by its influence on validation utility, fairness and robustness, "
        "remove the most harmful rows, retrain, compare with random removal on the test set, "
        "and explain the influence with rules. Writes a report with tables and figures.",
        epilog="--dataset adult follows the paper's protocol (λ = 2.2622, no intercept, "
        "adult.test split 50/50 into validation and test); bank, german and compas are split "
        "60/20/20, stratified by label × sensitive group. Without --val, the --test file is "
        "split 50/50 into validation and test.",
    )
    data = parser.add_argument_group("data (either --dataset or --train/--test)")
    data.add_argument("--dataset", choices=sorted(TABULAR), help="a vendored data set")
    data.add_argument("--train", type=Path, help="training CSV file (header row)")
    data.add_argument("--val", type=Path, help="validation CSV (default: half of --test)")
    data.add_argument("--test", type=Path, help="test CSV file")
    data.add_argument("--target", help="target column (binary)")
    data.add_argument("--sensitive", help="sensitive attribute column (binary)")
    data.add_argument("--positive", help="target value of the favourable outcome")
    data.add_argument("--privileged", help="sensitive value of the privileged group")
    data.add_argument(
        "--categorical",
        action="append",
        metavar="COL[,COL...]",
        help="numeric-coded columns to treat as categories (string columns always are)",
    )
    data.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed of the splits, random removals and rule trees (default {DEFAULT_SEED})",
    )
    method = parser.add_argument_group("method")
    method.add_argument(
        "--objective",
        action="append",
        metavar="NAME[,NAME...]",
        help=f"among {', '.join(OBJECTIVES)}, all (default all; fairness = demographic "
        "parity; repeatable)",
    )
    method.add_argument(
        "--budget",
        default="0.05",
        help="rows to remove per objective: fraction in (0, 1) or count >= 1 (default 0.05)",
    )
    method.add_argument("--l2", type=float, help="L2 penalty λ (default: 2.2622 on adult, else 1)")
    method.add_argument(
        "--intercept",
        action=argparse.BooleanOptionalAction,
        help="fit an intercept (default: no on adult, yes otherwise)",
    )
    method.add_argument(
        "--seeds", type=int, default=3, help="random-removal repetitions (default 3)"
    )
    method.add_argument(
        "--max-categories",
        type=int,
        default=MAX_CATEGORIES,
        metavar="N",
        help="refuse a categorical column with more than N distinct values (default "
        f"{MAX_CATEGORIES}; 0: no limit)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, help="output directory (default selection-NAME)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _split_list(values: list[str] | None) -> list[str]:
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def _load(args: argparse.Namespace):
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
        categorical=_split_list(args.categorical),
        random_state=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    split = _load(args)
    name = args.dataset or args.train.stem
    result = run_selection(
        split.train,
        split.val,
        split.test,
        out_dir=args.out or Path(f"selection-{name}"),
        objectives=_split_list(args.objective) or "all",
        budget=parse_budget(args.budget),
        l2_reg=split.l2_reg if args.l2 is None else args.l2,
        fit_intercept=split.fit_intercept if args.intercept is None else args.intercept,
        seeds=args.seeds,
        seed=args.seed,
        max_categories=args.max_categories or None,
        overwrite=args.overwrite,
        progress=not args.quiet,
        description=split.description,
    )
    print(result.summary())
    return 0
