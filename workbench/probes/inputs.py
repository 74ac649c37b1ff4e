"""Input handling for :mod:`workbench.probes`: activation layouts, labels, unit tables, splits.

Kept apart from the estimator so that every way a user can hand over activations (a tensor
``[n, *unit_axes, d]``, a 2-d ``[n, units]``, a dict ``{key: [n, d]}``) and labels is validated in
one place, with the same error messages for ``fit``, ``predict``, :func:`probe` and
:func:`unit_scores`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "as_float_tensor",
    "describe_unit",
    "encode_labels",
    "labels_array",
    "nonfinite_error",
    "score_matrix",
    "split_rows",
    "unit_frame",
    "units_tensor",
]


def units_tensor(X, dtype) -> tuple[torch.Tensor, tuple[int, ...], list | None]:
    """``X`` as ``[n, units, d]`` in ``dtype`` (a view when possible), its unit shape and dict keys."""
    if isinstance(X, Mapping):
        if not X:
            raise ValueError("X is an empty dict; pass {unit_key: [n, d] activations}")
        keys = list(X.keys())
        parts = [as_float_tensor(X[k], dtype, f"X[{k!r}]") for k in keys]
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1 or parts[0].ndim not in (1, 2):
            raise ValueError(
                f"dict values must all be [n, d] (or all [n]) with the same shape, got {sorted(shapes)}"
            )
        parts = [p if p.ndim == 2 else p[:, None] for p in parts]
        return torch.stack(parts, dim=1), (len(keys),), keys
    acts = as_float_tensor(X, dtype, "X")
    if acts.ndim < 2:
        raise ValueError(f"X must be [n, units, d] or [n, units]; got shape {tuple(acts.shape)}")
    if acts.ndim == 2:
        return acts[:, :, None], (acts.shape[1],), None
    unit_shape = tuple(acts.shape[1:-1])
    return acts.reshape(acts.shape[0], -1, acts.shape[-1]), unit_shape, None


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
    if len(present) < 2:
        raise ValueError(
            f"y contains a single class ({classes[present[0]]}); a probe needs at least two classes"
        )
    return torch.from_numpy(codes.astype(np.int64)), classes


def describe_unit(index: int, unit_shape: tuple, keys) -> str:
    """A unit as the user knows it: its dict key, its index tuple, or its flat index."""
    if keys is not None:
        return f"key {keys[index]!r}"
    if len(unit_shape) > 1:
        return f"unit {index} (index {tuple(int(i) for i in np.unravel_index(index, unit_shape))})"
    return f"unit {index}"


def nonfinite_error(index: int, unit_shape: tuple, keys) -> ValueError:
    """The error for NaN / infinite activations, naming the first affected unit."""
    return ValueError(
        f"X contains NaN or infinite values (first affected unit: "
        f"{describe_unit(index, unit_shape, keys)}); drop or impute them first"
    )


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


def score_matrix(acts) -> tuple[torch.Tensor, tuple, list | None]:
    """``[n, units]`` raw scores for ``unit_scores`` (every trailing axis indexes units)."""
    if isinstance(acts, Mapping):
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
        return scores, (scores.shape[1],), unit_keys
    if isinstance(acts, torch.Tensor) and acts.dtype == torch.float64:
        scores = acts.detach()
    else:
        scores = as_float_tensor(acts, torch.float32, "acts")
    if scores.ndim < 2:
        raise ValueError(f"acts must be [n, units, ...]; got shape {tuple(scores.shape)}")
    return scores.reshape(scores.shape[0], -1), tuple(scores.shape[1:]), None


def split_rows(codes: np.ndarray, test_size: float, stratify: bool, seed: int):
    """Seeded train/test row indices; stratified keeps each class's share in both parts."""
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    n = len(codes)
    if not stratify:
        order = rng.permutation(n)
        n_test = int(round(test_size * n))
        if n_test == 0 or n_test == n:
            raise ValueError(f"test_size={test_size} leaves an empty train or test set for n={n}")
        return np.sort(order[n_test:]), np.sort(order[:n_test])
    train, test = [], []
    for c in np.unique(codes):
        members = np.flatnonzero(codes == c)
        if len(members) < 2:
            raise ValueError(
                f"class code {c} has {len(members)} sample(s); stratified splitting needs at least 2 "
                "per class (use stratify=False or drop the class)"
            )
        members = rng.permutation(members)
        n_test = min(max(1, int(round(test_size * len(members)))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
