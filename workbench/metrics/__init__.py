"""Fairness, retrieval, classification and per-unit metrics (definitions: docs/metrics.md; each
docstring gives the formula). Pure helpers: they import nothing from the other workbench layers.

- :mod:`~workbench.metrics.retrieval`: ``rank`` (the ranking every metric uses), Recall@K, mAP, NDCG.
- :mod:`~workbench.metrics.fairness`: retrieval fairness: NDKL (and its chance level), KL@k, MaxSkew / MinSkew@k,
  normalized entropy@k, Bias@K.
- :mod:`~workbench.metrics.scores`: AUROC, average precision and PR curves, vectorised over units.
- :mod:`~workbench.metrics.units`: ``unit_scores``, the AUROC / AP of every activation coordinate
  used directly as a score (no fit), as a table with one row per unit.
- :mod:`~workbench.metrics.classification`: zero-shot and worst-group accuracy, N-TIDE's
  EOp / EO / DP differences and RBD.
"""

from workbench.metrics.classification import (
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_report,
    group_rates,
    representation_bias_distance,
    worst_group_accuracy,
    zero_shot_accuracy,
)
from workbench.metrics.fairness import (
    bias_at_k,
    kl_divergence_at_k,
    max_skew_at_k,
    min_skew_at_k,
    ndkl,
    ndkl_chance,
    normalized_entropy_at_k,
    skew_table,
)
from workbench.metrics.scores import PRCurve, auroc, average_precision, pr_curve
from workbench.metrics.units import unit_scores
from workbench.metrics.retrieval import (
    first_relevant_rank,
    mean_average_precision,
    ndcg,
    rank,
    recall_at_k,
    recall_table,
    relevance_from_labels,
)

__all__ = [
    # retrieval
    "rank",
    "relevance_from_labels",
    "first_relevant_rank",
    "recall_at_k",
    "recall_table",
    "mean_average_precision",
    "ndcg",
    # retrieval fairness
    "ndkl",
    "ndkl_chance",
    "kl_divergence_at_k",
    "skew_table",
    "max_skew_at_k",
    "min_skew_at_k",
    "normalized_entropy_at_k",
    "bias_at_k",
    # classification
    "zero_shot_accuracy",
    "worst_group_accuracy",
    "group_rates",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "demographic_parity_difference",
    "representation_bias_distance",
    "fairness_report",
    # per-unit scores (probes)
    "auroc",
    "average_precision",
    "pr_curve",
    "PRCurve",
    "unit_scores",
]
