"""Tower configurations, read from instantiated open_clip modules (never guessed from a model name)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class TowerConfig:
    """Shape and architecture of one transformer tower.

    `pool` is "tok" (CLS token) or "avg" for the image tower, and "argmax" | "eos" | "first" | "last" for the
    text tower. `n_ctx` is the number of positions (patches + CLS, or the text context length).
    """

    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int
    d_embed: Optional[int]  # output of the projection; None when the tower has none
    act: str  # "gelu" | "gelu_tanh" | "quick_gelu"
    eps: float
    n_ctx: int
    pool: str
    causal: bool = False
    # image tower only
    image_size: Optional[tuple[int, int]] = None
    patch_size: Optional[tuple[int, int]] = None
    ln_pre: bool = True
    final_ln_after_pool: bool = False
    # text tower only
    vocab_size: Optional[int] = None
    eos_id: Optional[int] = None

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)
