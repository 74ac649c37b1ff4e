"""Canonical forms of what an `Edit` holds: indices, numbers and value tensors, and their JSON form.

Values are stored as Python floats or float32 CPU tensors (copies, never the caller's tensor), so an edit
round-trips through JSON and safetensors bit-exactly and later in-place changes to the caller's tensor do not
leak into it.
"""
from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import Tensor

from .errors import EditError

__all__ = ["Value", "is_int", "is_number", "is_finite_number", "canonical_index", "canonical_value",
           "value_from_json"]

Value = Union[None, float, Tensor]


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def is_finite_number(x: Any) -> bool:
    """True for a non-bool int/float that is finite as a float (huge ints overflow → False)."""
    if not is_number(x):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def canonical_index(index: Any) -> Union[None, int, tuple[int, ...]]:
    """None, a non-negative int, or a non-empty tuple of distinct non-negative ints (from lists, arrays, tensors)."""
    if index is None:
        return None
    if isinstance(index, Tensor):
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.ndim > 1:
            raise EditError(f"index must be an int or a list of ints, got a {index.dtype} tensor "
                            f"of shape {tuple(index.shape)}")
        index = index.tolist()
    elif hasattr(index, "tolist") and not isinstance(index, (list, tuple)):  # numpy scalars and arrays
        index = index.tolist()
    if is_int(index):
        if index < 0:
            raise EditError(f"index must be >= 0, got {index}")
        return index
    if not isinstance(index, (list, tuple)):
        raise EditError(f"index must be an int or a list of ints, got {type(index).__name__}")
    if not index:
        raise EditError("index is an empty list; give at least one neuron/latent index")
    if not all(is_int(i) for i in index):
        raise EditError(f"index must contain only ints, got {index!r}")
    if any(i < 0 for i in index):
        raise EditError(f"index entries must be >= 0, got {list(index)}")
    if len(set(index)) != len(index):
        raise EditError(f"index has duplicates: {list(index)}; each neuron/latent may appear once per edit")
    return tuple(index)


def canonical_value(value: Any, what: str = "value") -> Value:
    """None, a finite Python float, or a finite float32 CPU tensor of its own (0-d values become floats)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise EditError(f"{what} must be a number or a tensor, got a bool")
    if is_number(value):
        if not is_finite_number(value):
            raise EditError(f"{what} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, (str, bytes, dict)):
        raise EditError(f"{what} must be a number, a list of numbers or a tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        t = value.detach()
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise EditError(f"{what} tensor must hold numbers, got dtype {t.dtype}")
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise EditError(f"{what} must be a number, a list of numbers or a tensor, "
                            f"got {type(value).__name__}: {err}") from None
        if t.dtype == torch.bool or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise EditError(f"{what} must hold numbers, got dtype {t.dtype}")
    # float32 is the interchange precision; a copy, so one tensor given to several edits (or changed in place
    # by the caller later) never ties them together.
    t = t.to("cpu", torch.float32, copy=True).contiguous()
    if t.ndim == 0:
        return canonical_value(t.item(), what)
    if t.ndim > 2:
        raise EditError(f"{what} must be a scalar, a vector [d] or a per-position matrix [pos, d], "
                        f"got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise EditError(f"{what} is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise EditError(f"{what} contains NaN or inf (after conversion to float32)")
    return t


def value_from_json(v: Any, what: str = "value") -> Value:
    """A value from its JSON form: null, a number, or a (nested, rectangular) list of finite numbers."""
    if v is None or is_number(v):
        return v
    if not isinstance(v, list):
        raise EditError(f"{what}: expected null, a number, a list of numbers or {{\"sidecar\": key}}, "
                        f"got {'null' if v is None else type(v).__name__}")

    def shape(x, depth):
        if is_number(x):
            return ()
        if not isinstance(x, list) or not x or depth > 2:
            raise EditError(f"{what}: expected a non-empty list of numbers or a list of equal-length lists of numbers")
        inner = {shape(y, depth + 1) for y in x}
        if len(inner) != 1:
            raise EditError(f"{what}: nested lists must be rectangular (all rows the same length, numbers only)")
        return (len(x),) + inner.pop()

    shape(v, 1)
    flat = v if is_number(v[0]) else [y for row in v for y in row]
    if not all(is_finite_number(y) for y in flat):
        raise EditError(f"{what}: values must be finite numbers")
    return torch.tensor(v, dtype=torch.float32)
