"""Direct-effect decomposition of the image embedding at the CLS token.

Convention (docs/decomposition.md): the residual at CLS entering ln_post is

    r = embed[CLS] + Σ_l Σ_h cls_result[l, h] + Σ_l b_O[l] + Σ_l mlp_out[l][CLS].

ln_post is linear once its scale σ is frozen at the clean run's value (TransformerLens convention), so a
component c contributes ((c − mean(c)) / σ) ⊙ γ @ proj to the embedding, and β @ proj is a component of
its own. The pieces sum to `encode_image` up to float rounding. Head writes are computed for the CLS query
row only (hook_cls_result), never as a full [b, q, k, head, d] tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .hook_names import act_name

SPACES = ("embed", "resid")


def _check_layers(vit, layers: Optional[Sequence[int]]) -> list[int]:
    n = vit.cfg.n_layers
    if layers is None:
        return list(range(n))
    layers = [int(l) for l in ([layers] if isinstance(layers, int) else layers)]
    bad = [l for l in layers if not -n <= l < n]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n} layers (valid: 0..{n - 1} or negative)")
    return [l % n for l in layers]


def _check_cls_pooling(vit) -> None:
    if vit.cfg.pool != "tok":
        raise NotImplementedError(
            f"the CLS decomposition needs token pooling; this image tower pools with {vit.cfg.pool!r}"
        )


def project_to_embed(vit, x: Tensor, scale: Tensor) -> Tensor:
    """Linearised ln_post + proj: x [b, ..., d_model], scale [b, 1] (ln_post σ of the clean run) → [b, ..., d_embed]."""
    scale = scale.reshape(scale.shape[0], *([1] * (x.ndim - 1)))
    y = (x - x.mean(-1, keepdim=True)) / scale * vit.ln_post.w
    return y @ vit.proj if vit.proj is not None else y


def _run_capturing_cls(vit, images: Tensor, names: list[str]) -> dict[str, Tensor]:
    """One forward pass storing the CLS row (or whole tensor for [b, …] hooks) of each named hook."""
    store: dict[str, Tensor] = {}

    def save(t: Tensor, hook):
        store[hook.name] = t[:, 0] if hook.name.endswith(("hook_mlp_out", "hook_embed")) else t
        return t

    vit.run_with_hooks(images, fwd_hooks=[(n, save) for n in names])
    return store


@torch.no_grad()
def head_contributions(vit, images: Tensor, layers: Optional[Sequence[int]] = None, space: str = "embed") -> Tensor:
    """Each head's direct contribution at CLS.

    Args:
        images: preprocessed images [b, 3, H, W].
        layers: layer indices (default: all).
        space: "resid" — the head's write into the CLS residual, [b, n_layers, n_heads, d_model];
            "embed" — projected through the linearised ln_post and proj, [b, n_layers, n_heads, d_embed].
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    _check_cls_pooling(vit)
    layers = _check_layers(vit, layers)
    names = [act_name("cls_result", l) for l in layers] + [act_name("ln_post_scale")]
    store = _run_capturing_cls(vit, images, names)
    heads = torch.stack([store[act_name("cls_result", l)] for l in layers], dim=1)
    return heads if space == "resid" else project_to_embed(vit, heads, store[act_name("ln_post_scale")])


@dataclass
class Decomposition:
    """Named direct contributions to the image embedding.

    components: [b, n_components, d_embed]; labels: one per component ("embed", "L{l}.H{h}",
    "L{l}.attn_bias", "L{l}.mlp", "ln_post.bias"). `sum()` reproduces `encode_image`.
    """

    components: Tensor
    labels: list[str]
    n_layers: int
    n_heads: int

    def sum(self) -> Tensor:
        return self.components.sum(1)

    def __getitem__(self, label: str) -> Tensor:
        try:
            return self.components[:, self.labels.index(label)]
        except ValueError:
            raise KeyError(f"no component {label!r}; labels look like {self.labels[:3]}…") from None

    def heads(self) -> Tensor:
        """[b, n_layers, n_heads, d_embed]."""
        idx = [self.labels.index(f"L{l}.H{h}") for l in range(self.n_layers) for h in range(self.n_heads)]
        return self.components[:, idx].reshape(self.components.shape[0], self.n_layers, self.n_heads, -1)

    def norms(self):
        """Tidy DataFrame: mean L2 norm of each component over the batch (which parts write most)."""
        import pandas as pd

        return pd.DataFrame({"component": self.labels,
                             "mean_norm": self.components.norm(dim=-1).mean(0).cpu().numpy()})

    def __repr__(self) -> str:
        b, n, d = self.components.shape
        return f"Decomposition(batch={b}, components={n} [{self.n_layers}×{self.n_heads} heads + embed/bias/mlp], d_embed={d})"


@torch.no_grad()
def decompose(vit, images: Tensor) -> Decomposition:
    """Split `encode_image(images)` into embed, each head, each attention bias, each MLP and ln_post bias."""
    _check_cls_pooling(vit)
    L, H = vit.cfg.n_layers, vit.cfg.n_heads
    names = [act_name("embed"), act_name("ln_post_scale")]
    names += [act_name("cls_result", l) for l in range(L)] + [act_name("mlp_out", l) for l in range(L)]
    store = _run_capturing_cls(vit, images, names)
    b = images.shape[0]
    parts, labels = [store[act_name("embed")][:, None]], ["embed"]
    for l in range(L):
        parts += [store[act_name("cls_result", l)],
                  vit.blocks[l].attn.b_O.expand(b, 1, -1),
                  store[act_name("mlp_out", l)][:, None]]
        labels += [f"L{l}.H{h}" for h in range(H)] + [f"L{l}.attn_bias", f"L{l}.mlp"]
    resid = torch.cat(parts, dim=1)  # [b, n_components - 1, d_model]
    embed = project_to_embed(vit, resid, store[act_name("ln_post_scale")])
    beta = vit.ln_post.b @ vit.proj if vit.proj is not None else vit.ln_post.b
    components = torch.cat([embed, beta.expand(b, 1, -1)], dim=1)
    return Decomposition(components, labels + ["ln_post.bias"], L, H)
