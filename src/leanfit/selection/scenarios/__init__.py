"""The paper's applications of influence-based selection, as reusable experiments.

One module per scenario, each with its data builders or attack, a configuration dataclass
(``Config()`` full, ``Config.quick()`` small) and ``run_<name>(config, seed)`` returning a
tidy table; :mod:`~leanfit.selection.scenarios.experiment` repeats a scenario over seeds and
writes JSON, markdown and plots (``leanfit experiment NAME --out DIR``)::

    from leanfit.selection.scenarios import run_experiment, write_experiment

    result = run_experiment("poisoning", seeds=5)
    write_experiment(result, "poisoning-report")
"""

from leanfit.selection.scenarios.active import ActiveConfig, query, run_active
from leanfit.selection.scenarios.adaptive import (
    AdaptiveConfig,
    attacked_accuracy,
    run_adaptive,
    worst_case_perturbation,
)
from leanfit.selection.scenarios.experiment import (
    SCENARIOS,
    ExperimentResult,
    run_experiment,
    summary_table,
    write_experiment,
)
from leanfit.selection.scenarios.online import OnlineConfig, batch_stream, flip_labels, run_online
from leanfit.selection.scenarios.poisoning import (
    PoisonedData,
    PoisoningConfig,
    anchoring_attack,
    detection_scores,
    run_poisoning,
)
from leanfit.selection.scenarios.shift import (
    ShiftConfig,
    ShiftSplit,
    load_shift_csv,
    make_shift,
    reweighing_weights,
    run_shift,
)
from leanfit.selection.scenarios.surrogate import (
    SurrogateConfig,
    embed_texts,
    mlp_hidden_features,
    run_surrogate,
)

__all__ = [
    "SCENARIOS",
    "ActiveConfig",
    "AdaptiveConfig",
    "ExperimentResult",
    "OnlineConfig",
    "PoisonedData",
    "PoisoningConfig",
    "ShiftConfig",
    "ShiftSplit",
    "SurrogateConfig",
    "anchoring_attack",
    "attacked_accuracy",
    "batch_stream",
    "detection_scores",
    "embed_texts",
    "flip_labels",
    "load_shift_csv",
    "make_shift",
    "mlp_hidden_features",
    "query",
    "reweighing_weights",
    "run_active",
    "run_adaptive",
    "run_experiment",
    "run_online",
    "run_poisoning",
    "run_shift",
    "run_surrogate",
    "summary_table",
    "worst_case_perturbation",
    "write_experiment",
]
