"""Hooked building blocks shared by the image and the text tower.

Every intermediate value passes through a `HookPoint` whose return value is used, so an edit at any
hook changes the output. Weights keep open_clip's layout (`in_proj_weight` [3·d_model, d_model],
`out_proj_weight` [d_model, d_model]) so conversion is a plain copy; per-head views (`W_Q`, `W_O`, …)
are exposed as properties for analysis.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .hooks import is_active


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens hooks.

    hook_scale: [..., 1]  (σ = sqrt(var + eps));  hook_normalized: [..., d]  ((x − mean)/σ, before γ, β).
    Uses `F.layer_norm` unless one of its hooks is active.
    """

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if not is_active(self.hook_scale, self.hook_normalized):
            return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale)
        return x * self.w + self.b


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
}


class MLP(nn.Module):
    """c_fc → activation → c_proj.  hook_pre / hook_post: [b, pos, d_mlp]."""

    def __init__(self, d_model: int, d_mlp: int, act: str):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; supported: {sorted(ACTIVATIONS)}")
        self.act_name = act
        self.act = ACTIVATIONS[act]
        self.W_in = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(F.linear(x, self.W_in, self.b_in))
        post = self.hook_post(self.act(pre))
        return F.linear(post, self.W_out, self.b_out)


class Attention(nn.Module):
    """Multi-head self-attention with per-head hooks.

    Hooks: hook_q / hook_k / hook_v / hook_z [b, pos, head, d_head]; hook_attn_scores / hook_pattern
    [b, head, q_pos, k_pos]; hook_result [b, pos, head, d_model] (each head's write, all positions);
    hook_cls_result [b, head, d_model] (each head's write to the pooled token only — CLS for the image
    tower, the pooled EOT token for the text tower).

    Fast path: when none of q/k/v/scores/pattern/z is hooked, attention runs through fused
    `scaled_dot_product_attention`. Per-head writes are computed only when their hooks are active; an
    edit there is applied as a delta on top of the fused output projection, so a hook that returns its
    input unchanged leaves the output bit-identical.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.causal = causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj_weight = nn.Parameter(torch.empty(d_model, d_model))
        self.out_proj_bias = nn.Parameter(torch.zeros(d_model))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result", "cls_result"):
            setattr(self, f"hook_{name}", HookPoint())

    # Per-head weight views (TransformerLens layout) for analysis.
    @property
    def W_Q(self) -> Tensor:  # [head, d_model, d_head]
        return self.in_proj_weight[: self.d_model].T.reshape(self.d_model, self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def W_K(self) -> Tensor:
        return self.in_proj_weight[self.d_model : 2 * self.d_model].T.reshape(self.d_model, self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def W_V(self) -> Tensor:
        return self.in_proj_weight[2 * self.d_model :].T.reshape(self.d_model, self.n_heads, self.d_head).permute(1, 0, 2)

    @property
    def W_O(self) -> Tensor:  # [head, d_head, d_model]
        return self.out_proj_weight.T.reshape(self.n_heads, self.d_head, self.d_model)

    @property
    def b_O(self) -> Tensor:  # [d_model]
        return self.out_proj_bias

    def _explicit(self) -> bool:
        return is_active(self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern, self.hook_z)

    def forward(self, x: Tensor, pool_index: Tensor) -> Tensor:
        """x: [b, pos, d_model] (already layer-normed); pool_index: [b] position of the pooled token."""
        b, p, _ = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, p, 3, self.n_heads, self.d_head).unbind(2)
        if self._explicit():
            z = self._explicit_attention(self.hook_q(q), self.hook_k(k), self.hook_v(v))
            z = self.hook_z(z)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.causal
            ).transpose(1, 2)
        out = F.linear(z.reshape(b, p, self.d_model), self.out_proj_weight, self.out_proj_bias)
        if is_active(self.hook_result, self.hook_cls_result):
            out = self._per_head_writes(z, out, pool_index)
        return out

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.d_head)
        if self.causal:
            p = scores.shape[-1]
            mask = torch.ones(p, p, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(-1))
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def _per_head_writes(self, z: Tensor, out: Tensor, pool_index: Tensor) -> Tensor:
        rows = torch.arange(z.shape[0], device=z.device)
        W_O = self.W_O
        if is_active(self.hook_result):
            result = torch.einsum("bphe,hed->bphd", z, W_O)
            edited = self.hook_result(result)
            if edited is not result:
                out = out + (edited - result).sum(2)
            cls = edited[rows, pool_index]
        else:
            cls = torch.einsum("bhe,hed->bhd", z[rows, pool_index], W_O)
        if is_active(self.hook_cls_result):
            edited_cls = self.hook_cls_result(cls)
            if edited_cls is not cls:
                delta = torch.zeros_like(out)
                delta[rows, pool_index] = (edited_cls - cls).sum(1)
                out = out + delta
        return out


class Block(nn.Module):
    """Pre-LN transformer block with TransformerLens residual hooks ([b, pos, d_model] each)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int, act: str, eps: float, causal: bool):
        super().__init__()
        self.ln1 = LayerNorm(d_model, eps)
        self.attn = Attention(d_model, n_heads, causal)
        self.ln2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, d_mlp, act)
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, resid: Tensor, pool_index: Tensor) -> Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), pool_index))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)
