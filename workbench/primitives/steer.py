"""Steering: add or remove a direction at a site, and SAE-latent steering (DebiasLens blend, SEM modulation).

- `add_direction` / `project_out` return `Edit`s (compose them with other edits, export them in a spec).
- `sae_transform` is the one SAE pass everything SAE-based uses (spec sae_latent edits included):
  h' = α·decode(f(encode(h))) + (1 − α)·h, with no error term.
- `sae_blend_hook` (DebiasLens, METHODS.md §3) and `sae_modulation_hook` (SEM, METHODS.md §2) wrap it
  as transformer_lens hook fns; attach them with `steer(model, site_hook, fn)`.

SAEs are sae_lens objects (`sae_lens.SAE`: `.encode`, `.decode`, `.cfg.d_in`, `.cfg.d_sae`); sae_lens
is not imported here, so `import workbench.primitives` stays light.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .edits import POSITIONS, Edit, EditError, apply_op, canonical_index, is_finite_number

__all__ = ["add_direction", "project_out", "sae_transform", "sae_blend_hook", "sae_modulation_hook", "steer"]

HookFn = Callable[[Tensor, Any], Tensor]


def _tower(hook: Optional[str], tower: Optional[str]) -> str:
    if tower is not None:
        return tower
    return "text" if hook is not None and hook.startswith("text.") else "image"


def add_direction(layer: Optional[int], direction, scale: float = 1.0, position: str = "all",
                  hook: Optional[str] = None, tower: Optional[str] = None) -> Edit:
    """Edit adding `scale · direction` ([d]) to `blocks.{layer}.hook_resid_post` (or to `hook`, then layer=None).

    `tower` defaults to the hook's tower ("text" for names starting with "text.", else "image").
    """
    return Edit(site="direction", op="add", layer=layer, value=direction, scale=scale, position=position,
                hook=hook, tower=_tower(hook, tower))


def project_out(layer: Optional[int], direction, position: str = "all", hook: Optional[str] = None,
                tower: Optional[str] = None, scale: float = 1.0) -> Edit:
    """Edit removing the component along û = direction/‖direction‖: x ← x − scale·(x·û)û.

    scale=1 removes it fully; 0 < scale < 1 removes part of it."""
    return Edit(site="direction", op="project_out", layer=layer, value=direction, scale=scale, position=position,
                hook=hook, tower=_tower(hook, tower))


def _check_alpha(alpha: float) -> float:
    if not is_finite_number(alpha):
        raise EditError(f"alpha must be a finite number (the blend weight of the SAE reconstruction), got {alpha!r}")
    return float(alpha)


def sae_transform(sae, latent_fn: Callable[[Tensor], Tensor], alpha: float = 1.0) -> Callable[[Tensor], Tensor]:
    """h [..., d_in] → α·decode(latent_fn(encode(h))) + (1 − α)·h, in h's dtype.

    latent_fn maps latents z [..., d_sae] to edited latents of the same shape. α = 1 replaces h by the
    edited reconstruction (SEM: no error term); α < 1 keeps part of the original (DebiasLens).
    """
    alpha = _check_alpha(alpha)
    for attr in ("encode", "decode", "cfg"):
        if not hasattr(sae, attr):
            raise TypeError(f"expected a sae_lens SAE (with .encode, .decode, .cfg), got {type(sae).__name__}")
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)

    def transform(h: Tensor) -> Tensor:
        if h.shape[-1] != d_in:
            raise ValueError(f"the SAE reads vectors of size d_in={d_in}, but the activations have shape {list(h.shape)}")
        sae_device = sae.W_dec.device
        if sae_device != h.device:
            raise ValueError(f"the SAE is on {sae_device} but the activations are on {h.device}; move it with sae.to(...)")
        z = latent_fn(sae.encode(h))
        if z.shape[-1] != d_sae:
            raise ValueError(f"the latent function must return latents [..., {d_sae}], got {list(z.shape)}")
        rec = sae.decode(z).to(h.dtype)
        return rec if alpha == 1.0 else alpha * rec + (1.0 - alpha) * h

    return transform


def _at_positions(transform: Callable[[Tensor], Tensor], position: str) -> HookFn:
    """Hook fn applying `transform` at position 0 ("cls") or every position ("all") of [b, pos, d];
    [b, d] hooks (e.g. text.hook_text_embed) are transformed whole."""
    if position not in POSITIONS:
        raise EditError(f"unknown position {position!r}; expected one of {list(POSITIONS)}")

    def hook_fn(x: Tensor, hook=None) -> Tensor:
        if x.ndim == 2 or position == "all":
            return transform(x)
        out = x.clone()
        out[:, 0] = transform(x[:, 0])
        return out

    return hook_fn


def sae_blend_hook(sae, latents: Union[int, Sequence[int], Tensor], gamma: float = 0.0, alpha: float = 0.6,
                   position: str = "all") -> HookFn:
    """DebiasLens (METHODS.md §3): z = encode(h); z[latents] = γ; h' = α·decode(z) + (1 − α)·h.

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
    """SEM (METHODS.md §2): h' = decode(fn(encode(h))), no error term.

    fn maps latents z [..., d_sae] to modulated latents, e.g. `lambda z: M * z + (1 - M) * median_D`.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable on latents [..., d_sae], got {type(fn).__name__}")
    return _at_positions(sae_transform(sae, fn, alpha=1.0), position)


@contextmanager
def steer(model, site_hook: str, hook_fn: HookFn) -> Iterator[Any]:
    """Context manager attaching `hook_fn` at `site_hook`; removed on exit, also after an exception.

        with steer(model, "text.hook_text_embed", sae_modulation_hook(sae, modulate)):
            t = model.encode_text(prompts)
    """
    if site_hook not in model.hook_dict:
        near = [n for n in model.hook_dict if n.endswith(site_hook.split(".")[-1])][:6]
        raise EditError(f"no hook point named {site_hook!r} in this model" + (f"; similar: {near}" if near else ""))
    with model.hooks(fwd_hooks=[(site_hook, hook_fn)]):
        yield model
