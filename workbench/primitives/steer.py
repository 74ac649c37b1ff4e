"""Steering: add or remove a direction at a hook, and SAE-latent steering (DebiasLens blend, SEM modulation).

- `add_direction` / `project_out` / `modulate_latents` return `Edit`s (compose them with other edits, export
  them in a spec). `modulate_latents` is SEM's z' = M ⊙ z + (1 − M) ⊙ m as an ordinary, exportable edit.
- `sae_blend_hook` (DebiasLens) and `sae_modulation_hook` (SEM with any latent function) wrap `sae.sae_transform`
  — the one SAE pass, h' = α·decode(f(encode(h))) + (1 − α)·h — as transformer_lens hook fns; attach them with
  `steer(model, hook_name, fn)`. See docs/methods.md.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from torch import Tensor

from workbench.models.hook_names import canonical_position, check_hook_name, hook_tower

from .edit import Edit
from .errors import EditError
from .ops import apply_op
from .sae import sae_transform
from .values import canonical_index, is_finite_number

__all__ = ["add_direction", "project_out", "modulate_latents", "sae_blend_hook", "sae_modulation_hook", "steer"]

HookFn = Callable[[Tensor, Any], Tensor]


def _tower(hook: Optional[str], tower: Optional[str]) -> str:
    if tower is not None:
        return tower
    return hook_tower(hook) if hook is not None else "image"


def add_direction(layer: Optional[int], direction, scale: float = 1.0, position: str = "all",
                  hook: Optional[str] = None, tower: Optional[str] = None) -> Edit:
    """Edit adding `scale · direction` ([d]) to `blocks.{layer}.hook_resid_post` (or to `hook`, then layer=None).

    `tower` defaults to the hook's tower ("text" for names starting with "text.", else "image").
    """
    return Edit(target="direction", op="add", layer=layer, value=direction, scale=scale, position=position,
                hook=hook, tower=_tower(hook, tower))


def project_out(layer: Optional[int], direction, position: str = "all", hook: Optional[str] = None,
                tower: Optional[str] = None, scale: float = 1.0) -> Edit:
    """Edit removing the component along û = direction/‖direction‖: x ← x − scale·(x·û)û.

    scale=1 removes it fully; 0 < scale < 1 removes part of it."""
    return Edit(target="direction", op="project_out", layer=layer, value=direction, scale=scale, position=position,
                hook=hook, tower=_tower(hook, tower))


def modulate_latents(modulation, reference=None, layer: Optional[int] = None, hook: Optional[str] = None,
                     index=None, position: str = "all", tower: Optional[str] = None) -> Edit:
    """SEM's latent modulation as an Edit: z' = M ⊙ z + (1 − M) ⊙ m on the latents of the SAE at
    `blocks.{layer}.hook_resid_post` (or `hook`, e.g. "text.hook_text_embed"), with no error term when applied
    with alpha=1 (the default of `intervene`).

    modulation: M, [d_sae] (or [len(index)], or a scalar); reference: m, same shapes (default 0, e.g. the
    latents' median over a neutral set). index: the latents to modulate (default: all of them).
    Apply with `intervene(model, edit, sae=sae)`; export it like any edit.
    """
    return Edit(target="sae_latent", op="modulate", layer=layer, hook=hook, index=index, value=modulation,
                reference=reference, position=position, tower=_tower(hook, tower))


def _at_positions(transform: Callable[[Tensor], Tensor], position: str) -> HookFn:
    """Hook fn applying `transform` at position 0 ("pooled", alias "cls") or every position ("all") of
    [b, pos, d]; [b, d] hooks (e.g. text.hook_text_embed) are transformed whole."""
    try:
        position = canonical_position(position)
    except ValueError as err:
        raise EditError(str(err)) from None

    def hook_fn(x: Tensor, hook=None) -> Tensor:
        if x.ndim == 2 or position == "all":
            return transform(x)
        out = x.clone()
        out[:, 0] = transform(x[:, 0])
        return out

    return hook_fn


def sae_blend_hook(sae, latents: Union[int, Sequence[int], Tensor], gamma: float = 0.0, alpha: float = 0.6,
                   position: str = "all") -> HookFn:
    """DebiasLens: z = encode(h); z[latents] = γ; h' = α·decode(z) + (1 − α)·h.

    latents: indices into the SAE's d_sae; gamma: the value they are set to (0 for CLIP); alpha: blend
    (paper default 0.6). Returns a hook fn for the SAE's site (e.g. the last block's hook_resid_post).
    """
    index = canonical_index(latents)
    if index is None:
        raise EditError("latents must be an int or a list of ints (indices into the SAE's d_sae)")
    idx = torch.tensor([index] if isinstance(index, int) else list(index), dtype=torch.long)
    d_sae = int(sae.cfg.d_sae)
    if int(idx.max()) >= d_sae:
        raise EditError(f"latent index {int(idx.max())} out of range; the SAE has d_sae={d_sae}")
    if not is_finite_number(gamma):
        raise EditError(f"gamma must be a finite number, got {gamma!r}")
    gamma = float(gamma)

    def set_latents(z: Tensor) -> Tensor:
        z = z.clone()
        i = idx.to(z.device)
        z[..., i] = apply_op(z[..., i], "set", gamma)
        return z

    return _at_positions(sae_transform(sae, set_latents, alpha=alpha), position)


def sae_modulation_hook(sae, fn: Callable[[Tensor], Tensor], position: str = "all") -> HookFn:
    """SEM: h' = decode(fn(encode(h))), no error term.

    fn maps latents z [..., d_sae] to modulated latents, e.g. `lambda z: M * z + (1 - M) * median_D`. For that
    elementwise modulation prefer `modulate_latents`, an Edit that can be exported in a spec.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable on latents [..., d_sae], got {type(fn).__name__}")
    return _at_positions(sae_transform(sae, fn, alpha=1.0), position)


@contextmanager
def steer(model, hook_name: str, hook_fn: HookFn) -> Iterator[Any]:
    """Context manager attaching `hook_fn` at `hook_name`; removed on exit, also after an exception.

        with steer(model, "text.hook_text_embed", sae_modulation_hook(sae, modulate)):
            t = model.encode_text(prompts)
    """
    try:
        check_hook_name(model, hook_name)
    except ValueError as err:
        raise EditError(str(err)) from None
    with model.hooks(fwd_hooks=[(hook_name, hook_fn)]):
        yield model
