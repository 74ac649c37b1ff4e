"""Per-unit scores without a fit: every coordinate of an activation tensor ranked against a label.

:func:`unit_scores` is the neuron-level test of the expert-heads method (``docs/methods.md``): a 1-d
"probe" on one coordinate is the coordinate itself, so its AUROC / AP are those of the raw
activation; ``docs/metrics.md`` defines both. The work is done by the vectorised
:func:`~workbench.metrics.scores.auroc` / :func:`~workbench.metrics.scores.average_precision`.

The helpers below turn what a user hands over into tensors and a unit table -- activations
(:func:`as_float_tensor`, :func:`score_matrix`), labels (:func:`labels_array`,
:func:`encode_labels`) and one row per unit (:func:`unit_frame`) -- with the same messages here and
in :mod:`workbench.probes`, which imports them (imports point from probes to metrics, never back).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from workbench.metrics.scores import auroc, average_precision

__all__ = ["as_float_tensor", "check_not_empty", "encode_labels", "labels_array", "score_matrix", "unit_frame", "unit_scores"]


def unit_scores(acts, labels, unit_index=None, *, max_chunk_bytes: int = 256 * 2**20):
    """AUROC and AP of every coordinate of ``acts`` used directly as a score -- no fitting.

    The neuron-level test of the expert-heads method: a 1-d "probe" on a coordinate is the
    coordinate itself, so its AP is that of the raw activation (paper: expert neurons AP > 0.42).
    The same input forms as :func:`workbench.probes.probe`, with no split: every row is scored.

    Args:
        acts: ``[n, *unit_axes]`` -- every trailing axis indexes units (e.g. ``[n, heads, d_head]``
            gives one unit per head and neuron), or a dict ``{key: [n] or [n, k]}``.
        labels: ``[n]`` integer (or bool) labels. Binary: the positive class is the larger label.
            More classes: one-vs-rest, one row per unit and class.
        unit_index: names for the unit axes (``["head", "neuron"]``), or a ``pandas`` Index /
            MultiIndex / DataFrame with one row per unit (as in :func:`workbench.probes.probe`).
        max_chunk_bytes: bounds the working memory; units are scored in chunks.

    Returns:
        DataFrame, one row per unit (and class): unit columns, [``class``], ``auroc``, ``ap``.

    Example::

        table = unit_scores(acts, is_female, unit_index=["head", "neuron"])   # acts [n, 8, 128]
        table.sort_values("ap", ascending=False).head()
    """
    import pandas as pd

    scores, unit_shape, keys = score_matrix(acts)
    n, n_units = scores.shape
    codes, classes = encode_labels(labels, n, None)
    units = unit_frame(unit_index, unit_shape, keys)
    targets = [(None, codes)] if len(classes) == 2 else [(c, (codes == i).long()) for i, c in enumerate(classes)]
    chunk = max(1, max_chunk_bytes // (64 * n))  # ~8 float64/long temporaries per score
    frames = []
    for cls, target in targets:
        au = torch.empty(n_units, dtype=torch.float64)
        ap = torch.empty(n_units, dtype=torch.float64)
        for start in range(0, n_units, chunk):
            block = scores[:, start : start + chunk]
            au[start : start + chunk] = auroc(block, target).cpu()
            ap[start : start + chunk] = average_precision(block, target).cpu()
        frame = units.copy()
        if cls is not None:
            frame["class"] = cls
        frame["auroc"], frame["ap"] = au.numpy(), ap.numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def score_matrix(acts) -> tuple[torch.Tensor, tuple, list | None]:
    """``[n, units]`` raw scores for :func:`unit_scores` (every trailing axis indexes units), the unit
    shape and, for a dict, one key per unit (``(key, j)`` for column ``j`` of a ``[n, k]`` value)."""
    if isinstance(acts, Mapping):
        if not acts:
            raise ValueError("acts is an empty dict; pass {unit_key: [n] or [n, k] activations}")
        keys = list(acts.keys())
        parts = [as_float_tensor(acts[k], torch.float32, f"acts[{k!r}]") for k in keys]
        if any(p.ndim not in (1, 2) for p in parts) or len({p.shape[0] for p in parts}) != 1:
            raise ValueError("dict values must be [n] or [n, k] with the same n")
        cols, unit_keys = [], []
        for k, p in zip(keys, parts):
            p = p if p.ndim == 2 else p[:, None]
            cols.append(p)
            unit_keys += [k] if p.shape[1] == 1 else [(k, j) for j in range(p.shape[1])]
        scores = torch.cat(cols, dim=1)
        check_not_empty(scores.shape[0], scores.shape[1], 1, tuple(scores.shape), "acts")
        return scores, (scores.shape[1],), unit_keys
    if isinstance(acts, torch.Tensor) and acts.dtype == torch.float64:
        scores = acts.detach()
    else:
        scores = as_float_tensor(acts, torch.float32, "acts")
    if scores.ndim < 2:
        raise ValueError(f"acts must be [n, units, ...]; got shape {tuple(scores.shape)}")
    check_not_empty(scores.shape[0], int(np.prod(scores.shape[1:])), 1, tuple(scores.shape), "acts")
    return scores.reshape(scores.shape[0], -1), tuple(scores.shape[1:]), None


def check_not_empty(n: int, n_units: int, d: int, shape: tuple, what: str) -> None:
    """Refuse activations with no samples, no units or no features, saying which axis was empty.

    ``shape`` is the array as the user passed it; ``what`` names it ("X", "acts")."""
    if n == 0:
        raise ValueError(f"{what} has no samples (shape {shape}, axis 0 is empty); pass at least one row per class")
    if n_units == 0:
        raise ValueError(f"{what} has no units (shape {shape}: a unit axis is empty); nothing to fit or score")
    if d == 0:
        raise ValueError(f"{what} has units with no features (shape {shape}: the last axis is empty)")


def unit_frame(unit_index, unit_shape: tuple, keys):
    """One row per unit with the unit columns (layer, head, ...)."""
    import pandas as pd

    n_units = int(np.prod(unit_shape))
    if isinstance(unit_index, pd.DataFrame):
        frame = unit_index.reset_index(drop=True).copy()
    elif isinstance(unit_index, pd.MultiIndex):
        names = [name or f"level_{i}" for i, name in enumerate(unit_index.names)]
        frame = pd.DataFrame(list(unit_index), columns=names)
    elif isinstance(unit_index, pd.Index):
        frame = pd.DataFrame({unit_index.name or "unit": np.asarray(unit_index)})
    elif unit_index is None or (
        isinstance(unit_index, Sequence) and all(isinstance(s, str) for s in unit_index)
    ):
        names = list(unit_index) if unit_index is not None else None
        if keys is not None:
            if names and len(names) > 1:
                if not all(isinstance(k, tuple) and len(k) == len(names) for k in keys):
                    raise ValueError(f"unit_index names {names} need dict keys that are {len(names)}-tuples")
                frame = pd.DataFrame(keys, columns=names)
            else:
                frame = pd.DataFrame({(names or ["unit"])[0]: keys})
        else:
            default = ["unit"] if len(unit_shape) == 1 else [f"axis{i + 1}" for i in range(len(unit_shape))]
            names = names or default
            if len(names) != len(unit_shape):
                raise ValueError(
                    f"unit_index names {names} do not match the {len(unit_shape)} unit axes of shape {unit_shape}"
                )
            grid = np.indices(unit_shape).reshape(len(unit_shape), -1)
            frame = pd.DataFrame({name: grid[i] for i, name in enumerate(names)})
    else:
        raise TypeError(
            "unit_index must be None, a list of axis names, or a pandas Index/MultiIndex/DataFrame; "
            f"got {type(unit_index).__name__}"
        )
    if len(frame) != n_units:
        raise ValueError(f"unit_index has {len(frame)} rows but there are {n_units} units")
    return frame


def encode_labels(y, n: int, n_classes: int | None) -> tuple[torch.Tensor, np.ndarray]:
    """Class codes ``[n]`` in ``[0, classes)`` and the class values."""
    labels = labels_array(y, n)
    if n_classes is not None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(
                f"with n_classes={n_classes} labels must lie in [0, {n_classes}); "
                f"got range [{labels.min()}, {labels.max()}]"
            )
        classes = np.arange(n_classes)
        codes = labels.astype(np.int64)
    else:
        classes, codes = np.unique(labels, return_inverse=True)
    present = np.unique(codes)
    if len(present) == 0:
        raise ValueError("y is empty; pass one label per sample")
    if len(present) < 2:
        raise ValueError(
            f"y contains a single class ({classes[present[0]]}); probes and unit scores need at least two classes"
        )
    return torch.from_numpy(codes.astype(np.int64)), classes


def labels_array(y, n: int) -> np.ndarray:
    """``y`` as a 1-d integer numpy array of ``n`` labels (bool becomes 0/1)."""
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"y must be 1-d with one label per sample ({n}), got shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integers (or bool), got dtype {labels.dtype}; encode strings with "
            "np.unique(y, return_inverse=True) and cast whole-number floats with y.astype(int)"
        )
    return labels


def as_float_tensor(x, dtype, what: str) -> torch.Tensor:
    """``x`` (tensor or array-like) as a detached tensor of ``dtype``; ``what`` names it in errors."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        array = np.asarray(x)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be numeric, got numpy dtype {array.dtype}")
        t = torch.from_numpy(array)
    if t.dtype != dtype:
        t = t.to(dtype)
    return t
