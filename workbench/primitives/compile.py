"""Edits → hook functions: the only place where `Edit`s become `(hook_name, fn)` pairs for `model.hooks`.

Edits on one hook are composed, in order, into ONE function; consecutive sae_latent edits on one site and
position share one SAE pass (encode once, edit the latents, decode). Every per-edit cost that does not depend
on the batch (value moved to the activation's device and dtype, index tensors) is paid once and reused.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from workbench.models.hook_names import sae_hook_name

from .edit import Edit
from .errors import EditError, EditTargetError
from .sae import check_alpha, sae_transform
from .values import Value, is_int

__all__ = ["edits_to_hooks", "edit_hook_fn"]

HookFn = Callable[[Tensor, Any], Tensor]


class _ValueOnDevice:
    """An edit's value moved to the activation's device/dtype once, then reused on every forward."""

    def __init__(self, value: Value):
        self.value, self._cache = value, {}

    def get(self, like: Tensor) -> Value:
        if not isinstance(self.value, Tensor):
            return self.value
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.value.to(device=like.device, dtype=like.dtype)
        return self._cache[key]


def _select_positions(x: Tensor, edit: Edit) -> Tensor:
    """View of x at the edited positions, for [b, pos, d] (pooled → [b, d]) and [b, d] (everything) layouts."""
    if x.ndim == 2 or edit.position == "all":
        return x
    if edit.tower == "text":
        raise EditTargetError(f"{edit!r}: position='pooled' on a [b, pos, d] text hook is not supported; "
                              "use position='all'")
    return x[:, 0]


class _EditStep:
    """Applies one edit (not an SAE pass) in place on an already-cloned hook tensor.

    `whole=True` acts on every row of the tensor: used for SAE latents, whose positions were selected on
    the stream before encoding.
    """

    def __init__(self, edit: Edit, whole: bool = False):
        self.edit, self.whole = edit, whole
        self.fn = edit.op_spec.fn
        self.value, self.reference = _ValueOnDevice(edit.value), _ValueOnDevice(edit.reference)
        idx = None if edit.index is None else [edit.index] if is_int(edit.index) else list(edit.index)
        self._index, self._idx = idx, {}

    def _base(self, x: Tensor) -> Tensor:
        e = self.edit
        if self.whole:
            return x
        if e.target in ("head", "neuron") and e.head is not None:
            return x[:, e.head] if e.position == "pooled" else x[:, :, e.head]
        return _select_positions(x, e)

    def __call__(self, x: Tensor) -> None:
        base = self._base(x)
        if self._index is None:
            base[...] = self._apply(base)
            return
        if x.device not in self._idx:
            if max(self._index) >= base.shape[-1]:
                raise EditTargetError(f"{self.edit!r}: index {max(self._index)} out of range for activations of "
                                      f"width {base.shape[-1]}")
            self._idx[x.device] = torch.tensor(self._index, dtype=torch.long, device=x.device)
        idx = self._idx[x.device]
        base[..., idx] = self._apply(base[..., idx])

    def _apply(self, v: Tensor) -> Tensor:
        value, reference = self.value.get(v), self.reference.get(v)
        rows = self.edit.op_spec.value_rows  # a value of data rows [n, w], not one row per position
        for t, per_position in ((value, not rows), (reference, True)):
            if isinstance(t, Tensor) and (t.shape[-1] != v.shape[-1] or (
                    per_position and t.ndim == 2 and (v.ndim < 3 or t.shape[0] != v.shape[-2]))):
                raise EditTargetError(f"{self.edit!r}: value of shape {list(t.shape)} does not fit activations of "
                                      f"shape {list(v.shape)} at {self.edit.hook_name()!r}")
        return self.fn(v, value, self.edit.scale, reference)


class _SAEStep:
    """Applies consecutive sae_latent edits (same position) through one encode → edit latents → decode pass."""

    def __init__(self, sae, edits: list[Edit], alpha: float):
        if sae is None:
            raise EditTargetError(f"{edits[0]!r}: an sae_latent edit needs an SAE; pass sae=... (a sae_lens SAE)")
        self.edit = edits[0]
        steps = [_EditStep(e, whole=True) for e in edits]

        def edit_latents(z: Tensor) -> Tensor:
            z = z.clone()
            for step in steps:
                step(z)
            return z

        self.transform = sae_transform(sae, edit_latents, alpha=alpha)

    def __call__(self, x: Tensor) -> None:
        base = _select_positions(x, self.edit)
        base[...] = self.transform(base)


def _compose(steps: Sequence[Callable[[Tensor], None]]) -> HookFn:
    def hook_fn(x: Tensor, hook=None) -> Tensor:
        # Work on a copy: the attention module detects an edit by identity (`edited is not cls`), and the
        # caller's tensor may be cached elsewhere.
        out = x.clone()
        for step in steps:
            step(out)
        return out

    hook_fn.steps = list(steps)
    return hook_fn


class _SplicedBlend:
    """The blend h' = α·out + (1 − α)·h on an SAE spliced at a site (out: what the splice passes on, h: its
    input), at the edits' positions: two steps sharing h, one on `{site}.hook_sae_input`, one on
    `{site}.hook_sae_output`."""

    def __init__(self, edits: list[Edit], alpha: float):
        self.edit = next((e for e in edits if e.position == "all"), edits[0])
        self.alpha, self._h = alpha, None

    def stash(self, h: Tensor) -> None:
        self._h = h.clone()

    def blend(self, out: Tensor) -> None:
        h, self._h = self._h, None
        if h is None:
            raise EditError(f"{self.edit!r}: the spliced SAE's input was not seen before its output")
        base = _select_positions(out, self.edit)
        base[...] = self.alpha * base + (1.0 - self.alpha) * _select_positions(h, self.edit).to(out.dtype)


def _build_hooks(model, edits: list[Edit], sae, alpha: float) -> list[tuple[str, HookFn]]:
    groups: dict[str, list] = {}
    spliced_sites: dict[str, list[Edit]] = {}
    for e in edits:
        name = e.hook_name(model)
        steps = groups.setdefault(name, [])
        if e.target != "sae_latent" or name != e.target_hook():  # a spliced SAE: edit its latents directly
            steps.append(_EditStep(e))
            if e.target == "sae_latent":
                spliced_sites.setdefault(e.target_hook(), []).append(e)
        elif steps and isinstance(steps[-1], list) and steps[-1][0].position == e.position:
            steps[-1].append(e)  # merge into the pending SAE pass: encode once
        else:
            steps.append([e])
    for site in spliced_sites:
        mine = getattr(getattr(model.hook_dict.get(site), "spliced", None), "sae", None)
        if sae is not None and mine is not None and mine is not sae:
            raise EditTargetError(f"{spliced_sites[site][0]!r}: another SAE is spliced at {site!r} and the edits act "
                                  "on it; drop sae=..., or splice this one instead (model.remove_saes, model.add_sae)")
    if alpha != 1.0:
        for site, site_edits in spliced_sites.items():
            blend = _SplicedBlend(site_edits, alpha)
            groups.setdefault(sae_hook_name(site, "sae_input"), []).append(blend.stash)
            groups.setdefault(sae_hook_name(site, "sae_output"), []).append(blend.blend)
    return [(name, _compose([_SAEStep(sae, s, alpha) if isinstance(s, list) else s for s in steps]))
            for name, steps in groups.items()]


def edits_to_hooks(model, edits: Iterable[Edit], sae=None, alpha: float = 1.0,
                   validate: bool = True) -> list[tuple[str, HookFn]]:
    """Translate edits into `[(hook_name, fn)]` for `model.hooks(fwd_hooks=...)` / `run_with_hooks`.

    Edits on the same hook are composed, in the given order, into ONE hook fn. Consecutive sae_latent edits
    on the same site and position share one SAE pass: h' = α·decode(z') + (1 − α)·h, z' = latents after
    the edits (`sae`: a sae_lens SAE; `alpha`: the blend, 1.0 = pure reconstruction, no error term).
    Where an SAE is spliced at the site (`model.add_sae`), the edits act on its `hook_sae_acts_post` instead
    and α blends what the splice passes on with its input (docs/saes.md).
    `validate=True` checks every edit against `model` (and `sae`) first, raising EditTargetError.
    """
    edits = list(edits)
    for i, e in enumerate(edits):
        if not isinstance(e, Edit):
            raise EditError(f"edits[{i}] is a {type(e).__name__}, not an Edit")
    alpha = check_alpha(alpha)
    if validate:
        for e in edits:
            e.validate(model, sae=sae)
    return _build_hooks(model, edits, sae, alpha)


def edit_hook_fn(edit: Edit, model=None, sae=None, alpha: float = 1.0) -> HookFn:
    """A transformer_lens hook fn `fn(tensor, hook) -> tensor` applying just `edit` (at `edit.hook_name(model)`).

    Validated against `model` when one is given; `sae`/`alpha` are for sae_latent edits."""
    ((_, fn),) = edits_to_hooks(model, [edit], sae=sae, alpha=alpha, validate=model is not None)
    return fn
