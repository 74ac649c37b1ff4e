"""Input handling for :mod:`workbench.probes`: activation layouts, unit descriptions, splits.

Kept apart from the estimator so that every way a user can hand over activations (a tensor
``[n, *unit_axes, d]``, a 2-d ``[n, units]``, a dict ``{key: [n, d]}``) is validated in one place,
with the same error messages for ``fit``, ``predict`` and :func:`~workbench.probes.probe`. Labels
and unit tables are shared with :func:`workbench.metrics.unit_scores` and live beside it
(:mod:`workbench.metrics.units`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from workbench.metrics.units import as_float_tensor, check_not_empty

__all__ = ["describe_unit", "nonfinite_error", "require_rows", "split_rows", "units_tensor"]


def units_tensor(X, dtype) -> tuple[torch.Tensor, tuple[int, ...], list | None]:
    """``X`` as ``[n, units, d]`` in ``dtype`` (a view when possible), its unit shape and dict keys.

    Empty unit or feature axes are refused here; zero rows only where a fit needs them
    (:func:`require_rows`): predicting on no rows is allowed."""
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
        acts = torch.stack(parts, dim=1)
        check_not_empty(1, len(keys), acts.shape[2], tuple(parts[0].shape), f"X[{keys[0]!r}]")
        return acts, (len(keys),), keys
    acts = as_float_tensor(X, dtype, "X")
    if acts.ndim < 2:
        raise ValueError(f"X must be [n, units, d] or [n, units]; got shape {tuple(acts.shape)}")
    shape = tuple(acts.shape)
    if acts.ndim == 2:
        check_not_empty(1, shape[1], 1, shape, "X")
        return acts[:, :, None], (shape[1],), None
    unit_shape = shape[1:-1]
    n_units = int(np.prod(unit_shape))
    check_not_empty(1, n_units, shape[-1], shape, "X")
    return acts.reshape(shape[0], n_units, shape[-1]), unit_shape, None


def require_rows(acts: torch.Tensor, X) -> None:
    """Refuse activations ``acts [n, units, d]`` with no samples (``X`` as passed, for the message)."""
    if acts.shape[0] == 0:
        if isinstance(X, Mapping):
            key = next(iter(X))
            check_not_empty(0, acts.shape[1], acts.shape[2], tuple(np.shape(X[key])), f"X[{key!r}]")
        check_not_empty(0, acts.shape[1], acts.shape[2], tuple(np.shape(X)), "X")


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
