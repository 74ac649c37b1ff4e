"""HookedViT: the open_clip VisionTransformer image tower with TransformerLens hooks."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from .components import Block, LayerNorm
from .config import TowerConfig
from .hook_names import TOWER_PREFIX
from .preprocess import check_finite


class HookedTower(HookedRootModule):
    """A HookedRootModule whose hook names carry a fixed prefix ("" for the image tower, "text." for text),
    so the same name is used whether the tower is run alone or inside `HookedCLIP`."""

    hook_prefix = TOWER_PREFIX["image"]

    def setup(self):
        super().setup()
        if self.hook_prefix:
            for module in self.mod_dict.values():
                module.name = self.hook_prefix + module.name
            self.mod_dict = {self.hook_prefix + k: v for k, v in self.mod_dict.items()}
            self.hook_dict = {self.hook_prefix + k: v for k, v in self.hook_dict.items()}

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)


class HookedViT(HookedTower):
    """Image tower.  forward(images [b, 3, H, W]) → image embedding [b, d_embed] (before normalisation).

    Hooks (TransformerLens names): hook_patch_embed [b, n_patches, d_model]; hook_embed [b, pos, d_model]
    (residual stream start, after ln_pre, CLS at position 0); blocks.{l}.*; ln_post.hook_scale [b, 1] and
    ln_post.hook_normalized [b, d_model] (on the pooled token); hook_image_embed [b, d_embed].
    """

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1_weight = nn.Parameter(torch.empty(d, 3, *cfg.patch_size))
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_ctx, d))
        self.ln_pre = LayerNorm(d, cfg.eps) if cfg.ln_pre else None
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.d_mlp, cfg.act, cfg.eps, causal=False) for _ in range(cfg.n_layers)
        )
        self.ln_post = LayerNorm(d, cfg.eps)
        self.proj = nn.Parameter(torch.empty(d, cfg.d_embed)) if cfg.d_embed is not None else None
        self.hook_patch_embed = HookPoint()
        self.hook_embed = HookPoint()
        self.hook_image_embed = HookPoint()
        self.setup()

    def _check_images(self, images: Tensor) -> None:
        """The input rule of docs/inputs.md: a float batch [b, 3, H, W] from the model's preprocess, finite."""
        expected = (3, *self.cfg.image_size)
        if not isinstance(images, Tensor):
            raise TypeError(f"expected preprocessed images (a float tensor [batch, {', '.join(map(str, expected))}]), "
                            f"got {type(images).__name__}; run them through `model.preprocess` first (it takes "
                            "PIL images, lists of them, uint8 tensors and float tensors in [0, 1])")
        if images.ndim != 4 or tuple(images.shape[1:]) != expected or not images.is_floating_point():
            got = f"{tuple(images.shape)} {images.dtype}"
            raise ValueError(
                f"expected preprocessed images of shape [batch, {', '.join(map(str, expected))}] (float), got {got}; "
                "apply the model's `preprocess` (e.g. `model.preprocess(pil_images)`), which also resizes"
            )
        check_finite(images, "the images")

    def embed(self, images: Tensor) -> Tensor:
        """images [b, 3, H, W] → residual stream start [b, 1 + n_patches, d_model]."""
        self._check_images(images)
        x = F.conv2d(images.to(self.conv1_weight.dtype), self.conv1_weight, stride=self.cfg.patch_size)
        x = self.hook_patch_embed(x.flatten(2).transpose(1, 2))
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        return self.hook_embed(x)

    def pool(self, resid: Tensor) -> Tensor:
        """Final residual [b, pos, d_model] → pooled, normalised [b, d_model] (ln_post applied)."""
        if self.cfg.pool == "tok":
            return self.ln_post(resid[:, 0])
        if self.cfg.final_ln_after_pool:
            return self.ln_post(resid[:, 1:].mean(1))
        return self.ln_post(resid[:, 1:]).mean(1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.embed(images)
        pool_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for block in self.blocks:
            x = block(x, pool_index)
        pooled = self.pool(x)
        if self.proj is not None:
            pooled = pooled @ self.proj
        return self.hook_image_embed(pooled)

    # Decomposition API: implemented in decompose.py, exposed here for discoverability.
    def head_contributions(self, images: Tensor, layers=None, space: str = "embed") -> Tensor:
        from .decompose import head_contributions

        return head_contributions(self, images, layers=layers, space=space)

    def decompose(self, images: Tensor):
        from .decompose import decompose

        return decompose(self, images)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedViT(layers={c.n_layers}, d_model={c.d_model}, heads={c.n_heads}, d_mlp={c.d_mlp}, "
            f"act={c.act}, image={c.image_size}, patch={c.patch_size}, pool={c.pool}, d_embed={c.d_embed}, "
            f"hooks={len(self.hook_dict)})"
        )
