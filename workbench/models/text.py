"""HookedTextTransformer: the open_clip text tower with TransformerLens hooks under the prefix `text.`."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .components import Block, LayerNorm
from .config import TowerConfig
from .hook_names import TOWER_PREFIX
from .vit import HookedTower


class HookedTextTransformer(HookedTower):
    """Text tower.  forward(tokens [b, n_ctx] int64) → text embedding [b, d_embed] (before normalisation).

    Hooks: text.hook_embed [b, pos, d_model] (token + positional embedding); text.blocks.{l}.* (causal
    mask kept); text.ln_final.hook_scale / hook_normalized [b, pos, …]; text.hook_text_embed [b, d_embed].
    `attn.hook_cls_result` refers to the pooled token (the EOT token for argmax pooling).
    """

    hook_prefix = TOWER_PREFIX["text"]

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.token_embedding = nn.Parameter(torch.empty(cfg.vocab_size, d))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_ctx, d))
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.d_mlp, cfg.act, cfg.eps, causal=cfg.causal) for _ in range(cfg.n_layers)
        )
        self.ln_final = LayerNorm(d, cfg.eps)
        self.text_projection = nn.Parameter(torch.empty(d, cfg.d_embed)) if cfg.d_embed is not None else None
        self.text_projection_bias = None  # set by conversion when open_clip uses a Linear projection with bias
        self.hook_embed = HookPoint()
        self.hook_text_embed = HookPoint()
        self.setup()

    def pool_index(self, tokens: Tensor) -> Tensor:
        """Position of the pooled token per sequence, [b]."""
        b, n = tokens.shape
        if self.cfg.pool == "argmax":
            return tokens.argmax(dim=-1)
        if self.cfg.pool == "eos":
            return (tokens == self.cfg.eos_id).int().argmax(dim=-1)
        if self.cfg.pool == "first":
            return torch.zeros(b, dtype=torch.long, device=tokens.device)
        return torch.full((b,), n - 1, dtype=torch.long, device=tokens.device)

    def unknown_token_mask(self) -> Tensor:
        """bool [vocab]: tokens whose embedding row is all zero, i.e. never trained (the shipped model's
        checkpoint stores only the rows of tokens seen in training). Cached until the weights change."""
        emb = self.token_embedding
        state = (emb.data_ptr(), emb._version, emb.device)
        if getattr(self, "_unknown_cache", (None,))[0] != state:
            with torch.no_grad():
                self._unknown_cache = (state, (emb == 0).all(dim=1).cpu())
        return self._unknown_cache[1]

    def _check_tokens(self, tokens: Tensor) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(
                f"expected token ids of shape [batch, {self.cfg.n_ctx}] (int64), got {got}; "
                "use `model.tokenize(list_of_strings)` or pass strings to `model.encode_text`"
            )
        if tokens.shape[1] != self.cfg.n_ctx:
            raise ValueError(f"expected context length {self.cfg.n_ctx}, got {tokens.shape[1]} tokens per sequence")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}), got [{tokens.min()}, {tokens.max()}]")

    def forward(self, tokens: Tensor) -> Tensor:
        self._check_tokens(tokens)
        x = self.token_embedding[tokens] + self.positional_embedding
        x = self.hook_embed(x)
        pool_index = self.pool_index(tokens)
        for block in self.blocks:
            x = block(x, pool_index)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), pool_index]
        if self.text_projection is not None:
            pooled = pooled @ self.text_projection
            if self.text_projection_bias is not None:
                pooled = pooled + self.text_projection_bias
        return self.hook_text_embed(pooled)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"HookedTextTransformer(layers={c.n_layers}, d_model={c.d_model}, heads={c.n_heads}, act={c.act}, "
            f"n_ctx={c.n_ctx}, vocab={c.vocab_size}, pool={c.pool}, causal={c.causal}, d_embed={c.d_embed}, "
            f"hooks={len(self.hook_dict)})"
        )
