"""Classification utility and fairness: zero-shot / worst-group accuracy and N-TIDE's metrics.

Fairness metrics follow N-TIDE: each target class c is scored one-vs-rest (y = c vs y ≠ c,
ŷ = c vs ŷ ≠ c) per sensitive group g, and the per-class gaps are averaged with equal weight
over target classes:

- EOp diff = max_g TPR_g − min_g TPR_g
- EO diff  = max over group pairs (g1, g2) of ½(|TPR_g1 − TPR_g2| + |FPR_g1 − FPR_g2|)
- DP diff  = max_g PR_g − min_g PR_g, PR = positive prediction rate P(ŷ = c | g)
- RBD      = max over group pairs of 1 − cos(μ_g1, μ_g2), μ_g = mean feature of group g

These are not fairlearn's binary ``equalized_odds_difference`` etc. (EO here averages the TPR and
FPR gaps instead of taking their max); fairlearn's ``MetricFrame`` does the per-group counting.

A rate with an empty denominator (TPR for a group with no sample of class c, FPR for a group
made only of class c) is undefined. ``undefined`` chooses what happens: "raise" (default), "skip"
(leave that group out of that class's gap; a class left with < 2 groups drops out of the mean)
or "zero" (count it as 0, as the N-TIDE reference code does).

Predictions may be class indices ``[n]`` or logits/scores ``[n, n_classes]`` (argmax taken).
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from workbench.metrics.retrieval import _check_k, _int_labels, _scores_2d, _to_numpy, rank

if TYPE_CHECKING:  # pandas and fairlearn are imported where used: ~2 s at import time
    import pandas as pd

__all__ = [
    "zero_shot_accuracy",
    "worst_group_accuracy",
    "group_rates",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "demographic_parity_difference",
    "representation_bias_distance",
    "fairness_report",
]

_UNDEFINED = ("raise", "skip", "zero")


# ----------------------------------------------------------------------------------------------
# Input helpers
# ----------------------------------------------------------------------------------------------


def _predicted_classes(predictions: Any, name: str = "predictions") -> tuple[np.ndarray, int | None]:
    """(int64 ``[n]`` predicted classes, n_classes if logits were given else None)."""
    p = _to_numpy(predictions, name)
    if p.ndim == 2:
        s = _scores_2d(p, name)
        return np.argmax(s, axis=1).astype(np.int64), s.shape[1]
    if p.ndim != 1:
        raise ValueError(f"{name} must be class indices [n] or logits [n, n_classes], got shape {p.shape}")
    return _int_labels(p, name), None


def _sensitive(groups: Any, n: int) -> Any:
    """Sensitive features for MetricFrame: a 1-D array, or a DataFrame / dict of named 1-D columns."""
    import pandas as pd

    if isinstance(groups, pd.DataFrame):
        frame = groups.reset_index(drop=True)
    elif isinstance(groups, dict):
        frame = pd.DataFrame({name: _to_numpy(col, f"groups[{name!r}]") for name, col in groups.items()})
    else:
        g = _to_numpy(groups, "groups")
        if g.ndim != 1:
            raise ValueError(f"groups must be 1-D [n] (or a dict / DataFrame of 1-D columns), got shape {g.shape}")
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries but there are {n} samples")
        if g.dtype.kind == "f" and np.isnan(g).any():
            raise ValueError("groups contains NaN; every sample needs a group")
        return g
    if len(frame) != n:
        raise ValueError(f"groups has {len(frame)} rows but there are {n} samples")
    if frame.isna().any().any():
        raise ValueError("groups contains missing values; every sample needs a group")
    return frame


def _labels_and_predictions(y_true: Any, y_pred: Any, n_classes: int | None = None):
    """Validated (y_true ``[n]``, y_pred ``[n]``, n_classes)."""
    yp, from_logits = _predicted_classes(y_pred, "y_pred")
    yt = _int_labels(y_true, "y_true", n=yp.size)
    if yt.size == 0:
        raise ValueError("no samples: y_true and y_pred are empty")
    if n_classes is None:
        n_classes = from_logits if from_logits is not None else int(max(yt.max(), yp.max())) + 1
    if yt.max() >= n_classes:
        raise ValueError(f"y_true contains class {int(yt.max())} but there are only {n_classes} classes")
    if yp.max() >= n_classes:
        raise ValueError(f"y_pred contains class {int(yp.max())} but there are only {n_classes} classes")
    return yt, yp, n_classes


# ----------------------------------------------------------------------------------------------
# Utility
# ----------------------------------------------------------------------------------------------


def zero_shot_accuracy(logits: Any, labels: Any, *, k: int = 1) -> float:
    """Top-k accuracy of ``logits`` (or image-text similarities) ``[n, n_classes]``.

    A sample counts as correct when its label is among the k highest-scoring classes (ties go
    to the lower class index, as in :func:`workbench.metrics.retrieval.rank`).

    Args:
        logits: ``[n, n_classes]`` scores, e.g. image_embeddings @ class_text_embeddings.T.
        labels: int ``[n]`` true class indices in 0..n_classes-1.
        k: top-k (default 1: ordinary accuracy).
    """
    if _to_numpy(logits, "logits").ndim != 2:
        raise ValueError(f"logits must be [n, n_classes], got shape {_to_numpy(logits, 'logits').shape}")
    s = _scores_2d(logits, "logits")
    y = _int_labels(labels, "labels", n=s.shape[0])
    if y.max() >= s.shape[1]:
        raise ValueError(f"labels contains class {int(y.max())} but logits has only {s.shape[1]} columns")
    top = rank(s, _check_k(k, s.shape[1], "classes"))
    return float(np.mean((top == y[:, None]).any(axis=1)))


def worst_group_accuracy(predictions: Any, labels: Any, groups: Any) -> tuple[float, pd.DataFrame]:
    """Worst-group accuracy: the minimum over groups of the accuracy within the group.

    Groups are usually (target, spurious attribute) pairs, e.g. Waterbirds:
    ``groups={"y": labels, "place": place}``; every observed combination is a group.

    Args:
        predictions: class indices ``[n]`` or logits ``[n, n_classes]``.
        labels: int ``[n]`` true classes.
        groups: ``[n]`` group labels (any hashable), or a dict / DataFrame of ``[n]`` columns.

    Returns:
        (worst-group accuracy, DataFrame with the group column(s), ``accuracy`` and ``count``,
        one row per observed group, worst first).
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count  # slow import: keep it out of module load

    yp, n_classes = _predicted_classes(predictions)
    y = _int_labels(labels, "labels", n=yp.size)
    if y.size == 0:
        raise ValueError("no samples: labels is empty")
    if n_classes is not None and y.max() >= n_classes:
        raise ValueError(f"labels contains class {int(y.max())} but the logits have only {n_classes} columns")
    sensitive = _sensitive(groups, y.size)

    def accuracy(t, p):
        return float(np.mean(np.asarray(t) == np.asarray(p)))

    frame = MetricFrame(metrics={"accuracy": accuracy, "count": count}, y_true=y, y_pred=yp,
                        sensitive_features=sensitive).by_group
    if not isinstance(sensitive, pd.DataFrame):
        frame.index.name = "group"
    table = frame.dropna(subset=["count"]).reset_index()  # unobserved combinations come back as NaN
    table["count"] = table["count"].astype(int)
    table = table.sort_values("accuracy", kind="stable").reset_index(drop=True)
    return float(table["accuracy"].iloc[0]), table


# ----------------------------------------------------------------------------------------------
# Per-class, per-group rates (N-TIDE bookkeeping)
# ----------------------------------------------------------------------------------------------


def group_rates(
    y_true: Any,
    y_pred: Any,
    groups: Any,
    *,
    classes: Sequence[int] | None = None,
    n_classes: int | None = None,
) -> pd.DataFrame:
    """One-vs-rest rates of every target class within every sensitive group.

    Args:
        y_true: int ``[n]`` target classes.
        y_pred: class indices ``[n]`` or logits ``[n, n_classes]``.
        groups: ``[n]`` sensitive-group labels (any hashable; a dict / DataFrame of columns
            makes their combinations the groups).
        classes: target classes to score (default: all 0..n_classes-1).
        n_classes: number of target classes (default: the logits' width, else max label + 1).

    Returns:
        Tidy DataFrame, one row per (class, group): ``class``, the group column(s), ``count``,
        ``positives`` (samples with y = class), ``negatives``, ``tpr`` (NaN when positives = 0),
        ``fpr`` (NaN when negatives = 0), ``selection_rate`` (P(ŷ = class | group)).
    """
    import pandas as pd

    yt, yp, n_classes = _labels_and_predictions(y_true, y_pred, n_classes)
    sensitive = _sensitive(groups, yt.size)
    classes = list(range(n_classes)) if classes is None else [int(c) for c in classes]
    for c in classes:
        if not 0 <= c < n_classes:
            raise ValueError(f"classes contains {c}, outside 0..{n_classes - 1}")
    if not isinstance(sensitive, pd.DataFrame):
        return _group_rates_1d(yt, yp, sensitive, classes)
    return _group_rates_fairlearn(yt, yp, sensitive, classes)


def _group_rates_1d(yt: np.ndarray, yp: np.ndarray, g: np.ndarray, classes: list[int]) -> pd.DataFrame:
    """`group_rates` for one column of group labels, from counts (no per-class MetricFrame: N-TIDE's bootstrap
    calls this hundreds of times); equal to the fairlearn route (tested)."""
    import pandas as pd

    labels, codes = np.unique(g, return_inverse=True)
    n_groups = labels.size
    count = np.bincount(codes, minlength=n_groups)
    rows = []
    for c in classes:
        t, p = yt == c, yp == c
        positives = np.bincount(codes, weights=t, minlength=n_groups).astype(np.int64)
        true_pos = np.bincount(codes, weights=t & p, minlength=n_groups)
        selected = np.bincount(codes, weights=p, minlength=n_groups)
        negatives = count - positives
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append(pd.DataFrame({
                "class": c, "group": labels, "count": count, "positives": positives, "negatives": negatives,
                "tpr": np.where(positives > 0, true_pos / positives, np.nan),
                "fpr": np.where(negatives > 0, (selected - true_pos) / negatives, np.nan),
                "selection_rate": selected / count}))
    return pd.concat(rows, ignore_index=True)


def _group_rates_fairlearn(yt: np.ndarray, yp: np.ndarray, sensitive, classes: list[int]) -> pd.DataFrame:
    """`group_rates` through fairlearn's MetricFrame (any sensitive features, e.g. combinations of columns)."""
    from fairlearn.metrics import (MetricFrame, count, false_positive_rate, selection_rate,
                                   true_positive_rate)
    import pandas as pd

    def positives(t, p):
        return float(np.sum(t))

    metrics = {"count": count, "positives": positives, "tpr": true_positive_rate,
               "fpr": false_positive_rate, "selection_rate": selection_rate}
    tables = []
    for c in classes:
        by_group = MetricFrame(metrics=metrics, y_true=(yt == c).astype(int), y_pred=(yp == c).astype(int),
                               sensitive_features=sensitive).by_group
        by_group = by_group.dropna(subset=["count"])  # unobserved combinations of several columns
        if not isinstance(sensitive, pd.DataFrame):
            by_group.index.name = "group"
        table = by_group.reset_index()
        table.insert(0, "class", c)
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out[["count", "positives"]] = out[["count", "positives"]].astype(int)
    out.insert(out.columns.get_loc("positives") + 1, "negatives", out["count"] - out["positives"])
    # fairlearn reports 0 for a rate whose denominator is empty; make that explicit.
    out.loc[out["positives"] == 0, "tpr"] = np.nan
    out.loc[out["negatives"] == 0, "fpr"] = np.nan
    return out


def _check_undefined(rates: pd.DataFrame, columns: Sequence[str], undefined: str) -> pd.DataFrame:
    if undefined not in _UNDEFINED:
        raise ValueError(f"undefined must be one of {_UNDEFINED}, got {undefined!r}")
    n_groups = rates.groupby("class").size()
    if (n_groups < 2).any():
        raise ValueError("need at least 2 sensitive groups to measure a gap; groups has a single value")
    missing = rates[rates[list(columns)].isna().any(axis=1)]
    if undefined == "raise" and len(missing):
        cells = ", ".join(f"class {r['class']} / group {r.iloc[1]}" for _, r in missing.head(5).iterrows())
        raise ValueError(f"{len(missing)} (class, group) cell(s) have an undefined {'/'.join(columns)} "
                         f"(no positive or no negative sample), e.g. {cells}; pass undefined='skip' to "
                         "leave them out or undefined='zero' to count them as 0 (N-TIDE reference code)")
    if undefined == "zero":
        rates = rates.copy()
        rates[list(columns)] = rates[list(columns)].fillna(0.0)
    return rates


def _mean_over_classes(per_class: dict[int, float], what: str) -> float:
    values = [v for v in per_class.values() if not np.isnan(v)]
    if not values:
        raise ValueError(f"{what} is undefined for every class (fewer than 2 groups with a defined rate)")
    return float(np.mean(values))


def _range_per_class(rates: pd.DataFrame, column: str) -> dict[int, float]:
    out = {}
    for c, sub in rates.groupby("class", sort=True):
        v = sub[column].dropna().to_numpy()
        out[int(c)] = float(v.max() - v.min()) if v.size >= 2 else np.nan
    return out


def _eo_per_class(rates: pd.DataFrame) -> dict[int, float]:
    out = {}
    for c, sub in rates.groupby("class", sort=True):
        tpr, fpr = sub["tpr"].to_numpy(), sub["fpr"].to_numpy()
        gaps = [0.5 * (abs(tpr[i] - tpr[j]) + abs(fpr[i] - fpr[j])) for i, j in combinations(range(len(sub)), 2)]
        gaps = [g for g in gaps if not np.isnan(g)]  # pairs with an undefined rate (undefined='skip')
        out[int(c)] = max(gaps) if gaps else np.nan
    return out


def equal_opportunity_difference(y_true: Any, y_pred: Any, groups: Any, *, classes: Sequence[int] | None = None,
                                 n_classes: int | None = None, undefined: str = "raise") -> float:
    """EOp diff = mean over target classes c of (max_g TPR_g(c) − min_g TPR_g(c)), one-vs-rest.

    Arguments as :func:`group_rates`; ``undefined`` as in the module docstring.
    """
    rates = _check_undefined(group_rates(y_true, y_pred, groups, classes=classes, n_classes=n_classes),
                             ["tpr"], undefined)
    return _mean_over_classes(_range_per_class(rates, "tpr"), "EOp diff")


def equalized_odds_difference(y_true: Any, y_pred: Any, groups: Any, *, classes: Sequence[int] | None = None,
                              n_classes: int | None = None, undefined: str = "raise") -> float:
    """EO diff = mean over classes of max over group pairs of ½(|ΔTPR| + |ΔFPR|), one-vs-rest.

    Arguments as :func:`group_rates`; ``undefined`` as in the module docstring (with "skip", a
    pair with any undefined rate is left out).
    """
    rates = _check_undefined(group_rates(y_true, y_pred, groups, classes=classes, n_classes=n_classes),
                             ["tpr", "fpr"], undefined)
    return _mean_over_classes(_eo_per_class(rates), "EO diff")


def demographic_parity_difference(y_true: Any, y_pred: Any, groups: Any, *, classes: Sequence[int] | None = None,
                                  n_classes: int | None = None) -> float:
    """DP diff = mean over classes c of (max_g PR_g(c) − min_g PR_g(c)), PR_g(c) = P(ŷ = c | g).

    ``y_true`` only fixes the set of classes; the rates depend on predictions alone.
    """
    rates = _check_undefined(group_rates(y_true, y_pred, groups, classes=classes, n_classes=n_classes),
                             ["selection_rate"], "raise")
    return _mean_over_classes(_range_per_class(rates, "selection_rate"), "DP diff")


def representation_bias_distance(features: Any, groups: Any, *, distance: str = "cosine") -> float:
    """RBD = max over group pairs (g1, g2) of 1 − cos(μ_g1, μ_g2), μ_g = mean feature of group g.

    Args:
        features: ``[n, d]`` representations (e.g. penultimate-layer features).
        groups: ``[n]`` sensitive-group labels (any hashable); needs ≥ 2 groups.
        distance: "cosine" (N-TIDE's definition, default) or "euclidean" (‖μ_g1 − μ_g2‖₂, what
            the N-TIDE reference code computes).
    """
    if distance not in ("cosine", "euclidean"):
        raise ValueError(f"distance must be 'cosine' or 'euclidean', got {distance!r}")
    x = _to_numpy(features, "features")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be [n, d] with n >= 1, got shape {x.shape}")
    x = _scores_2d(x, "features").astype(np.float64, copy=False)
    g = _sensitive(groups, x.shape[0])
    if g.ndim != 1:  # a DataFrame from a dict of columns
        raise TypeError("representation_bias_distance takes one 1-D array of group labels")
    labels, codes = np.unique(g, return_inverse=True)
    if labels.size < 2:
        raise ValueError("need at least 2 sensitive groups; groups has a single value")
    means = np.stack([x[codes == i].mean(axis=0) for i in range(labels.size)])  # [n_groups, d]
    if distance == "euclidean":
        dists = [np.linalg.norm(means[i] - means[j]) for i, j in combinations(range(labels.size), 2)]
        return float(max(dists))
    norms = np.linalg.norm(means, axis=1)
    if (norms == 0).any():
        zero = labels[np.flatnonzero(norms == 0)[0]]
        raise ValueError(f"the mean feature of group {zero!r} is the zero vector; cosine is undefined")
    unit = means / norms[:, None]
    cos = unit @ unit.T
    return float(max(1.0 - cos[i, j] for i, j in combinations(range(labels.size), 2)))


def fairness_report(y_true: Any, y_pred: Any, groups: Any, *, features: Any = None,
                    classes: Sequence[int] | None = None, n_classes: int | None = None,
                    undefined: str = "raise") -> dict[str, float]:
    """All N-TIDE classification metrics from one pass over the per-group rates.

    Returns:
        ``{"accuracy", "eop_diff", "eo_diff", "dp_diff"}`` plus ``"rbd"`` (cosine) when
        ``features`` ``[n, d]`` is given.
    """
    yt, yp, n_classes = _labels_and_predictions(y_true, y_pred, n_classes)
    rates = group_rates(yt, yp, groups, classes=classes, n_classes=n_classes)
    report = {
        "accuracy": float(np.mean(yt == yp)),
        "eop_diff": _mean_over_classes(_range_per_class(_check_undefined(rates, ["tpr"], undefined), "tpr"),
                                       "EOp diff"),
        "eo_diff": _mean_over_classes(_eo_per_class(_check_undefined(rates, ["tpr", "fpr"], undefined)),
                                      "EO diff"),
        "dp_diff": _mean_over_classes(_range_per_class(rates, "selection_rate"), "DP diff"),
    }
    if features is not None:
        report["rbd"] = representation_bias_distance(features, groups)
    return report
