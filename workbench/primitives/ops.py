"""The op registry: what an edit does to the activations it selects (see docs/interventions.md).

Every op is registered here once, with the targets it applies to and what its value means; `Edit` validation,
hook compilation, the spec format and error messages all read the registry, so adding an op is one
`register_op` call:

    register_op("clamp", lambda v, value, scale, reference: v.clamp(max=value), targets=("neuron", "sae_latent"),
                value_hint="the upper bound, a scalar or one per coordinate")

Built-in ops, applied to the selected slice v [..., w] (value broadcast as [w] or [pos, w]):

    zero          v ← 0
    mean/replace  v ← value                       (a mean or prototype; on a head, a vector [d_model])
    set           v ← value
    scale         v ← value · v                   (α, a scalar or one per coordinate)
    add           v ← v + scale · value
    project_out   v ← v − scale · (v·û) û,  û = value / ‖value‖
    modulate      v ← M ⊙ v + (1 − M) ⊙ m,  M = value, m = reference (default 0): elementwise latent modulation
    rank_modulate v ← M ⊙ v + (1 − M) ⊙ m,  M = (1 + rank_R(v) − b)², value = [b; R] (row 0 the offset b [w],
                  rows 1… the reference rows R [n, w]), m = reference (default 0). rank_R(v)[j] = the fraction
                  of rows r of R with r[j] < v[j] (strict), computed from v itself when the edit runs: SEM's
                  bias-aware modulation with the content score of the query at hand (docs/sem.md).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .errors import EditError
from .values import Value

__all__ = ["Op", "OpFn", "TARGETS", "register_op", "get_op", "op_names", "apply_op"]

TARGETS = ("head", "neuron", "sae_latent", "direction")
# fn(v, value, scale, reference) -> the new slice, same shape as v; value/reference already on v's device/dtype
OpFn = Callable[[Tensor, Value, float, Value], Tensor]


@dataclass(frozen=True)
class Op:
    """One registered op.

    targets: the edit targets it applies to. needs_value: False for ops that take no value (zero).
    value_hint: what the value means, for error messages. vector_only: the value must be one vector [d] (no
    scalar, no per-position matrix). vector_on_head: on a head target the value must be a vector [d_model].
    uses_scale / uses_reference: the op reads Edit.scale / Edit.reference. latents_without_index: sae_latent edits
    may leave out `index` to act on every latent. check: an extra check of the value (raise EditError).
    value_rows: the value is a matrix [rows, w] whose rows are data (not positions), accepted at any position.
    """

    name: str
    fn: OpFn
    targets: tuple[str, ...]
    needs_value: bool = True
    value_hint: str = "the replacement vector or scalar"
    vector_only: bool = False
    vector_on_head: bool = False
    uses_scale: bool = False
    uses_reference: bool = False
    latents_without_index: bool = False
    check: Optional[Callable[[Value], None]] = None
    value_rows: bool = False


_REGISTRY: dict[str, Op] = {}


def register_op(name: str, fn: OpFn, targets: tuple[str, ...] = TARGETS, needs_value: bool = True,
                value_hint: str = "the replacement vector or scalar", vector_only: bool = False,
                vector_on_head: bool = False, uses_scale: bool = False, uses_reference: bool = False,
                latents_without_index: bool = False, check: Optional[Callable[[Value], None]] = None,
                value_rows: bool = False, replace: bool = False) -> Op:
    """Register an op under `name` (see `Op` for the fields); `replace=True` to redefine an existing one."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"op names are identifiers such as 'scale', got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"op {name!r} is already registered; pass replace=True to redefine it")
    if not callable(fn):
        raise TypeError(f"op {name!r}: fn must be callable fn(v, value, scale, reference) -> Tensor")
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"op {name!r}: targets must be a non-empty subset of {list(TARGETS)}, got {list(targets)}")
    op = Op(name, fn, targets, needs_value, value_hint, vector_only, vector_on_head, uses_scale, uses_reference,
            latents_without_index, check, value_rows)
    _REGISTRY[name] = op
    return op


def op_names(target: Optional[str] = None) -> list[str]:
    """Registered op names (those applying to `target`, if given), in registration order."""
    return [n for n, op in _REGISTRY.items() if target is None or target in op.targets]


def get_op(name) -> Op:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise EditError(f"unknown op {name!r}; expected one of {op_names()}")
    return _REGISTRY[name]


def apply_op(v: Tensor, op: str, value: Value, scale: float = 1.0, reference: Value = None) -> Tensor:
    """Apply `op` to the selected activations v [..., w] and return the new slice (same shape).

    value / reference: None, a float, or a tensor already on v's device and dtype, broadcastable to v.
    """
    return get_op(op).fn(v, value, scale, reference)


# ---------------------------------------------------------------------------------------------- built-in ops
def _zero(v, value, scale, reference):
    return torch.zeros_like(v)


def _write(v, value, scale, reference):
    return torch.full_like(v, value) if isinstance(value, float) else value.expand_as(v).clone()


def _scale(v, value, scale, reference):
    return v * value


def _add(v, value, scale, reference):
    return v + scale * value


def _project_out(v, value, scale, reference):
    u = value / value.norm()
    return v - scale * (v * u).sum(-1, keepdim=True) * u


def _modulate(v, value, scale, reference):
    # M ⊙ z + (1 − M) ⊙ m in this order, so it equals the same expression written by hand bit for bit
    if reference is None:
        return value * v
    return value * v + (1 - value) * reference


def _rank_modulate(v, value, scale, reference):
    # rank_R(v)[j] = #{r ∈ R : r[j] < v[j]} / |R| by binary search in each latent's sorted column (memory
    # O(batch · w), not O(batch · |R| · w)); side="left" counts the strictly smaller entries.
    offset, rows = value[0], value[1:]
    columns = rows.T.contiguous().sort(dim=-1).values  # [w, n]
    flat = v.reshape(-1, v.shape[-1]).T.contiguous()  # [w, b]
    below = torch.searchsorted(columns, flat, side="left").T.reshape(v.shape)
    rank = below.to(v.dtype) / rows.shape[0]
    m = (1 + rank - offset) ** 2
    if reference is None:
        return m * v
    return v * m + (1 - m) * reference


def _offset_and_rows(value: Value) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[0] < 2:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise EditError(f"rank_modulate needs a matrix value [1 + n, w]: row 0 the offset b, rows 1… the n ≥ 1 "
                        f"reference rows; got {shape}")


def _nonzero_direction(value: Value) -> None:
    if not value.abs().sum() > 0:
        raise EditError("project_out direction is the zero vector; it has no direction to remove")


_ALL_BUT_DIRECTION = ("head", "neuron", "sae_latent")
register_op("zero", _zero, _ALL_BUT_DIRECTION, needs_value=False)
for _name in ("mean", "replace", "set"):
    register_op(_name, _write, _ALL_BUT_DIRECTION, vector_on_head=True)
register_op("scale", _scale, _ALL_BUT_DIRECTION, value_hint="α, a scalar or one per coordinate")
register_op("add", _add, TARGETS, value_hint="a vector (or scalar) to add, times `scale`", uses_scale=True)
register_op("project_out", _project_out, ("head", "neuron", "direction"),
            value_hint="the direction to remove, a vector [d]", vector_only=True, uses_scale=True,
            check=_nonzero_direction)
register_op("modulate", _modulate, TARGETS, value_hint="the modulation M, a scalar or one per coordinate",
            uses_reference=True, latents_without_index=True)
register_op("rank_modulate", _rank_modulate, ("sae_latent",),
            value_hint="a matrix [1 + n, w]: row 0 the offset b, rows 1… the reference rows R", uses_reference=True,
            latents_without_index=True, check=_offset_and_rows, value_rows=True)
