"""Influence on a 2-D toy problem (in the spirit of the paper's section 4.1).

Two Gaussian classes are separated by a vertical boundary. A tight cluster of points with
flipped labels (class 1 inside the class-0 region) is planted in the training set; it drags
the decision boundary. The utility influence, measured on clean validation data, ranks the
planted points among the most harmful; trimming them moves the boundary back toward the
one learned without them.

Run ``python examples/synthetic_2d.py --out synthetic_2d.png`` to print the figures and
save the plot (scatter coloured by influence, boundaries before and after trimming).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leanfit.selection import InfluenceSelector, trim


@dataclass(frozen=True)
class Synthetic2DResult:
    """Everything the plot and the checks need.

    ``theta_*`` are ``[w1, w2, b]`` of the models before trimming, after trimming and
    trained without the planted points; ``boundary_gap_*`` is the distance between the
    unit-normalized ``theta`` and that of the clean model.
    """

    X: np.ndarray
    y: np.ndarray
    planted: np.ndarray
    influence: np.ndarray
    keep: np.ndarray
    theta_before: np.ndarray
    theta_after: np.ndarray
    theta_clean: np.ndarray
    planted_in_bottom_k: float
    boundary_gap_before: float
    boundary_gap_after: float
    val_accuracy_before: float
    val_accuracy_after: float


def make_data(rng: np.random.Generator, n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Two unit-variance Gaussian classes centred at (−1.5, 0) (label 0) and (1.5, 0)."""
    X = np.vstack(
        [
            rng.normal((-1.5, 0.0), 1.0, size=(n_per_class, 2)),
            rng.normal((1.5, 0.0), 1.0, size=(n_per_class, 2)),
        ]
    )
    return X, np.repeat([0.0, 1.0], n_per_class)


def _unit(theta: np.ndarray) -> np.ndarray:
    return theta / np.linalg.norm(theta)


def run(random_state: int = 0, n_per_class: int = 150, n_planted: int = 30) -> Synthetic2DResult:
    """Plant ``n_planted`` flipped labels, score, trim the ``n_planted`` most harmful."""
    rng = np.random.default_rng(random_state)
    X_clean, y_clean = make_data(rng, n_per_class)
    X_planted = rng.normal((-2.0, 2.5), 0.3, size=(n_planted, 2))  # deep in class-0 land
    X = np.vstack([X_clean, X_planted])
    y = np.concatenate([y_clean, np.ones(n_planted)])  # ... but labelled 1
    planted = np.r_[np.zeros(len(y_clean), bool), np.ones(n_planted, bool)]
    X_val, y_val = make_data(rng, n_per_class)

    selector = InfluenceSelector(l2_reg=0.1, random_state=random_state).fit(X, y)
    influence = selector.influence(X_val, y_val, objective="utility")["utility"].to_numpy()
    keep = trim(influence, n_planted)
    trimmed = selector.retrain(keep)
    clean = InfluenceSelector(l2_reg=0.1).fit(X_clean, y_clean)

    theta_before, theta_after = selector.model_.theta_, trimmed.model_.theta_
    theta_clean = clean.model_.theta_
    return Synthetic2DResult(
        X=X,
        y=y,
        planted=planted,
        influence=influence,
        keep=keep,
        theta_before=theta_before,
        theta_after=theta_after,
        theta_clean=theta_clean,
        planted_in_bottom_k=float(np.mean(~keep[planted])),
        boundary_gap_before=float(np.linalg.norm(_unit(theta_before) - _unit(theta_clean))),
        boundary_gap_after=float(np.linalg.norm(_unit(theta_after) - _unit(theta_clean))),
        val_accuracy_before=float(selector.score(X_val, y_val)),
        val_accuracy_after=float(trimmed.score(X_val, y_val)),
    )


def plot(result: Synthetic2DResult, path: Path) -> None:
    """Scatter coloured by influence (red harmful, blue beneficial) and the boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    fig, ax = plt.subplots(figsize=(7, 5.5))
    limit = np.abs(result.influence).max()
    norm = TwoSlopeNorm(vmin=-limit, vcenter=0.0, vmax=limit)
    for label, marker in [(0, "o"), (1, "^")]:
        rows = result.y == label
        points = ax.scatter(
            result.X[rows, 0],
            result.X[rows, 1],
            c=result.influence[rows],
            cmap="RdBu",
            norm=norm,
            marker=marker,
            s=28,
            edgecolors="k",
            linewidths=0.3,
            label=f"class {label}",
        )
    removed = ~result.keep
    ax.scatter(
        result.X[removed, 0],
        result.X[removed, 1],
        marker="o",
        s=110,
        facecolors="none",
        edgecolors="k",
        linewidths=0.8,
        label="trimmed",
    )
    x_range = np.linspace(result.X[:, 0].min() - 0.5, result.X[:, 0].max() + 0.5, 2)
    y_range = (result.X[:, 1].min() - 0.5, result.X[:, 1].max() + 0.5)
    for theta, style, color, name in [
        (result.theta_clean, "-", "0.75", "boundary without planted points"),
        (result.theta_before, "--", "tab:red", "boundary before trimming"),
        (result.theta_after, ":", "tab:green", "boundary after trimming"),
    ]:
        w1, w2, b = theta
        line = {"linestyle": style, "color": color, "linewidth": 2, "label": name}
        if abs(w2) > 1e-12:
            ax.plot(x_range, -(w1 * x_range + b) / w2, **line)
        else:
            ax.axvline(-b / w1, **line)
    ax.set_ylim(*y_range)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title("Utility influence (red = harmful); planted flipped labels at top left")
    fig.colorbar(points, ax=ax, label="influence on validation log-loss")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("synthetic_2d.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(random_state=args.seed)
    print(
        f"planted points among the {int((~result.keep).sum())} most harmful: "
        f"{result.planted_in_bottom_k:.0%}"
    )
    print(
        f"distance to the clean boundary: {result.boundary_gap_before:.3f} before, "
        f"{result.boundary_gap_after:.3f} after trimming"
    )
    print(
        f"validation accuracy: {result.val_accuracy_before:.3f} before, "
        f"{result.val_accuracy_after:.3f} after trimming"
    )
    plot(result, args.out)
    print(f"plot saved to {args.out}")


if __name__ == "__main__":
    main()
