"""`Edit`: one intervention on one target of a hooked CLIP — validation, resolution to a hook, and its JSON form.

An `Edit` is the single source of truth for ablation, steering and the JSON `InterventionSpec`: the
constructors in `ablate` / `steer` and `InterventionSpec.load` all produce Edits, and `compile.edits_to_hooks`
is the only place that turns them into `(hook_name, fn)` pairs. See docs/interventions.md.

Targets and the hooks they act on (hook names from `workbench.models.hook_names`, under "text." for the text tower):

    target      head   position  hook                                acts on
    head        h      pooled    blocks.{l}.attn.hook_cls_result     [:, h, :]          [b, d_model]
    head        h      all       blocks.{l}.attn.hook_result         [:, :, h, :]       [b, pos, d_model]
    neuron      h      pooled/all  (same as head)                    [..., h, index]    head-output coordinates
    neuron      None   pooled    blocks.{l}.mlp.hook_post            [:, 0, index]      MLP neurons at CLS
    neuron      None   all       blocks.{l}.mlp.hook_post            [:, :, index]
    direction   -      pooled/all  `hook` or blocks.{l}.hook_resid_post  [:, 0, :] / [:, :, :] ([b, d] hooks: all)
    sae_latent  -      pooled/all  SAE at `hook` or blocks.{l}.hook_resid_post; latents z[..., index]

Ops are listed in `ops.py`. "pooled" (alias "cls") is the CLS token on the image tower; on the text tower the
pooled (EOT) position depends on the tokens, so it is supported for head/neuron-of-head targets
(hook_cls_result is the pooled token there) and on [b, d] hooks such as `text.hook_text_embed`; elsewhere use
position="all".
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

import torch
from torch import Tensor

from workbench.models.hook_names import (TOWERS, act_name, canonical_position, check_hook_name, hook_tower,
                                         is_pooled_hook, sae_hook_name, stream_width)

from .errors import EditError, EditTargetError
from .ops import TARGETS, get_op, op_names
from .values import Value, canonical_index, canonical_value, is_finite_number, is_int, is_number, value_from_json

__all__ = ["Edit", "TARGETS", "TOWERS", "spliced"]

_TENSOR_FIELDS = ("value", "reference")


@dataclass(eq=False)
class Edit:
    """One intervention: *what* to change (target, layer, head, index, position, tower, hook) and *how* (op,
    value, scale, reference).

    Fields:
        target: "head" | "neuron" | "sae_latent" | "direction".
        op: a registered op (`ops.op_names()`): "zero", "mean", "replace", "scale", "set", "add", "project_out",
            "modulate", "rank_modulate".
        layer: block index (required except for direction / sae_latent edits that name a `hook`).
        head: attention head (required for target="head"; for target="neuron" selects coordinates of that
            head's output instead of MLP neurons).
        index: neuron / latent index (int or list of ints), for target="neuron" | "sae_latent" (a modulate edit
            on SAE latents may leave it out to act on every latent).
        position: "pooled" (the pooled token; "cls" is accepted and stored as "pooled") or "all".
        value: None (zero), a float, or a tensor: [width] for a vector, [pos, width] per position
            (position="all" only). `width` is d_model for heads, the hook's width for directions, len(index)
            for neurons/latents (d_sae without index). For scale it is α; for project_out the direction;
            for modulate the modulation M.
        tower: "image" | "text".
        hook: explicit hook name for direction / sae_latent edits (e.g. "text.hook_text_embed").
        scale: multiplies `value` for add and the removed component for project_out (1.0 elsewhere).
        reference: modulate's m in M ⊙ z + (1 − M) ⊙ m (None = 0); a float or a tensor shaped like value.

    Values are stored as Python floats or float32 CPU tensors, so an Edit round-trips through JSON and
    safetensors bit-exactly.
    """

    target: str
    op: str
    layer: Optional[int] = None
    head: Optional[int] = None
    index: Union[None, int, tuple[int, ...]] = None
    position: str = "pooled"
    value: Value = None
    tower: str = "image"
    hook: Optional[str] = None
    scale: float = 1.0
    reference: Value = None

    def __post_init__(self):
        if not isinstance(self.target, str) or self.target not in TARGETS:
            raise EditError(f"unknown target {self.target!r}; expected one of {list(TARGETS)}")
        spec = get_op(self.op)
        try:
            self.position = canonical_position(self.position)
        except ValueError as err:
            raise EditError(str(err)) from None
        if not isinstance(self.tower, str) or self.tower not in TOWERS:
            raise EditError(f"unknown tower {self.tower!r}; expected one of {list(TOWERS)}")
        if self.target not in spec.targets:
            raise EditError(f"op {self.op!r} is not available for target {self.target!r}; "
                            f"use one of {op_names(self.target)}")
        for name in ("layer", "head"):
            got = getattr(self, name)
            if got is not None and (not is_int(got) or got < 0):
                raise EditError(f"{name} must be a non-negative int or None, got {got!r}")
        self.index = canonical_index(self.index)
        self.value = canonical_value(self.value)
        self.reference = canonical_value(self.reference, "reference")
        if not is_finite_number(self.scale):
            raise EditError(f"scale must be a finite number, got {self.scale!r}")
        self.scale = float(self.scale)
        if self.hook is not None and (not isinstance(self.hook, str) or not self.hook):
            raise EditError(f"hook must be a non-empty hook name or None, got {self.hook!r}")
        self._check_fields()
        self._check_value()

    @property
    def op_spec(self):
        """The registered `ops.Op` of this edit."""
        return get_op(self.op)

    def _check_fields(self) -> None:
        t, spec = self.target, self.op_spec
        if t in ("head", "neuron"):
            if self.layer is None:
                raise EditError(f"a {t} edit needs `layer`")
            if self.hook is not None:
                raise EditError(f"`hook` is only for direction/sae_latent edits; a {t} edit's hook follows from layer/head")
        if t == "head":
            if self.head is None:
                raise EditError("a head edit needs `head`")
            if self.index is not None:
                raise EditError("a head edit takes no `index`; to edit coordinates of a head's output "
                                "use target='neuron' with head=...")
        if self.index is None and (t == "neuron" or (t == "sae_latent" and not spec.latents_without_index)):
            raise EditError(f"a {t} edit needs `index` (an int or a list of ints)")
        if t in ("direction", "sae_latent"):
            if self.head is not None:
                raise EditError(f"a {t} edit takes no `head`")
            if (self.layer is None) == (self.hook is None):
                raise EditError(f"a {t} edit needs exactly one of `layer` (→ blocks.{{layer}}.hook_resid_post) or `hook`")
            if self.hook is not None and hook_tower(self.hook) != self.tower:
                raise EditError(f"hook {self.hook!r} belongs to the {hook_tower(self.hook)} tower but the edit says "
                                f"tower={self.tower!r}")
        if t == "direction" and self.index is not None:
            raise EditError("a direction edit takes no `index`; the direction is the whole `value` vector")
        if self.scale != 1.0 and not spec.uses_scale:
            users = "/".join(n for n in op_names() if get_op(n).uses_scale)
            raise EditError(f"scale={self.scale} only applies to {users}; for op {self.op!r} leave it at 1.0")
        if self.reference is not None and not spec.uses_reference:
            users = "/".join(n for n in op_names() if get_op(n).uses_reference)
            raise EditError(f"reference only applies to {users}; op {self.op!r} takes none")

    def _check_value(self) -> None:
        v, spec = self.value, self.op_spec
        if not spec.needs_value:
            if v is not None:
                raise EditError(f"op {self.op!r} takes no value")
            return
        if v is None:
            raise EditError(f"op {self.op!r} needs a value ({spec.value_hint})")
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            if name == "value" and spec.value_rows:
                continue  # its rows are data, not positions (checked by the op)
            if isinstance(t, Tensor) and t.ndim == 2 and self.position != "all":
                raise EditError(f"a per-position {name} [pos, d] (got {tuple(t.shape)}) needs position='all'")
        if spec.vector_only and (not isinstance(v, Tensor) or v.ndim != 1):
            raise EditError(f"op {self.op!r} needs a vector [d] as value ({spec.value_hint})")
        if spec.vector_on_head and self.target == "head" and not isinstance(v, Tensor):
            raise EditError(f"op {self.op!r} on a head needs a vector [d_model] (e.g. a mean or class prototype), "
                            "got a scalar")
        if spec.check is not None:
            spec.check(v)

    # ------------------------------------------------------------------ identity
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Edit):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None  # mutable value tensor

    def describe(self) -> str:
        """Short human-readable label, e.g. 'image L2H3 pooled replace[64]'."""
        where = self.hook if self.hook else f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        if self.target == "neuron" and self.head is None:
            where += " mlp"
        if self.index is not None:
            where += f"[{self.index}]" if is_int(self.index) else f"[{','.join(map(str, self.index))}]"
        if self.target == "sae_latent":
            where += " latent" if self.index is not None else " latents"
        text = f"{self.tower} {where} {self.position} {self.op}{_short(self.value)}"
        if self.reference is not None:
            text += f" ref{_short(self.reference)}"
        return text + (f" x{self.scale:g}" if self.scale != 1.0 else "")

    def __repr__(self) -> str:
        return f"Edit({self.describe()})"

    # ------------------------------------------------------------------ JSON form
    def to_dict(self, tensor_to_json: Optional[Callable[[str, Tensor], Any]] = None) -> dict:
        """JSON-ready dict (keys as the fields; `hook`, `scale`, `reference` only when set).

        Tensors become nested lists, or whatever `tensor_to_json(field, tensor)` returns (e.g. a sidecar
        reference {"sidecar": key}; return None to keep the list inline)."""
        d: dict[str, Any] = {"target": self.target, "op": self.op, "layer": self.layer, "head": self.head,
                             "index": list(self.index) if isinstance(self.index, tuple) else self.index,
                             "position": self.position, "tower": self.tower}
        if self.hook is not None:
            d["hook"] = self.hook
        if self.scale != 1.0:
            d["scale"] = self.scale
        for name in _TENSOR_FIELDS:
            v = getattr(self, name)
            if name == "reference" and v is None:
                continue
            ref = tensor_to_json(name, v) if isinstance(v, Tensor) and tensor_to_json is not None else None
            d[name] = ref if ref is not None else v.tolist() if isinstance(v, Tensor) else v
        return d

    @classmethod
    def from_dict(cls, d: Any, tensor_from_json: Optional[Callable[[str, Mapping], Tensor]] = None) -> "Edit":
        """The Edit a `to_dict` dict describes; EditError (naming the key) for anything malformed.

        `tensor_from_json(field, obj)` resolves object values such as {"sidecar": key} to tensors."""
        if not isinstance(d, Mapping):
            raise EditError(f"an edit must be an object, got {'null' if d is None else type(d).__name__}")
        allowed = {f.name for f in fields(cls)}
        missing = sorted({"target", "op"} - set(d))
        unknown = sorted(set(d) - allowed, key=str)
        if missing:
            raise EditError(f"missing key(s) {missing}")
        if unknown:
            raise EditError(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        kwargs = dict(d)
        for key in ("position", "tower"):
            if key in kwargs and kwargs[key] is None:
                raise EditError(f"{key}: must not be null")
        if "scale" in kwargs and not is_number(kwargs["scale"]):
            raise EditError(f"scale: expected a number, got {type(kwargs['scale']).__name__}")
        for name in _TENSOR_FIELDS:
            v = kwargs.get(name)
            if isinstance(v, Mapping):
                if tensor_from_json is None:
                    raise EditError(f"{name}: an object value such as {{\"sidecar\": key}} needs a sidecar to read from")
                kwargs[name] = tensor_from_json(name, v)
            else:
                kwargs[name] = value_from_json(v, name)
        return cls(**kwargs)

    # ------------------------------------------------------------------ resolution against a model
    def target_hook(self) -> str:
        """The activation this edit reads: an attention/MLP hook, or the stream hook an SAE or direction acts on."""
        if self.target in ("head", "neuron") and self.head is not None:
            return act_name("cls_result" if self.position == "pooled" else "result", self.layer, self.tower)
        if self.target == "neuron":
            return act_name("mlp_post", self.layer, self.tower)
        return self.hook if self.hook is not None else act_name("resid_post", self.layer, self.tower)

    def hook_name(self, model=None) -> str:
        """Hook point this edit's function attaches to. For sae_latent edits it is the SAE's site, unless an
        SAE is spliced into `model` there (then `{site}.hook_sae_acts_post`, and the latents are edited directly)."""
        site = self.target_hook()
        if self.target == "sae_latent" and model is not None and spliced(model, site):
            return sae_hook_name(site)
        return site

    def width(self) -> Optional[int]:
        """Width of the selected slice: len(index) for neurons/latents, else None (the hook's feature width)."""
        if self.index is None:
            return None
        return 1 if is_int(self.index) else len(self.index)

    def validate(self, model, sae=None) -> None:
        """Check ranges and value shapes against `model` (and `sae` for sae_latent edits); raise EditTargetError."""
        tower = model.visual if self.tower == "image" else model.text
        if tower is None:
            raise EditTargetError(f"{self!r}: the model has no {self.tower} tower")
        cfg = tower.cfg
        if self.layer is not None and self.layer >= cfg.n_layers:
            raise EditTargetError(f"{self!r}: layer {self.layer} out of range; "
                                  f"the {self.tower} tower has layers 0..{cfg.n_layers - 1}")
        if self.head is not None and self.head >= cfg.n_heads:
            raise EditTargetError(f"{self!r}: head {self.head} out of range; "
                                  f"the {self.tower} tower has heads 0..{cfg.n_heads - 1}")
        site = self.target_hook()
        try:
            check_hook_name(model, site)
        except ValueError as err:
            raise EditTargetError(f"{self!r}: {err}") from None
        if self.target == "head":
            self._check_vector_width(cfg.d_model, cfg.n_ctx, "d_model")
        elif self.target == "neuron":
            if self.head is not None:
                limit, what = cfg.d_model, "d_model (coordinates of the head's output)"
            else:
                limit, what = cfg.d_mlp, "d_mlp"
            self._check_index(limit, what)
            self._check_vector_width(self.width(), cfg.n_ctx, "len(index)")
        else:
            try:
                feature = stream_width(site, cfg)
            except ValueError as err:
                raise EditTargetError(f"{self!r}: {err}") from None
            n_pos = None if is_pooled_hook(site) else cfg.n_ctx  # [b, d] hooks have no position axis
            if self.target == "direction":
                self._check_vector_width(feature, n_pos, "the hook's width")
            else:
                self._check_sae(model, sae, site, feature, n_pos)
        if (self.tower == "text" and self.position == "pooled" and self.head is None
                and not (self.target in ("direction", "sae_latent") and is_pooled_hook(site))):
            raise EditTargetError(f"{self!r}: position='pooled' is not supported here for the text tower (the pooled "
                                  "token's position depends on the tokens); use position='all', a head target, or "
                                  "the pooled hook 'text.hook_text_embed'")

    def _check_index(self, limit: int, what: str) -> None:
        idx = [self.index] if is_int(self.index) else list(self.index)
        bad = [i for i in idx if i >= limit]
        if bad:
            raise EditTargetError(f"{self!r}: index {bad} out of range; {what} is {limit} (valid 0..{limit - 1})")

    def _check_vector_width(self, width: Optional[int], n_pos: Optional[int], what: str) -> None:
        """value (and reference) must be [width], or [n_pos, width] at all positions; scalars were checked before."""
        if width is None:
            return
        ok = [(width,)]
        if self.position == "all" and not self.op_spec.vector_only and n_pos is not None:
            ok.append((n_pos, width))
        for name in _TENSOR_FIELDS:
            v = getattr(self, name)
            if name == "value" and self.op_spec.value_rows and isinstance(v, Tensor):
                if v.shape[-1] != width:
                    raise EditTargetError(f"{self!r}: value has shape {list(v.shape)}, expected [rows, {width}] "
                                          f"({what} = {width})")
                continue
            if isinstance(v, Tensor) and tuple(v.shape) not in ok:
                raise EditTargetError(f"{self!r}: {name} has shape {list(v.shape)}, expected "
                                      f"{' or '.join(str(list(s)) for s in ok)} ({what} = {width})")

    def _check_sae(self, model, sae, site: str, feature: Optional[int], n_pos: Optional[int]) -> None:
        if spliced(model, site):
            return  # the splice owns the SAE; latent indices and widths are checked on the first forward
        if sae is None:
            raise EditTargetError(f"{self!r}: an sae_latent edit needs an SAE at {site!r}; pass sae=... (a sae_lens SAE) "
                                  "or give the spec an `sae` entry")
        d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
        if feature is not None and d_in != feature:
            raise EditTargetError(f"{self!r}: the SAE reads vectors of size d_in={d_in} but {site!r} has width {feature}")
        if self.index is None:
            self._check_vector_width(d_sae, n_pos, "the SAE's d_sae")
        else:
            self._check_index(d_sae, "the SAE's d_sae")
            self._check_vector_width(self.width(), n_pos, "len(index)")


def spliced(model, site: str) -> bool:
    """True when an SAE is spliced into `model` at `site` (its latents are then a hook of their own)."""
    return sae_hook_name(site) in getattr(model, "hook_dict", {})


def _short(v: Value) -> str:
    if v is None:
        return ""
    if isinstance(v, Tensor):
        return f"[{'x'.join(map(str, v.shape))}]"
    return f"={v:g}"
