"""The one SAE pass everything SAE-based uses (sae_latent edits, the DebiasLens blend, SEM modulation).

SAEs are sae_lens objects (`.encode`, `.decode`, `.cfg.d_in`, `.cfg.d_sae`); sae_lens is not imported here,
so `import workbench.primitives` stays light.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .errors import EditError
from .values import is_finite_number

__all__ = ["sae_transform", "check_alpha"]


def check_alpha(alpha) -> float:
    if not is_finite_number(alpha):
        raise EditError(f"alpha must be a finite number (the blend weight of the SAE reconstruction), got {alpha!r}")
    return float(alpha)


def sae_transform(sae, latent_fn: Callable[[Tensor], Tensor], alpha: float = 1.0) -> Callable[[Tensor], Tensor]:
    """h [..., d_in] → α·decode(latent_fn(encode(h))) + (1 − α)·h, in h's dtype.

    latent_fn maps latents z [..., d_sae] to edited latents of the same shape. α = 1 replaces h by the
    edited reconstruction (no error term); α < 1 keeps part of the original.
    """
    alpha = check_alpha(alpha)
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
