"""Hook layout: the one module that knows how hook points are named, where their token axis is, and which
token is the pooled one (see docs/hooks.md).

Names follow TransformerLens (`act_name` plays the part of its `utils.get_act_name`):

    act_name("resid_post", 3)                  -> "blocks.3.hook_resid_post"
    act_name("cls_result", 5)                  -> "blocks.5.attn.hook_cls_result"
    act_name("image_embed")                    -> "hook_image_embed"
    act_name("resid_post", 2, tower="text")    -> "text.blocks.2.hook_resid_post"

Image-tower hooks have bare names; text-tower hooks the same names under "text.".

Positions: "pooled" is the token a tower pools — the CLS token (position 0) on the image tower, the EOT token
(found from the tokens) on the text tower; "cls" is accepted everywhere as an alias and stored as "pooled".
"all" keeps every token. Some hooks hold only the pooled token already (`is_pooled_hook`): `attn.hook_cls_result`
[b, head, d_model], `ln_post.*` [b, d] / [b, 1], and the embeddings [b, d_embed].
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "act_name", "parse_hook_name", "sae_hook_name", "check_hook_name", "TOWERS", "TOWER_PREFIX", "BLOCK_KINDS",
    "TOWER_KINDS", "POSITIONS", "POSITION_ALIASES", "canonical_position", "position_axis", "select_position",
    "is_pooled_hook", "pooled_index", "stream_width", "hook_tower",
]

TOWERS = ("image", "text")
TOWER_PREFIX = {"image": "", "text": "text."}

# Short kind -> name after "blocks.{layer}.".
BLOCK_KINDS = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "attn_scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern",
    "result": "attn.hook_result", "cls_result": "attn.hook_cls_result",
    "mlp_pre": "mlp.hook_pre", "mlp_post": "mlp.hook_post",
    "ln1_scale": "ln1.hook_scale", "ln1_normalized": "ln1.hook_normalized",
    "ln2_scale": "ln2.hook_scale", "ln2_normalized": "ln2.hook_normalized",
}
_BLOCK_ALIASES = {"pre": "mlp_pre", "post": "mlp_post", "attn": "pattern", "attn_logits": "attn_scores"}  # TransformerLens'
# Short kind -> (name, towers that have it), for hooks outside the blocks.
TOWER_KINDS = {
    "embed": ("hook_embed", TOWERS),
    "patch_embed": ("hook_patch_embed", ("image",)),
    "ln_pre_scale": ("ln_pre.hook_scale", ("image",)),  # only towers with an ln_pre have these two
    "ln_pre_normalized": ("ln_pre.hook_normalized", ("image",)),
    "ln_post_scale": ("ln_post.hook_scale", ("image",)),
    "ln_post_normalized": ("ln_post.hook_normalized", ("image",)),
    "image_embed": ("hook_image_embed", ("image",)),
    "ln_final_scale": ("ln_final.hook_scale", ("text",)),
    "ln_final_normalized": ("ln_final.hook_normalized", ("text",)),
    "text_embed": ("hook_text_embed", ("text",)),
}
_KIND_OF_SUFFIX = {v: k for k, v in BLOCK_KINDS.items()}
_KIND_OF_TOWER_NAME = {name: k for k, (name, _) in TOWER_KINDS.items()}
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

POSITIONS = ("pooled", "all")
POSITION_ALIASES = {"cls": "pooled"}
# Stream hooks (layout [b, pos, d] or [b, d], last axis a feature axis): the hooks a direction or an SAE can act on.
_D_MODEL_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "embed", "ln1_normalized",
                  "ln2_normalized", "ln_pre_normalized", "ln_final_normalized", "ln_post_normalized")
_D_MLP_KINDS = ("mlp_pre", "mlp_post")
_D_EMBED_KINDS = ("image_embed", "text_embed")
_POOLED_KINDS = ("cls_result", "ln_post_scale", "ln_post_normalized", "image_embed", "text_embed")
_QUERY_ROW_KINDS = ("attn_scores", "pattern")  # [b, head, q_pos, k_pos]: the token axis is the query axis


def _all_kinds() -> list[str]:
    return sorted(BLOCK_KINDS) + sorted(TOWER_KINDS)


def _check_tower(tower: str) -> str:
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}; expected one of {list(TOWERS)}")
    return tower


def act_name(kind: str, layer: Optional[int] = None, tower: str = "image") -> str:
    """The hook name for `kind` (a short kind such as "resid_post", "cls_result", "z", "image_embed", or a full
    name such as "blocks.3.hook_resid_post", returned as it is once checked), at `layer`, in `tower`.

    A name after the block ("hook_resid_post", "attn.hook_z") with a layer also works. Raises ValueError for an
    unknown kind (listing the kinds), a block kind without a layer, or a kind the tower does not have.
    """
    if not isinstance(kind, str):
        raise ValueError(f"hook kind must be a string such as 'resid_post', got {type(kind).__name__}")
    _check_tower(tower)
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise ValueError(f"layer must be a non-negative int or None, got {layer!r}")
    kind = _BLOCK_ALIASES.get(kind, kind)
    if kind in BLOCK_KINDS or (layer is not None and kind in _KIND_OF_SUFFIX):
        if layer is None:
            raise ValueError(f"hook kind {kind!r} lives in a block: pass layer=..., e.g. act_name({kind!r}, 0)")
        return f"{TOWER_PREFIX[tower]}blocks.{layer}.{BLOCK_KINDS.get(kind, kind)}"
    if kind in TOWER_KINDS:
        name, towers = TOWER_KINDS[kind]
        if tower not in towers:
            raise ValueError(f"hook kind {kind!r} exists only in the {towers[0]} tower, not the {tower} tower")
        if layer is not None:
            raise ValueError(f"hook kind {kind!r} is not in a block; call act_name({kind!r}) without a layer")
        return TOWER_PREFIX[tower] + name
    if "hook_" in kind:
        parse_hook_name(kind)  # a full name: check that it is well formed
        if layer is not None:
            raise ValueError(f"{kind!r} is a full hook name; pass it without a layer")
        return kind
    close = difflib.get_close_matches(kind, _all_kinds(), n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise ValueError(f"unknown hook kind {kind!r}; {hint}kinds: {_all_kinds()} (or a full hook name)")


def parse_hook_name(name: str) -> tuple[str, Optional[int], str]:
    """(tower, layer or None, short kind) of a model hook name; ValueError for names not in the layout."""
    tower, bare = ("text", name[len("text."):]) if name.startswith("text.") else ("image", name)
    m = _BLOCK_NAME.match(bare)
    if m and m.group(2) in _KIND_OF_SUFFIX:
        return tower, int(m.group(1)), _KIND_OF_SUFFIX[m.group(2)]
    kind = _KIND_OF_TOWER_NAME.get(bare)
    if kind is not None and tower in TOWER_KINDS[kind][1]:
        return tower, None, kind
    raise ValueError(f"{name!r} is not a hook name of the hooked CLIP layout (see docs/hooks.md); build names "
                     "with act_name(kind, layer, tower)")


def hook_tower(name: str) -> str:
    """"text" for hooks under "text.", else "image"."""
    return "text" if name.startswith(TOWER_PREFIX["text"]) else "image"


def sae_hook_name(site: str, kind: str = "sae_acts_post") -> str:
    """Hook of an SAE spliced in at `site` (sae_lens names: hook_sae_acts_post holds the latents)."""
    return f"{site}.hook_{kind}"


def check_hook_name(model, name: str, tower: Optional[str] = None, extra: Sequence[str] = ()) -> str:
    """Return `name` if `model` has that hook point (or it is one of `extra`, other names the caller accepts);
    otherwise raise ValueError naming it, with the closest valid names as a hint.

    tower: "image" or "text" to require a hook of that tower (hints then come from that tower only).
    """
    if not isinstance(name, str):
        raise TypeError(f"hook names are strings, got {name!r} of type {type(name).__name__}")
    if tower is not None:
        _check_tower(tower)
    names = [n for n in model.hook_dict if tower is None or hook_tower(n) == tower] + list(extra)
    if name in extra:
        return name
    if name in model.hook_dict:
        if tower is not None and hook_tower(name) != tower:
            raise ValueError(f"{name!r} is a {hook_tower(name)}-tower hook, but this needs a hook of the {tower} "
                             "tower (text-tower hooks start with 'text.')")
        return name
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    where = f" {tower}-tower" if tower is not None else ""
    raise ValueError(f"no{where} hook point named {name!r} in this model{hint}. Valid names are in model.hook_dict "
                     "(text-tower hooks start with 'text.'); act_name(kind, layer, tower) builds them")


# ---------------------------------------------------------------------------------------------- positions
def canonical_position(position, allow_int: bool = False) -> Union[str, int]:
    """"pooled" | "all" (| an int token index when allow_int); "cls" becomes "pooled"."""
    if isinstance(position, str):
        position = POSITION_ALIASES.get(position, position)
        if position in POSITIONS:
            return position
    elif allow_int and isinstance(position, int) and not isinstance(position, bool):
        return position
    extra = " or an int token index" if allow_int else ""
    raise ValueError(f"unknown position {position!r}; expected one of {list(POSITIONS)}{extra} "
                     "('cls' is accepted as an alias of 'pooled')")


def is_pooled_hook(name: str, ndim: Optional[int] = None) -> bool:
    """True for hooks that hold only the pooled token (no token axis). ln_post is on the pooled token for
    token-pooled towers; give `ndim` to recognise an average-pooled tower's ln_post [b, patches, d].
    The hooks of an SAE spliced at a site (`{site}.hook_sae_*`) have the site's layout."""
    bare = name.removeprefix("text.").split(".hook_sae_")[0]
    if bare.startswith("ln_post.") and ndim == 3:
        return False
    return bare.endswith("attn.hook_cls_result") or bare in ("hook_image_embed", "hook_text_embed",
                                                             "ln_post.hook_scale", "ln_post.hook_normalized")


def position_axis(name: str, ndim: Optional[int] = None) -> Optional[int]:
    """Axis of a hook's tensor that indexes tokens; None when the hook has none (pooled hooks).

    Attention patterns/scores [b, head, q, k] index tokens by the query axis (2).
    """
    if is_pooled_hook(name, ndim):
        return None
    if name.endswith(("attn.hook_pattern", "attn.hook_attn_scores")):
        return 2
    return 1


def pooled_index(model, tower: str = "image", tokens: Optional[Tensor] = None) -> Optional[Tensor]:
    """Position of the pooled token: None on the image tower (the CLS token, position 0); on the text tower the
    EOT position of each sequence, [b], computed from `tokens` [b, n_ctx]."""
    if _check_tower(tower) == "image":
        return None
    if tokens is None:
        raise ValueError("the text tower's pooled token depends on the tokens; pass tokens=...")
    text = getattr(model, "text", model)
    return text.pool_index(tokens)


def select_position(t: Tensor, name: str, position, pooled: Optional[Tensor] = None) -> Tensor:
    """Reduce a hook tensor's token axis.

    position: "all" keeps it; "pooled" (alias "cls") takes the pooled token — position 0, or `pooled` [b]
    (per-sequence indices, e.g. from `pooled_index`); an int takes that position (negative counts from the end).
    Pooled hooks are returned whole.
    """
    position = canonical_position(position, allow_int=True)
    axis = position_axis(name, t.ndim)
    if axis is None or position == "all":
        return t
    if position == "pooled":
        if name.removeprefix("text.") == "hook_patch_embed":
            raise ValueError("hook_patch_embed holds patches only (no CLS token); use position='all' or an int "
                             "patch index, or 'hook_embed' (CLS at position 0)")
        if pooled is None:
            return t.select(axis, 0)
        rows = torch.arange(t.shape[0], device=t.device)
        idx = pooled.to(t.device)
        return t[rows, idx] if axis == 1 else t[rows, :, idx]
    n = t.shape[axis]
    if not -n <= position < n:
        raise ValueError(f"position {position} is out of range for {name} of shape {tuple(t.shape)} "
                         f"({n} positions): use 0..{n - 1}, a negative index, 'pooled' or 'all'")
    return t.select(axis, position)


# ---------------------------------------------------------------------------------------------- widths
def stream_width(name: str, cfg) -> int:
    """Feature width of a stream hook ([b, pos, d] or [b, d]) of the tower with config `cfg`.

    ValueError for hooks with another layout (attention tensors, LayerNorm scales, patch embeddings)."""
    try:
        kind = parse_hook_name(name)[2]
    except ValueError:
        kind = None
    if kind in _D_EMBED_KINDS:
        return cfg.d_embed if cfg.d_embed is not None else cfg.d_model
    if kind in _D_MLP_KINDS:
        return cfg.d_mlp
    if kind in _D_MODEL_KINDS:
        return cfg.d_model
    raise ValueError(
        f"hook {name!r} is not a stream hook with layout [b, pos, d] or [b, d]; directions and SAEs can act on "
        "blocks.{l}.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out, mlp.hook_pre/post, ln*.hook_normalized, "
        "hook_embed, hook_image_embed or text.hook_text_embed"
    )
