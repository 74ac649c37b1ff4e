"""`Edit`: one intervention on one site of a hooked CLIP, and its translation to hook functions.

An `Edit` is the single source of truth for ablation, steering and the JSON `InterventionSpec`: the
friendly constructors in `ablate` / `steer` and `InterventionSpec.load` all produce Edits, and
`edits_to_hooks` is the only place that turns them into `(hook_name, fn)` pairs.

Sites and the hooks they act on (`{p}` is "" for the image tower, "text." for the text tower):

    site        head   position  hook                                  acts on
    head        h      cls       {p}blocks.{l}.attn.hook_cls_result    [:, h, :]          [b, d_model]
    head        h      all       {p}blocks.{l}.attn.hook_result        [:, :, h, :]       [b, pos, d_model]
    neuron      h      cls/all   (same as head)                        [..., h, index]    head-output coordinates
    neuron      None   cls       {p}blocks.{l}.mlp.hook_post           [:, 0, index]      MLP neurons at CLS
    neuron      None   all       {p}blocks.{l}.mlp.hook_post           [:, :, index]
    direction   -      cls/all   `hook` or {p}blocks.{l}.hook_resid_post  [:, 0, :] / [:, :, :] ([b, d] hooks: all of it)
    sae_latent  -      cls/all   SAE at `hook` or {p}blocks.{l}.hook_resid_post; latents z[..., index]

Ops, applied to the selected slice v: zero → 0; mean / replace / set → value; scale → v·value;
add → v + scale·value; project_out → v − scale·(v·û)û with û = value/‖value‖.

For the text tower the pooled (EOT) position depends on the tokens, so `position="cls"` is supported for
head sites (hook_cls_result is the pooled token there) and on [b, d] hooks such as `text.hook_text_embed`;
elsewhere use `position="all"`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "Edit", "EditError", "EditTargetError", "edits_to_hooks", "apply_op", "canonical_index", "is_finite_number",
    "SITES", "OPS", "POSITIONS", "TOWERS",
]

SITES = ("head", "neuron", "sae_latent", "direction")
OPS = ("zero", "mean", "replace", "scale", "set", "add", "project_out")
POSITIONS = ("cls", "all")
TOWERS = ("image", "text")
VALUE_OPS = ("mean", "replace", "set")  # ops that write `value` in place of the activation
SITE_OPS = {
    "head": OPS,
    "neuron": OPS,
    "sae_latent": ("zero", "mean", "replace", "scale", "set", "add"),
    "direction": ("add", "project_out"),
}
# Hooks whose last dimension is a feature axis and whose layout is [b, pos, d] or [b, d]: the only ones a
# direction or an SAE can act on (elsewhere "position 0" would not mean the CLS token).
_STREAM_HOOKS_D_MODEL = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                         "hook_embed", "ln1.hook_normalized", "ln2.hook_normalized", "ln_final.hook_normalized",
                         "ln_post.hook_normalized")
_STREAM_HOOKS_D_MLP = ("mlp.hook_pre", "mlp.hook_post")
_POOLED_HOOKS = ("hook_image_embed", "text.hook_text_embed", "ln_post.hook_normalized")  # [b, d]

Value = Union[None, float, Tensor]


class EditError(ValueError):
    """An edit is malformed on its own (unknown op or site, missing or extra field, bad value)."""


class EditTargetError(EditError):
    """An edit does not fit the model it is applied to (layer/head/index out of range, wrong value shape)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_finite_number(x: Any) -> bool:
    """True for a non-bool int/float that is finite as a float (huge ints overflow → False)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def canonical_index(index: Any) -> Union[None, int, tuple[int, ...]]:
    """None, a non-negative int, or a non-empty tuple of distinct non-negative ints (from lists, arrays, tensors)."""
    if index is None:
        return None
    if isinstance(index, Tensor):
        if index.dtype.is_floating_point or index.dtype == torch.bool or index.ndim > 1:
            raise EditError(f"index must be an int or a list of ints, got a {index.dtype} tensor "
                            f"of shape {tuple(index.shape)}")
        index = index.tolist()
    elif hasattr(index, "tolist") and not isinstance(index, (list, tuple)):  # numpy scalars and arrays
        index = index.tolist()
    if _is_int(index):
        if index < 0:
            raise EditError(f"index must be >= 0, got {index}")
        return index
    if not isinstance(index, (list, tuple)):
        raise EditError(f"index must be an int or a list of ints, got {type(index).__name__}")
    if not index:
        raise EditError("index is an empty list; give at least one neuron/latent index")
    if not all(_is_int(i) for i in index):
        raise EditError(f"index must contain only ints, got {index!r}")
    if any(i < 0 for i in index):
        raise EditError(f"index entries must be >= 0, got {list(index)}")
    if len(set(index)) != len(index):
        raise EditError(f"index has duplicates: {list(index)}; each neuron/latent may appear once per edit")
    return tuple(index)


def _canonical_value(value: Any) -> Value:
    """None, a finite Python float, or a finite float32 CPU tensor (0-d values become floats)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise EditError("value must be a number or a tensor, got a bool")
    if isinstance(value, (int, float)):
        if not is_finite_number(value):
            raise EditError(f"value must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, (str, bytes, dict)):
        raise EditError(f"value must be a number, a list of numbers or a tensor, got {type(value).__name__}")
    if isinstance(value, Tensor):
        t = value.detach()
        if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise EditError(f"value tensor must hold numbers, got dtype {t.dtype}")
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise EditError(f"value must be a number, a list of numbers or a tensor, "
                            f"got {type(value).__name__}: {err}") from None
        if t.dtype == torch.bool or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            raise EditError(f"value must hold numbers, got dtype {t.dtype}")
    # float32 is the interchange precision: values round-trip through JSON and safetensors bit-exactly.
    t = t.to("cpu", torch.float32).contiguous()
    if t.ndim == 0:
        return _canonical_value(t.item())
    if t.ndim > 2:
        raise EditError(f"value must be a scalar, a vector [d] or a per-position matrix [pos, d], "
                        f"got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise EditError(f"value is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise EditError("value contains NaN or inf (after conversion to float32)")
    return t


@dataclass(eq=False)
class Edit:
    """One intervention: *what* to change (site, layer, head, index, position, tower, hook) and *how* (op, value, scale).

    Fields:
        site: "head" | "neuron" | "sae_latent" | "direction".
        op: "zero" | "mean" | "replace" | "scale" | "set" | "add" | "project_out".
        layer: block index (required except for direction / sae_latent edits that name a `hook`).
        head: attention head (required for site="head"; for site="neuron" selects coordinates of that
            head's output instead of MLP neurons).
        index: neuron / latent index (int or list of ints), for site="neuron" | "sae_latent".
        position: "cls" (position 0 / the pooled token) or "all".
        value: None (zero), a float, or a tensor: [width] for a vector, [pos, width] per position
            (position="all" only). `width` is d_model for heads and directions, len(index) for neurons/latents.
            For scale it is α (scalar or per coordinate); for project_out the direction.
        tower: "image" | "text".
        hook: explicit hook name for direction / sae_latent edits (e.g. "text.hook_text_embed").
        scale: multiplies `value` for add and the removed component for project_out (1.0 elsewhere).

    Values are stored as Python floats or float32 CPU tensors, so an Edit round-trips through JSON and
    safetensors bit-exactly.
    """

    site: str
    op: str
    layer: Optional[int] = None
    head: Optional[int] = None
    index: Union[None, int, tuple[int, ...]] = None
    position: str = "cls"
    value: Value = None
    tower: str = "image"
    hook: Optional[str] = None
    scale: float = 1.0

    def __post_init__(self):
        for name, allowed in (("site", SITES), ("op", OPS), ("position", POSITIONS), ("tower", TOWERS)):
            got = getattr(self, name)
            if not isinstance(got, str) or got not in allowed:
                raise EditError(f"unknown {name} {got!r}; expected one of {list(allowed)}")
        if self.op not in SITE_OPS[self.site]:
            raise EditError(f"op {self.op!r} is not available for site {self.site!r}; "
                            f"use one of {list(SITE_OPS[self.site])}")
        for name in ("layer", "head"):
            got = getattr(self, name)
            if got is not None and (not _is_int(got) or got < 0):
                raise EditError(f"{name} must be a non-negative int or None, got {got!r}")
        self.index = canonical_index(self.index)
        self.value = _canonical_value(self.value)
        if not is_finite_number(self.scale):
            raise EditError(f"scale must be a finite number, got {self.scale!r}")
        self.scale = float(self.scale)
        if self.hook is not None and (not isinstance(self.hook, str) or not self.hook):
            raise EditError(f"hook must be a non-empty hook name or None, got {self.hook!r}")
        self._check_fields()
        self._check_value()

    def _check_fields(self) -> None:
        s = self.site
        if s in ("head", "neuron"):
            if self.layer is None:
                raise EditError(f"a {s} edit needs `layer`")
            if self.hook is not None:
                raise EditError(f"`hook` is only for direction/sae_latent edits; a {s} edit's hook follows from layer/head")
        if s == "head":
            if self.head is None:
                raise EditError("a head edit needs `head`")
            if self.index is not None:
                raise EditError("a head edit takes no `index`; to edit coordinates of a head's output "
                                "use site='neuron' with head=...")
        if s in ("neuron", "sae_latent") and self.index is None:
            raise EditError(f"a {s} edit needs `index` (an int or a list of ints)")
        if s in ("direction", "sae_latent"):
            if self.head is not None:
                raise EditError(f"a {s} edit takes no `head`")
            if (self.layer is None) == (self.hook is None):
                raise EditError(f"a {s} edit needs exactly one of `layer` (→ blocks.{{layer}}.hook_resid_post) or `hook`")
            if self.hook is not None and self.hook.startswith("text.") != (self.tower == "text"):
                raise EditError(f"hook {self.hook!r} belongs to the {'text' if self.hook.startswith('text.') else 'image'} "
                                f"tower but the edit says tower={self.tower!r}")
        if s == "direction" and self.index is not None:
            raise EditError("a direction edit takes no `index`; the direction is the whole `value` vector")
        if self.scale != 1.0 and self.op not in ("add", "project_out"):
            raise EditError(f"scale={self.scale} only applies to add/project_out; for op {self.op!r} leave it at 1.0")

    def _check_value(self) -> None:
        v, op = self.value, self.op
        if op == "zero":
            if v is not None:
                raise EditError("op 'zero' takes no value")
            return
        if v is None:
            raise EditError(f"op {op!r} needs a value ({self._value_hint()})")
        if isinstance(v, Tensor) and v.ndim == 2 and self.position != "all":
            raise EditError(f"a per-position value [pos, d] (got {tuple(v.shape)}) needs position='all'")
        if op == "project_out":
            if not isinstance(v, Tensor) or v.ndim != 1:
                raise EditError("op 'project_out' needs a direction vector [d] as value")
            if not v.abs().sum() > 0:
                raise EditError("project_out direction is the zero vector; it has no direction to remove")
        if op in VALUE_OPS and self.site == "head" and not isinstance(v, Tensor):
            raise EditError(f"op {op!r} on a head needs a vector [d_model] (e.g. a mean or class prototype), got a scalar")

    def _value_hint(self) -> str:
        return {"scale": "α, a scalar or one per coordinate", "add": "a vector to add",
                "project_out": "the direction to remove"}.get(self.op, "the replacement vector or scalar")

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
        """Short human-readable label, e.g. 'image L2H3 cls replace[64]'."""
        where = self.hook if self.hook else f"L{self.layer}" + (f"H{self.head}" if self.head is not None else "")
        if self.site == "neuron" and self.head is None:
            where += " mlp"
        if self.index is not None:
            where += f"[{self.index}]" if _is_int(self.index) else f"[{','.join(map(str, self.index))}]"
        if self.site == "sae_latent":
            where += " latent"
        if self.value is None:
            val = ""
        elif isinstance(self.value, Tensor):
            val = f"[{'x'.join(map(str, self.value.shape))}]"
        else:
            val = f"={self.value:g}"
        return f"{self.tower} {where} {self.position} {self.op}{val}" + (f" x{self.scale:g}" if self.scale != 1.0 else "")

    def __repr__(self) -> str:
        return f"Edit({self.describe()})"

    # ------------------------------------------------------------------ resolution against a model
    @property
    def prefix(self) -> str:
        return "text." if self.tower == "text" else ""

    def site_hook(self) -> str:
        """The activation this edit reads: an attention/MLP hook, or the stream hook an SAE or direction acts on."""
        p = self.prefix
        if self.site in ("head", "neuron") and self.head is not None:
            kind = "hook_cls_result" if self.position == "cls" else "hook_result"
            return f"{p}blocks.{self.layer}.attn.{kind}"
        if self.site == "neuron":
            return f"{p}blocks.{self.layer}.mlp.hook_post"
        return self.hook if self.hook is not None else f"{p}blocks.{self.layer}.hook_resid_post"

    def hook_name(self, model=None) -> str:
        """Hook point this edit's function attaches to. For sae_latent edits it is the SAE's site, unless an
        SAE is spliced into `model` there (then `{site}.hook_sae_acts_post`, and the latents are edited directly)."""
        site = self.site_hook()
        if self.site == "sae_latent" and model is not None and _spliced(model, site):
            return f"{site}.hook_sae_acts_post"
        return site

    def width(self) -> Optional[int]:
        """Width of the selected slice: len(index) for neurons/latents, else None (the hook's feature width)."""
        if self.index is None:
            return None
        return 1 if _is_int(self.index) else len(self.index)

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
        site = self.site_hook()
        if site not in model.hook_dict:
            raise EditTargetError(f"{self!r}: no hook point named {site!r} in this model "
                                  f"(see `model.hook_dict`; text-tower hooks start with 'text.')")
        if self.site == "head":
            self._check_vector_width(cfg.d_model, cfg.n_ctx, "d_model")
        elif self.site == "neuron":
            if self.head is not None:
                limit, what = cfg.d_model, "d_model (coordinates of the head's output)"
            else:
                limit, what = cfg.d_mlp, "d_mlp"
            self._check_index(limit, what)
            self._check_vector_width(self.width(), cfg.n_ctx, "len(index)")
        else:
            feature = _stream_width(model, site, cfg)
            n_pos = None if site in _POOLED_HOOKS else cfg.n_ctx  # [b, d] hooks have no position axis
            if self.site == "direction":
                self._check_vector_width(feature, n_pos, "the hook's width")
            else:
                self._check_sae(model, sae, site, feature)
                self._check_vector_width(self.width(), n_pos, "len(index)")
        if (self.tower == "text" and self.position == "cls" and self.site != "head" and self.head is None
                and not (self.site in ("direction", "sae_latent") and site in _POOLED_HOOKS)):
            raise EditTargetError(f"{self!r}: position='cls' is not supported here for the text tower (the pooled "
                                  "token's position depends on the tokens); use position='all', a head site, or "
                                  "the pooled hook 'text.hook_text_embed'")

    def _check_index(self, limit: int, what: str) -> None:
        idx = [self.index] if _is_int(self.index) else list(self.index)
        bad = [i for i in idx if i >= limit]
        if bad:
            raise EditTargetError(f"{self!r}: index {bad} out of range; {what} is {limit} (valid 0..{limit - 1})")

    def _check_vector_width(self, width: Optional[int], n_pos: Optional[int], what: str) -> None:
        """value must be [width], or [n_pos, width] at all positions; scalars are checked in __post_init__."""
        v = self.value
        if not isinstance(v, Tensor) or width is None:
            return
        ok = [(width,)]
        if self.position == "all" and self.op != "project_out" and n_pos is not None:
            ok.append((n_pos, width))
        if tuple(v.shape) not in ok:
            raise EditTargetError(f"{self!r}: value has shape {list(v.shape)}, expected "
                                  f"{' or '.join(str(list(s)) for s in ok)} ({what} = {width})")

    def _check_sae(self, model, sae, site: str, feature: Optional[int]) -> None:
        if _spliced(model, site):
            return  # the splice owns the SAE; latent indices are range-checked on the first forward
        if sae is None:
            raise EditTargetError(f"{self!r}: an sae_latent edit needs an SAE at {site!r}; pass sae=... (a sae_lens SAE) "
                                  "or give the spec an `sae` entry")
        d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
        if feature is not None and d_in != feature:
            raise EditTargetError(f"{self!r}: the SAE reads vectors of size d_in={d_in} but {site!r} has width {feature}")
        self._check_index(d_sae, "the SAE's d_sae")

    # ------------------------------------------------------------------ application
    def hook_fn(self, model=None, sae=None, alpha: float = 1.0) -> Callable[[Tensor, Any], Tensor]:
        """A transformer_lens hook fn `fn(tensor, hook) -> tensor` applying just this edit.

        Validated against `model` when one is given; `sae`/`alpha` are for sae_latent edits."""
        if model is not None:
            self.validate(model, sae=sae)
        ((_, fn),) = _build_hooks(model, [self], sae, float(alpha))
        return fn


def _spliced(model, site: str) -> bool:
    return f"{site}.hook_sae_acts_post" in getattr(model, "hook_dict", {})


def _stream_width(model, name: str, cfg) -> Optional[int]:
    """Feature width of a [b, pos, d] / [b, d] hook; EditTargetError for hooks with another layout."""
    bare = name[5:] if name.startswith("text.") else name
    if bare in ("hook_image_embed", "hook_text_embed"):
        return cfg.d_embed if cfg.d_embed is not None else cfg.d_model
    if bare.endswith(_STREAM_HOOKS_D_MLP):
        return cfg.d_mlp
    if bare == "hook_embed" or (bare.startswith("blocks.") and bare.endswith(_STREAM_HOOKS_D_MODEL)) \
            or bare in ("ln_final.hook_normalized", "ln_post.hook_normalized"):
        return cfg.d_model
    raise EditTargetError(
        f"hook {name!r} is not a stream hook with layout [b, pos, d] or [b, d]; directions and SAEs can act on "
        "blocks.{l}.hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out, mlp.hook_pre/post, ln*.hook_normalized, "
        "hook_embed, hook_image_embed or text.hook_text_embed"
    )


def apply_op(v: Tensor, op: str, value: Value, scale: float = 1.0) -> Tensor:
    """Apply `op` to the selected activations v [..., w] and return the new slice (same shape).

    value is None, a float, or a tensor already on v's device and dtype, broadcastable to v ([w] or [pos, w]).
    """
    if op == "zero":
        return torch.zeros_like(v)
    if op in VALUE_OPS:
        return torch.full_like(v, value) if isinstance(value, float) else value.expand_as(v).clone()
    if op == "scale":
        return v * value
    if op == "add":
        return v + scale * value
    if op == "project_out":
        u = value / value.norm()
        return v - scale * (v * u).sum(-1, keepdim=True) * u
    raise EditError(f"unknown op {op!r}; expected one of {list(OPS)}")


class _ValueOnDevice:
    """The edit's value moved to the activation's device/dtype once, then reused on every forward."""

    def __init__(self, value: Value):
        self.value, self._cache = value, {}

    def get(self, like: Tensor) -> Value:
        if not isinstance(self.value, Tensor):
            return self.value
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.value.to(device=like.device, dtype=like.dtype)
        return self._cache[key]


def _select_positions(x: Tensor, position: str, edit: Edit) -> Tensor:
    """View of x at the edited positions, for [b, pos, d] (cls → [b, d]) and [b, d] (everything) layouts."""
    if x.ndim == 2 or position == "all":
        return x
    if edit.tower == "text":
        raise EditTargetError(f"{edit!r}: position='cls' on a [b, pos, d] text hook is not supported; use position='all'")
    return x[:, 0]


class _EditStep:
    """Applies one edit (not an SAE pass) in place on an already-cloned hook tensor.

    `whole=True` acts on every row of the tensor: used for SAE latents, whose positions were selected on
    the stream before encoding.
    """

    def __init__(self, edit: Edit, whole: bool = False):
        self.edit, self.whole = edit, whole
        self.value = _ValueOnDevice(edit.value)
        idx = None if edit.index is None else [edit.index] if _is_int(edit.index) else list(edit.index)
        self._index, self._idx = idx, {}

    def _base(self, x: Tensor) -> Tensor:
        e = self.edit
        if self.whole:
            return x
        if e.site in ("head", "neuron") and e.head is not None:
            return x[:, e.head] if e.position == "cls" else x[:, :, e.head]
        return _select_positions(x, e.position, e)

    def __call__(self, x: Tensor) -> None:
        base = self._base(x)
        if self._index is None:
            base[...] = self._apply(base)
            return
        if x.device not in self._idx:
            if max(self._index) >= base.shape[-1]:
                raise EditTargetError(f"{self.edit!r}: index {max(self._index)} out of range for activations of "
                                      f"width {base.shape[-1]}")
            self._idx[x.device] = torch.tensor(self._index, dtype=torch.long, device=x.device)
        idx = self._idx[x.device]
        base[..., idx] = self._apply(base[..., idx])

    def _apply(self, v: Tensor) -> Tensor:
        value = self.value.get(v)
        per_position = isinstance(value, Tensor) and value.ndim == 2
        if isinstance(value, Tensor) and (value.shape[-1] != v.shape[-1]
                                          or (per_position and (v.ndim < 3 or value.shape[0] != v.shape[-2]))):
            raise EditTargetError(f"{self.edit!r}: value of shape {list(value.shape)} does not fit activations of "
                                  f"shape {list(v.shape)} at {self.edit.hook_name()!r}")
        return apply_op(v, self.edit.op, value, self.edit.scale)


class _SAEStep:
    """Applies consecutive sae_latent edits (same position) through one encode → edit latents → decode pass."""

    def __init__(self, sae, edits: list[Edit], alpha: float):
        from .steer import sae_transform  # steer builds on Edit: import lazily to keep the dependency one-way

        if sae is None:
            raise EditTargetError(f"{edits[0]!r}: an sae_latent edit needs an SAE; pass sae=... (a sae_lens SAE)")
        self.edit = edits[0]
        steps = [_EditStep(e, whole=True) for e in edits]

        def edit_latents(z: Tensor) -> Tensor:
            z = z.clone()
            for step in steps:
                step(z)
            return z

        self.transform = sae_transform(sae, edit_latents, alpha=alpha)

    def __call__(self, x: Tensor) -> None:
        base = _select_positions(x, self.edit.position, self.edit)
        base[...] = self.transform(base)


def _compose(steps: Sequence[Callable[[Tensor], None]]) -> Callable[[Tensor, Any], Tensor]:
    def hook_fn(x: Tensor, hook=None) -> Tensor:
        # Work on a copy: the attention module detects an edit by identity (`edited is not cls`), and the
        # caller's tensor may be cached elsewhere.
        out = x.clone()
        for step in steps:
            step(out)
        return out

    hook_fn.steps = list(steps)
    return hook_fn


def _build_hooks(model, edits: list[Edit], sae, alpha: float) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    groups: dict[str, list] = {}
    for e in edits:
        name = e.hook_name(model)
        steps = groups.setdefault(name, [])
        if e.site != "sae_latent" or name.endswith(".hook_sae_acts_post"):
            steps.append(_EditStep(e))
        elif steps and isinstance(steps[-1], list) and steps[-1][0].position == e.position:
            steps[-1].append(e)  # merge into the pending SAE pass: encode once
        else:
            steps.append([e])
    return [(name, _compose([_SAEStep(sae, s, alpha) if isinstance(s, list) else s for s in steps]))
            for name, steps in groups.items()]


def edits_to_hooks(model, edits: Iterable[Edit], sae=None, alpha: float = 1.0,
                   validate: bool = True) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """Translate edits into `[(hook_name, fn)]` for `model.hooks(fwd_hooks=...)` / `run_with_hooks`.

    Edits on the same hook are composed, in the given order, into ONE hook fn. Consecutive sae_latent edits
    on the same site and position share one SAE pass: h' = α·decode(z') + (1 − α)·h, z' = latents after
    the edits (`sae`: a sae_lens SAE; `alpha`: the blend, 1.0 = pure reconstruction, no error term).
    `validate=True` checks every edit against `model` (and `sae`) first, raising EditTargetError.
    """
    edits = list(edits)
    for i, e in enumerate(edits):
        if not isinstance(e, Edit):
            raise EditError(f"edits[{i}] is a {type(e).__name__}, not an Edit")
    if not is_finite_number(alpha):
        raise EditError(f"alpha must be a finite number, got {alpha!r}")
    if validate:
        for e in edits:
            e.validate(model, sae=sae)
    return _build_hooks(model, edits, sae, float(alpha))
