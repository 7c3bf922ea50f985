"""Each scenario, quick configuration, three seeds, on the real vendored data: the direction
of the effect, with a margin well inside what the quick runs measure (numbers in comments
are means over the three seeds, measured when the test was written)."""

import pytest

from leanfit.selection.scenarios.experiment import run_experiment
from leanfit.selection.scenarios.poisoning import PoisoningConfig

pytestmark = pytest.mark.slow


def mean(result, metric, **keys):
    """Mean over seeds of ``metric`` on the summary row matching ``keys``."""
    summary = result.summary
    for column, value in keys.items():
        summary = summary[summary[column] == value]
    assert len(summary) == 1, keys
    return float(summary[f"{metric}_mean"].iloc[0])


def test_shift_trimming_by_target_fairness_influence_closes_the_gap():
    result = run_experiment("shift", quick=True, seeds=3, progress=False)
    none = mean(result, "dp_abs", method="none")
    # measured: |DP| 0.184 untrimmed, 0.043 after trimming 5 % by influence, 0.182 at random
    assert mean(result, "dp_abs", method="influence", budget=0.05) < none - 0.08
    assert mean(result, "dp_abs", method="influence", budget=0.05) < (
        mean(result, "dp_abs", method="random", budget=0.05) - 0.08
    )
    # the price in accuracy is real (0.840 → 0.808) but bounded
    assert mean(result, "accuracy", method="influence", budget=0.05) > (
        mean(result, "accuracy", method="none") - 0.06
    )


def test_poisoning_defence_undoes_the_attack_on_compas():
    config = PoisoningConfig.quick(dataset="compas", method="non-random")
    result = run_experiment("poisoning", config, seeds=3, progress=False)
    clean, poisoned = (mean(result, "dp_abs", method=m) for m in ("clean", "poisoned"))
    # measured: |DP| clean 0.205, poisoned 0.406, defended (budget chosen on clean
    # validation data) 0.075, random trimming 0.396
    assert poisoned > clean + 0.1  # the attack works
    assert mean(result, "dp_abs", method="defended-val") < poisoned - 0.15
    assert mean(result, "dp_abs", method="random") > poisoned - 0.05
    # the defence removes few of the poisoned points themselves (precision ≈ 0.15): only
    # check that it is reported and better than chance (random: the poison share, 0.08)
    assert mean(result, "precision", method="defended") > mean(result, "precision", method="random")


def test_adaptive_attack_hurts_the_robustness_trimmed_model_less():
    result = run_experiment("adaptive", quick=True, seeds=3, progress=False)
    original = mean(result, "accuracy", method="original", fraction=0.25)
    # measured at 25 % attacked: original 0.719, influence-trimmed 0.755, random 0.719
    assert mean(result, "accuracy", method="influence", fraction=0.25) > original + 0.015
    assert mean(result, "accuracy", method="influence", fraction=0.25) > (
        mean(result, "accuracy", method="random", fraction=0.25) + 0.015
    )
    # without attack the trimmed model loses a little (0.826 → 0.817), within the 2-point
    # validation constraint plus sampling noise
    assert mean(result, "accuracy", method="influence", fraction=0.0) > (
        mean(result, "accuracy", method="original", fraction=0.0) - 0.03
    )


def test_online_trimming_of_noisy_batches_beats_no_trimming():
    result = run_experiment("online", quick=True, seeds=3, progress=False)
    last = result.config.n_batches
    # measured after the last batch: none 0.707, random 0.714, influence 0.776
    influence = mean(result, "accuracy", method="influence", batch=last)
    assert influence > mean(result, "accuracy", method="none", batch=last) + 0.03
    assert influence > mean(result, "accuracy", method="random", batch=last) + 0.03
    # 35 % of labels are flipped; influence drops flipped ones about twice as often (0.65)
    rows = result.rows[result.rows["method"] == "influence"]
    assert rows["flipped_removed"].mean() > 0.5


def test_active_learning_strategies_all_learn_and_influence_does_not_collapse():
    result = run_experiment("active", quick=True, seeds=3, progress=False)
    last = result.config.rounds
    # measured: 0.779 with the seed set; after 10 rounds random 0.799, uncertainty 0.800,
    # influence 0.793. The paper's advantage of influence-based querying is NOT reproduced
    # here; the test only guards that every strategy learns and that influence stays close.
    for method in ("random", "uncertainty", "influence"):
        assert mean(result, "accuracy", method=method, round=last) > (
            mean(result, "accuracy", method=method, round=0) + 0.005
        )
    assert mean(result, "accuracy", method="influence", round=last) > (
        mean(result, "accuracy", method="random", round=last) - 0.02
    )


def test_surrogate_fairness_trimming_helps_the_mlp_and_utility_trimming_finds_doubtful_tweets():
    result = run_experiment("surrogate", quick=True, seeds=3, progress=False)
    # measured on Adult: |DP| 0.196 untrimmed, 0.134 after fairness trimming, 0.201 random;
    # accuracy 0.840 vs 0.837
    none = mean(result, "dp_abs", case="adult", method="none")
    assert mean(result, "dp_abs", case="adult", method="influence-fairness") < none - 0.03
    assert mean(result, "accuracy", case="adult", method="influence-fairness") > (
        mean(result, "accuracy", case="adult", method="none") - 0.015
    )
    # tweets: the removed tweets have lower annotator agreement (0.815) than those kept
    # (0.863); the accuracy of the retrained head does not improve measurably (not asserted)
    trimmed = {"case": "tweets", "method": "influence-utility"}
    assert mean(result, "removed_confidence", **trimmed) < (
        mean(result, "kept_confidence", **trimmed) - 0.02
    )
