"""The last image block at the pooled token, cached once and re-run under edits.

An edit confined to the last block's pooled (CLS) row — a head's write to CLS (`attn.hook_cls_result`),
MLP neurons at CLS, the pooled residual, ln_post or the embedding — changes nothing before that block and
nothing at the other tokens that reaches the output (the image tower pools the CLS token). So one forward
pass can store what the last block L needs at CLS:

    resid_pre[CLS]   [n, d_model]        the residual entering block L
    attn_out[CLS]    [n, d_model]        its attention output (Σ_h cls_result[h] + b_O, as the model computed it)
    cls_result       [n, heads, d_model] each head's write to CLS

and every such edit is then evaluated without a forward pass: the edited head writes change attn_out[CLS]
by Σ_h (edited − original), exactly as `Attention` applies an edit, then resid_mid[CLS], ln2, the MLP at
CLS, resid_post[CLS], ln_post and proj are recomputed through the model's own modules and hook points.
The hook fns are the ones `model.hooks(fwd_hooks=...)` takes (e.g. compiled edits), called on the CLS
row only ([n, 1, width] where the model has a token axis). Equal to a full forward within fp32 rounding
(tested); see docs/hooks.md for the hook names and docs/metrics.md (evaluation protocols) for its use.

    tail = CLSTail.capture(model, batches)                   # one pass; tail.image_embed = the clean output
    emb = tail.encode(fwd_hooks=[("blocks.5.attn.hook_cls_result", fn)])   # [n, d_embed]
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .hook_names import act_name
from .hooks import is_active

__all__ = ["CLSTail", "tail_hook_names"]

HookList = Sequence[tuple[str, Callable]]

# Hooks of block L (and after it) whose value at the pooled token is all that reaches the output.
_BLOCK_KINDS = ("cls_result", "attn_out", "resid_mid", "ln2_scale", "ln2_normalized", "mlp_pre", "mlp_post",
                "mlp_out", "resid_post")
_TOWER_KINDS = ("ln_post_scale", "ln_post_normalized", "image_embed")


def _visual(model):
    return getattr(model, "visual", model)


def tail_hook_names(model) -> tuple[str, ...]:
    """Names of the hooks `CLSTail.encode` can run: those of the last image block after its attention
    (cls_result, attn_out, resid_mid, ln2.*, mlp.*, mlp_out, resid_post), ln_post.* and hook_image_embed."""
    layer = _visual(model).cfg.n_layers - 1
    return tuple(act_name(k, layer) for k in _BLOCK_KINDS) + tuple(act_name(k) for k in _TOWER_KINDS)


def _check_tower(visual) -> None:
    if visual.cfg.pool != "tok":
        raise ValueError(f"CLSTail needs an image tower that pools the CLS token; this one pools {visual.cfg.pool!r} "
                         "(an average over the patches depends on every token of the last block): use forward passes")
    busy = [n for n in tail_hook_names(visual) + (act_name("resid_pre", visual.cfg.n_layers - 1),)
            if is_active(visual.hook_dict[n])]
    if busy:
        raise ValueError(f"hooks are already attached at {busy}: the cached pass and the recomputed tail would "
                         "apply them twice; remove them (leave the `intervene`/`apply` block) or use forward passes")


class CLSTail:
    """Cached state of the last image block at the pooled token (see the module docstring).

    Attributes:
        layer: L, the last block.
        resid_pre, attn_out: [n, d_model]; cls_result: [n, heads, d_model] (model dtype and device).
        image_embed: [n, d_embed] the clean forward's output (unnormalised), when built by `capture`.
    """

    def __init__(self, model, resid_pre: Tensor, attn_out: Tensor, cls_result: Tensor,
                 image_embed: Optional[Tensor] = None):
        self.model, self.visual = model, _visual(model)
        cfg = self.visual.cfg
        self.layer = cfg.n_layers - 1
        n = resid_pre.shape[0]
        for name, t, shape in (("resid_pre", resid_pre, (n, cfg.d_model)), ("attn_out", attn_out, (n, cfg.d_model)),
                               ("cls_result", cls_result, (n, cfg.n_heads, cfg.d_model))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        self.resid_pre, self.attn_out, self.cls_result = resid_pre, attn_out, cls_result
        self.image_embed = image_embed

    def __len__(self) -> int:
        return self.resid_pre.shape[0]

    def __repr__(self) -> str:
        return f"CLSTail(n={len(self)}, layer={self.layer}, d_model={self.visual.cfg.d_model})"

    @property
    def hook_names(self) -> tuple[str, ...]:
        """The hook names `encode` accepts (`tail_hook_names`)."""
        return tail_hook_names(self.visual)

    # ------------------------------------------------------------------ capture
    @classmethod
    @torch.no_grad()
    def capture(cls, model, batches: Union[Tensor, Iterable[Tensor]], batch_size: int = 256) -> "CLSTail":
        """One forward pass over preprocessed images (a tensor [n, 3, H, W] or an iterable of batches) storing
        block L's pooled inputs; `image_embed` keeps the pass's own output (the clean embeddings).

        Raises ValueError for an average-pooled tower or when hooks are already attached in block L or after."""
        visual = _visual(model)
        _check_tower(visual)
        if isinstance(batches, Tensor):
            batches = [batches[i:i + batch_size] for i in range(0, len(batches), batch_size)]
        layer = visual.cfg.n_layers - 1
        store: dict[str, list[Tensor]] = {"resid_pre": [], "attn_out": [], "cls_result": []}

        def keep(key: str, row: bool):
            def hook(x: Tensor, hook=None) -> Tensor:
                store[key].append((x[:, 0] if row else x).clone())
                return x  # unchanged: the pass stays the clean forward
            return hook

        hooks = [(act_name("resid_pre", layer), keep("resid_pre", True)),
                 (act_name("attn_out", layer), keep("attn_out", True)),
                 (act_name("cls_result", layer), keep("cls_result", False))]
        out = []
        with visual.hooks(fwd_hooks=hooks):
            for x in batches:
                out.append(visual(x.to(next(visual.parameters()).device)))
        if not out:
            raise ValueError("no images to capture: the gallery is empty")
        return cls(model, *(torch.cat(store[k]) for k in ("resid_pre", "attn_out", "cls_result")),
                   image_embed=torch.cat(out))

    # ------------------------------------------------------------------ re-run
    def _check_hooks(self, fwd_hooks: HookList) -> list[tuple[str, Callable]]:
        allowed = self.hook_names
        hooks = list(fwd_hooks)
        for item in hooks:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
                    and callable(item[1])):
                raise TypeError(f"fwd_hooks must be (hook_name, fn) pairs, got {item!r:.80}")
            if item[0] not in allowed:
                raise ValueError(f"CLSTail cannot run a hook at {item[0]!r}: only hooks of the last block after its "
                                 f"attention, at the pooled token, are cached ({list(allowed)}); evaluate this edit "
                                 "with a forward pass")
        return hooks

    @torch.no_grad()
    def encode(self, fwd_hooks: HookList = (), normalize: bool = False, batch_size: int = 8192) -> Tensor:
        """Image embeddings [n, d_embed] with `fwd_hooks` applied on the cached CLS row (model dtype/device).

        fwd_hooks: `(hook_name, fn)` pairs as for `model.hooks`, at names in `hook_names`; fns see the pooled
        row only: cls_result [b, heads, d_model], [b, 1, width] at block hooks, [b, width] after ln_post."""
        hooks = self._check_hooks(fwd_hooks)
        _check_tower(self.visual)
        out = []
        with self.visual.hooks(fwd_hooks=hooks):
            for start in range(0, len(self), batch_size):
                rows = slice(start, start + batch_size)
                out.append(self._tail(self.resid_pre[rows], self.attn_out[rows], self.cls_result[rows]))
        emb = torch.cat(out)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    def _tail(self, resid_pre: Tensor, attn_out: Tensor, cls: Tensor) -> Tensor:
        # The end of `Block.forward` and `HookedViT.forward` on the pooled row, through the same hook points.
        visual = self.visual
        block = visual.blocks[self.layer]
        attn_out = attn_out[:, None]  # [b, 1, d_model]
        if is_active(block.attn.hook_cls_result):
            edited = block.attn.hook_cls_result(cls)
            if edited is not cls:  # as Attention._per_head_writes: the edit enters as a delta on the CLS row
                attn_out = attn_out + (edited - cls).sum(1)[:, None]
        attn_out = block.hook_attn_out(attn_out)
        resid = block.hook_resid_mid(resid_pre[:, None] + attn_out)
        mlp_out = block.hook_mlp_out(block.mlp(block.ln2(resid)))
        resid = block.hook_resid_post(resid + mlp_out)
        pooled = visual.pool(resid)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return visual.hook_image_embed(pooled)
