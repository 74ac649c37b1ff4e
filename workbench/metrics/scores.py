"""Ranking metrics vectorised over many units: AUROC, average precision, precision-recall curves.

Every function scores many columns at once: ``scores`` is ``[n]`` (one unit), ``[n, units]``
(binary labels) or ``[n, units, classes]`` (multi-class labels, one-vs-rest per class). The work is
one sort and a few cumulative sums per call -- no Python loop over units -- and the results equal
scikit-learn's ``roc_auc_score`` / ``average_precision_score`` / ``precision_recall_curve``
(non-interpolated, step-wise AP; tied scores form one threshold, as in scikit-learn).

Inputs may be numpy arrays or torch tensors (any device); outputs are float64 torch tensors on the
scores' device.

Example -- the per-coordinate AP of 768 neurons for a binary label::

    ap = average_precision(acts, is_female)        # acts [n, 768] -> ap [768]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["PRCurve", "auroc", "average_precision", "pr_curve"]


class PRCurve(NamedTuple):
    """One precision-recall curve, in scikit-learn's order and convention.

    ``precision`` and ``recall`` have one entry per distinct score (increasing threshold) plus the
    final point (precision 1, recall 0); ``thresholds`` has one entry per distinct score.
    """

    precision: torch.Tensor
    recall: torch.Tensor
    thresholds: torch.Tensor


def auroc(scores, y, *, average: str | None = "macro") -> torch.Tensor:
    """Area under the ROC curve of every column of ``scores``.

    Args:
        scores: ``[n]`` or ``[n, units]`` with binary ``y`` (0/1 or bool; 1 is the positive class),
            or ``[n, units, classes]`` with integer ``y`` in ``[0, classes)`` (one-vs-rest per class).
        y: ``[n]`` labels.
        average: multi-class only -- ``"macro"`` (unweighted mean over classes, scikit-learn's
            ``multi_class="ovr", average="macro"``) or ``None`` for one value per class.

    Returns:
        ``[]`` for ``[n]`` scores, ``[units]`` for binary or macro multi-class, ``[units, classes]``
        with ``average=None``. Ties count one half, as in the Mann-Whitney statistic.
    """
    flat, pos, shape = _prepare(scores, y, "auroc")
    return _reshape_result(_binary_auroc(*_ranked(flat, pos)), shape, average)


def average_precision(scores, y, *, average: str | None = "macro") -> torch.Tensor:
    """Average precision (area under the step-wise PR curve) of every column of ``scores``.

    Same shapes and conventions as :func:`auroc`. AP = sum over distinct thresholds of
    (R_k - R_{k-1}) * P_k, scikit-learn's ``average_precision_score`` (not interpolated).
    """
    flat, pos, shape = _prepare(scores, y, "average_precision")
    return _reshape_result(_binary_average_precision(*_ranked(flat, pos)), shape, average)


def pr_curve(scores, y):
    """Precision-recall curves of every column of ``scores``.

    Returns:
        a :class:`PRCurve` for ``[n]`` scores; a list of ``units`` curves for ``[n, units]``; a list
        (units) of lists (classes, one-vs-rest) for ``[n, units, classes]``. Each curve equals
        scikit-learn's ``precision_recall_curve`` (``drop_intermediate=False``).
    """
    flat, pos, shape = _prepare(scores, y, "pr_curve")
    sorted_scores, sorted_pos, tps, fps, group_end = _ranked(flat, pos)
    is_end = group_end == torch.arange(flat.shape[0], device=flat.device)[:, None]
    precision = tps / (tps + fps)
    recall = tps / tps[-1:]
    one = torch.ones(1, dtype=torch.float64, device=flat.device)
    zero = torch.zeros(1, dtype=torch.float64, device=flat.device)
    curves = []
    for col in range(flat.shape[1]):  # only splits ragged outputs; the maths above is vectorised
        keep = is_end[:, col]
        curves.append(
            PRCurve(
                precision=torch.cat([precision[keep, col].flip(0), one]),
                recall=torch.cat([recall[keep, col].flip(0), zero]),
                thresholds=sorted_scores[keep, col].flip(0),
            )
        )
    if len(shape) == 0:
        return curves[0]
    if len(shape) == 1:
        return curves
    n_classes = shape[1]
    return [curves[u * n_classes : (u + 1) * n_classes] for u in range(shape[0])]


# ----------------------------------------------------------------------------- internals


def _ranked(scores: torch.Tensor, pos: torch.Tensor):
    """Sort every column by decreasing score and accumulate true/false positives.

    Args:
        scores: ``[n, cols]`` float; pos: ``[n, cols]`` bool.

    Returns:
        sorted scores ``[n, cols]``, sorted labels (float64), cumulative TP and FP counts (float64)
        and, for every sorted position, the index of the last position of its tie group (long):
        scikit-learn evaluates the curve only at the end of each run of equal scores.
    """
    n = scores.shape[0]
    order = torch.argsort(scores, dim=0, descending=True, stable=True)
    sorted_scores = torch.gather(scores, 0, order)
    sorted_pos = torch.gather(pos, 0, order).to(torch.float64)
    tps = torch.cumsum(sorted_pos, dim=0)
    fps = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)[:, None] - tps
    last_of_group = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_group[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    positions = torch.arange(n, device=scores.device)[:, None].expand_as(sorted_scores)
    # Propagate each group's end index backwards over the group: reverse running minimum.
    end_or_n = torch.where(last_of_group, positions, torch.full_like(positions, n))
    group_end = torch.cummin(end_or_n.flip(0), dim=0).values.flip(0)
    return sorted_scores, sorted_pos, tps, fps, group_end


def _binary_average_precision(sorted_scores, sorted_pos, tps, fps, group_end) -> torch.Tensor:
    """``[cols]`` AP: each positive contributes the precision at the end of its tie group / n_pos."""
    precision = tps / (tps + fps)
    precision_at_group_end = torch.gather(precision, 0, group_end)
    return (sorted_pos * precision_at_group_end).sum(0) / tps[-1]


def _binary_auroc(sorted_scores, sorted_pos, tps, fps, group_end) -> torch.Tensor:
    """``[cols]`` AUROC by the trapezoid rule over the ROC points at group ends (as scikit-learn)."""
    n = sorted_scores.shape[0]
    positions = torch.arange(n, device=sorted_scores.device)[:, None]
    is_end = group_end == positions
    # The previous ROC point is the end of the previous group, i.e. the position before the start.
    first_of_group = torch.ones_like(is_end)
    first_of_group[1:] = is_end[:-1]
    start = torch.cummax(torch.where(first_of_group, positions, torch.zeros_like(positions)), 0).values
    before = (start - 1).clamp_min(0)
    tp_prev = torch.where(start > 0, torch.gather(tps, 0, before), torch.zeros_like(tps))
    fp_prev = torch.where(start > 0, torch.gather(fps, 0, before), torch.zeros_like(fps))
    area = torch.where(is_end, (fps - fp_prev) * (tps + tp_prev) / 2, torch.zeros_like(tps))
    return area.sum(0) / (tps[-1] * fps[-1])


def _reshape_result(values: torch.Tensor, shape: tuple, average: str | None) -> torch.Tensor:
    if len(shape) <= 1:
        return values.reshape(shape)
    values = values.reshape(shape)
    if average == "macro":
        return values.mean(-1)
    if average is None:
        return values
    raise ValueError(f"average must be 'macro' or None, got {average!r}")


def _prepare(scores, y, name: str):
    """Validate inputs; return ``[n, cols]`` scores, ``[n, cols]`` positives and the result shape."""
    scores = _as_tensor(scores, "scores")
    if not (scores.is_floating_point() or scores.dtype == torch.bool or _is_integer(scores)):
        raise TypeError(f"{name}: scores must be numeric, got dtype {scores.dtype}")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # exact: widening keeps order and ties
    if scores.ndim not in (1, 2, 3):
        raise ValueError(
            f"{name}: scores must be [n], [n, units] or [n, units, classes]; got shape {tuple(scores.shape)}"
        )
    n = scores.shape[0]
    labels = _as_labels(y, n, name, scores.device)
    if torch.isnan(scores).any():
        bad = torch.isnan(scores).reshape(n, -1).any(0).nonzero()[0].item()
        raise ValueError(f"{name}: scores contain NaN (first in flattened column {bad}); drop or impute them first")

    if scores.ndim <= 2:
        values = set(torch.unique(labels).tolist())
        if not values <= {0, 1}:
            raise ValueError(
                f"{name}: with [n] or [n, units] scores y must be binary 0/1 (or bool), got labels "
                f"{sorted(values)}; pass (y == positive_label), or [n, units, classes] scores for multi-class"
            )
        if len(values) < 2:
            raise ValueError(
                f"{name}: y contains only class {values.pop()}; the metric is undefined with a single class"
            )
        flat = scores.reshape(n, -1)
        pos = (labels == 1)[:, None].expand_as(flat)
        return flat, pos, tuple(scores.shape[1:])

    n_classes = scores.shape[2]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"{name}: labels must lie in [0, {n_classes}) to match scores' last axis ({n_classes} classes); "
            f"got range [{labels.min().item()}, {labels.max().item()}]"
        )
    counts = torch.bincount(labels, minlength=n_classes)
    if (counts == 0).any() or (counts == n).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"{name}: one-vs-rest needs every class present and absent somewhere in y; "
            f"classes with no samples: {missing}, class counts {counts.tolist()}"
        )
    onehot = labels[:, None] == torch.arange(n_classes, device=scores.device)  # [n, classes]
    flat = scores.reshape(n, -1)
    pos = onehot[:, None, :].expand(n, scores.shape[1], n_classes).reshape(n, -1)
    return flat, pos, tuple(scores.shape[1:])


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    array = np.asarray(x)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a numeric (or bool) array, got numpy dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _is_integer(t: torch.Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _as_labels(y, n: int, name: str, device) -> torch.Tensor:
    labels = _as_tensor(y, "y")
    if labels.ndim != 1:
        raise ValueError(f"{name}: y must be 1-d [n], got shape {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name}: y has {labels.shape[0]} labels but scores have {n} rows")
    if labels.dtype == torch.bool:
        labels = labels.long()
    elif not _is_integer(labels):
        raise TypeError(
            f"{name}: y must hold integer (or bool) class labels, got dtype {labels.dtype}; "
            "convert with y.long() / np.asarray(y, dtype=int) if the values are whole numbers"
        )
    return labels.to(device=device, dtype=torch.long)
