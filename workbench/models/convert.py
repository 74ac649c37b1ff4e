"""Convert instantiated open_clip towers into hooked towers.

Every configuration value is read from the modules themselves (heads from `attn.num_heads`, activation
from the module type, LayerNorm eps, `ln_pre` presence, pool type, projection). Unsupported towers raise
`UnsupportedModelError` naming the tower type and what is supported.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import TowerConfig
from .text import HookedTextTransformer
from .vit import HookedViT

SUPPORTED = (
    "open_clip CLIP / CustomTextCLIP with a VisionTransformer image tower (token or average pooling, no "
    "attentional pooler) and an open_clip TextTransformer (causal or bidirectional, no CoCa cls token), "
    "built from standard ResidualAttentionBlocks (nn.MultiheadAttention, optional LayerScale)"
)


class UnsupportedModelError(TypeError):
    """The model (or one of its towers) uses an architecture the hooked implementation does not cover."""


def _unsupported(what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{what} is not supported. Supported: {SUPPORTED}.")


def _activation_name(act: nn.Module) -> str:
    name = type(act).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    raise _unsupported(f"MLP activation {name}")


def _block_config(blocks: nn.ModuleList) -> dict:
    from open_clip.transformer import ResidualAttentionBlock

    first = blocks[0]
    for block in blocks:
        if type(block) is not ResidualAttentionBlock:
            raise _unsupported(f"transformer block type {type(block).__name__}")
        if hasattr(block, "ln_1_kv"):
            raise _unsupported("cross-attention block")
        if not isinstance(block.attn, nn.MultiheadAttention) or not block.attn._qkv_same_embed_dim:
            raise _unsupported(f"attention module {type(block.attn).__name__}")
        if block.attn.bias_k is not None or block.attn.in_proj_bias is None:
            raise _unsupported("attention without input bias or with add_bias_kv")
    return dict(
        d_model=first.attn.embed_dim,
        n_layers=len(blocks),
        n_heads=first.attn.num_heads,
        d_mlp=first.mlp.c_fc.out_features,
        act=_activation_name(first.mlp.gelu),
        eps=first.ln_1.eps,  # informative; each LayerNorm keeps its own eps on conversion
    )


def _layer_scale(ls: nn.Module) -> Tensor | None:
    if isinstance(ls, nn.Identity):
        return None
    if type(ls).__name__ == "LayerScale":
        return ls.gamma.detach()
    raise _unsupported(f"layer scale module {type(ls).__name__}")


@torch.no_grad()
def _copy_blocks(dst: nn.ModuleList, src: nn.ModuleList) -> None:
    """Copy open_clip block weights; LayerScale γ is folded into the output projections (exact up to rounding)."""
    for ours, theirs in zip(dst, src):
        _copy_layernorm(ours.ln1, theirs.ln_1)
        _copy_layernorm(ours.ln2, theirs.ln_2)
        a = theirs.attn
        ours.attn.in_proj_weight.copy_(a.in_proj_weight), ours.attn.in_proj_bias.copy_(a.in_proj_bias)
        W_O, b_O = a.out_proj.weight.clone(), a.out_proj.bias.clone()
        W_out, b_out = theirs.mlp.c_proj.weight.clone(), theirs.mlp.c_proj.bias.clone()
        if (g := _layer_scale(theirs.ls_1)) is not None:
            W_O, b_O = g[:, None] * W_O, g * b_O
        if (g := _layer_scale(theirs.ls_2)) is not None:
            W_out, b_out = g[:, None] * W_out, g * b_out
        ours.attn.out_proj_weight.copy_(W_O), ours.attn.out_proj_bias.copy_(b_O)
        ours.mlp.W_in.copy_(theirs.mlp.c_fc.weight), ours.mlp.b_in.copy_(theirs.mlp.c_fc.bias)
        ours.mlp.W_out.copy_(W_out), ours.mlp.b_out.copy_(b_out)


def _check_layernorm(ln: nn.Module, where: str) -> None:
    if not isinstance(ln, nn.LayerNorm) or not ln.elementwise_affine or ln.bias is None:
        raise _unsupported(f"{where} of type {type(ln).__name__}")


def _copy_layernorm(ours: nn.Module, theirs: nn.LayerNorm) -> None:
    _check_layernorm(theirs, "LayerNorm")
    ours.w.copy_(theirs.weight), ours.b.copy_(theirs.bias)
    ours.eps = theirs.eps


@torch.no_grad()
def convert_visual(visual: nn.Module) -> HookedViT:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise _unsupported(f"image tower {type(visual).__name__}")
    if getattr(visual, "attn_pool", None) is not None:
        raise _unsupported("image tower with an attentional pooler (attn_pool)")
    if visual.pool_type not in ("tok", "avg"):
        raise _unsupported(f"image pool_type {visual.pool_type!r}")
    if visual.conv1.bias is not None:
        raise _unsupported("patch embedding with bias")
    ln_pre = not isinstance(visual.ln_pre, nn.Identity)
    if ln_pre:
        _check_layernorm(visual.ln_pre, "ln_pre")
    _check_layernorm(visual.ln_post, "ln_post")
    blocks = _block_config(visual.transformer.resblocks)
    cfg = TowerConfig(
        **blocks,
        d_embed=None if visual.proj is None else visual.proj.shape[1],
        n_ctx=visual.positional_embedding.shape[0],
        pool=visual.pool_type,
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        ln_pre=ln_pre,
        final_ln_after_pool=bool(visual.final_ln_after_pool),
    )
    model = HookedViT(cfg)
    model.conv1_weight.copy_(visual.conv1.weight)
    model.class_embedding.copy_(visual.class_embedding)
    model.positional_embedding.copy_(visual.positional_embedding)
    if ln_pre:
        _copy_layernorm(model.ln_pre, visual.ln_pre)
    _copy_layernorm(model.ln_post, visual.ln_post)
    if visual.proj is not None:
        model.proj.copy_(visual.proj)
    _copy_blocks(model.blocks, visual.transformer.resblocks)
    return model.to(visual.class_embedding.dtype)


def _text_parts(clip: nn.Module) -> dict:
    """The text-tower modules of a CLIP (attributes on the model) or CustomTextCLIP (`model.text`)."""
    from open_clip.transformer import TextTransformer

    if hasattr(clip, "text"):
        text = clip.text
        if not isinstance(text, TextTransformer):
            raise _unsupported(f"text tower {type(text).__name__}")
        if text.cls_emb is not None or text.use_pad_mask:
            raise _unsupported("text tower with a CoCa cls token or a padding mask")
        return dict(
            transformer=text.transformer, token_embedding=text.token_embedding,
            positional_embedding=text.positional_embedding, ln_final=text.ln_final,
            text_projection=text.text_projection, pool=text.pool_type, eos_id=text.eos_id, attn_mask=text.attn_mask,
        )
    return dict(
        transformer=clip.transformer, token_embedding=clip.token_embedding,
        positional_embedding=clip.positional_embedding, ln_final=clip.ln_final,
        text_projection=clip.text_projection, pool=clip.text_pool_type,
        eos_id=getattr(clip, "text_eos_id", None), attn_mask=clip.attn_mask,
    )


def _is_causal_mask(mask: Tensor | None, n: int) -> bool:
    if mask is None:
        return False
    expected = torch.full((n, n), float("-inf")).triu(1)
    if mask.shape != (n, n) or not torch.equal(mask.float().cpu(), expected):
        raise _unsupported("text attention mask that is neither causal nor absent")
    return True


@torch.no_grad()
def convert_text(clip: nn.Module) -> HookedTextTransformer:
    parts = _text_parts(clip)
    if parts["pool"] not in ("argmax", "eos", "first", "last"):
        raise _unsupported(f"text pool_type {parts['pool']!r}")
    _check_layernorm(parts["ln_final"], "ln_final")
    blocks = _block_config(parts["transformer"].resblocks)
    proj = parts["text_projection"]
    if isinstance(proj, nn.Linear):
        proj_w, proj_b = proj.weight.T, proj.bias
    else:
        proj_w, proj_b = proj, None
    n_ctx = parts["positional_embedding"].shape[0]
    cfg = TowerConfig(
        **blocks,
        d_embed=None if proj_w is None else proj_w.shape[1],
        n_ctx=n_ctx,
        pool=parts["pool"],
        causal=_is_causal_mask(parts["attn_mask"], n_ctx),
        vocab_size=parts["token_embedding"].num_embeddings,
        eos_id=parts["eos_id"],
    )
    model = HookedTextTransformer(cfg)
    model.token_embedding.copy_(parts["token_embedding"].weight)
    model.positional_embedding.copy_(parts["positional_embedding"])
    _copy_layernorm(model.ln_final, parts["ln_final"])
    if proj_w is not None:
        model.text_projection.copy_(proj_w)
    if proj_b is not None:
        model.text_projection_bias = nn.Parameter(proj_b.detach().clone())
    _copy_blocks(model.blocks, parts["transformer"].resblocks)
    return model.to(parts["positional_embedding"].dtype)
