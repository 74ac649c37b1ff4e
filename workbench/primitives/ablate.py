"""Ablation: friendly constructors of `Edit`s, the composable `Intervention`, and reference means.

    protos = class_prototypes(model, images, labels, heads=[(11, 3), (11, 11)])     # μ_c per class + neutral
    iv = ablate_heads([(11, 3), (11, 11)], op="replace", value=protos["neutral"])
    iv = iv + ablate_neurons([(11, 3, [5, 17])], op="scale", factor=0.1)          # damping (docs/methods.md)
    with intervene(model, iv):
        emb = model.encode_image(images)

Reference means come from `run_with_cache` on `hook_cls_result` (or `hook_result` for all positions):
there is no second forward implementation.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from torch import Tensor

from workbench.models.hook_names import act_name, canonical_position, hook_tower

from .compile import edits_to_hooks
from .edit import Edit
from .errors import EditError
from .spec import InterventionSpec
from .values import canonical_index

__all__ = [
    "Intervention", "intervene", "ablate_heads", "ablate_neurons", "ablate_latents",
    "mean_activations", "class_prototypes", "Prototypes",
]

Head = tuple[int, int]
EditsLike = Union[Edit, "Intervention", Iterable[Edit]]
ABLATION_OPS = ("zero", "mean", "replace", "scale")


class Intervention:
    """An ordered list of edits. `a + b` concatenates (a's edits first); `.hooks(model)` gives the
    `(hook_name, fn)` pairs (edits on one hook composed in order into one fn)."""

    def __init__(self, edits: EditsLike = ()):
        self.edits: list[Edit] = _as_edit_list(edits)

    def __add__(self, other: EditsLike) -> "Intervention":
        return Intervention(self.edits + _as_edit_list(other))

    def __radd__(self, other: Any) -> "Intervention":
        if isinstance(other, int) and other == 0:  # lets sum([...], ...) start from 0
            return Intervention(self.edits)
        return Intervention(_as_edit_list(other) + self.edits)

    def __iter__(self) -> Iterator[Edit]:
        return iter(self.edits)

    def __len__(self) -> int:
        return len(self.edits)

    def __getitem__(self, i: int) -> Edit:
        return self.edits[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Intervention) and self.edits == other.edits

    def __repr__(self) -> str:
        inner = "; ".join(e.describe() for e in self.edits[:6]) + ("; ..." if len(self.edits) > 6 else "")
        return f"Intervention({len(self.edits)} edits: {inner})"

    def hooks(self, model, sae=None, alpha: float = 1.0) -> list:
        """`[(hook_name, fn)]` for `model.hooks(fwd_hooks=...)`; validates every edit against `model`."""
        return edits_to_hooks(model, self.edits, sae=sae, alpha=alpha)

    def to_spec(self, model, **kwargs):
        """An `InterventionSpec` for `model` holding these edits (kwargs: sae, alpha, provenance fields)."""
        return InterventionSpec.from_edits(model, self.edits, **kwargs)


def _as_edit_list(edits: EditsLike) -> list[Edit]:
    if isinstance(edits, Edit):
        return [edits]
    if isinstance(edits, Intervention):
        return list(edits.edits)
    if isinstance(edits, (str, bytes, Mapping)) or not isinstance(edits, Iterable):
        raise EditError(f"expected an Edit, an Intervention or a list of Edits, got {type(edits).__name__}")
    out = list(edits)
    for i, e in enumerate(out):
        if not isinstance(e, Edit):
            raise EditError(f"item {i} is a {type(e).__name__}, not an Edit")
    return out


@contextmanager
def intervene(model, edits: EditsLike, sae=None, alpha: float = 1.0) -> Iterator[Any]:
    """Context manager applying `edits` to `model` (via `model.hooks`); hooks are removed on exit, also
    after an exception. `sae`/`alpha` are needed for sae_latent edits only."""
    hooks = edits_to_hooks(model, _as_edit_list(edits), sae=sae, alpha=alpha)
    with model.hooks(fwd_hooks=hooks):
        yield model


# ---------------------------------------------------------------------------------------------- constructors
def _head_list(heads: Union[Head, Iterable[Head]]) -> list[Head]:
    if isinstance(heads, tuple) and len(heads) == 2 and all(isinstance(x, int) for x in heads):
        heads = [heads]
    out = []
    for h in heads:
        if not (isinstance(h, (tuple, list)) and len(h) == 2):
            raise EditError(f"heads must be (layer, head) pairs, got {h!r}")
        out.append((int(h[0]), int(h[1])))
    if len(set(out)) != len(out):
        raise EditError(f"heads has duplicates: {out}")
    return out


def _check_op(op: str, factor, value, allowed: Sequence[str]) -> None:
    if op not in allowed:
        raise EditError(f"unknown ablation op {op!r}; expected one of {list(allowed)}")
    if op == "scale" and factor is None:
        raise EditError("op 'scale' needs factor (e.g. factor=0.1 to damp by 90%)")
    if op != "scale" and factor is not None:
        raise EditError(f"factor is only used by op 'scale', not {op!r}")
    if op == "zero" and value is not None:
        raise EditError("op 'zero' takes no value")
    if op in ("mean", "replace", "set") and value is None:
        raise EditError(f"op {op!r} needs value= (use mean_activations / class_prototypes to compute it)")


def ablate_heads(heads: Union[Head, Iterable[Head]], op: str = "zero", value=None, factor: Optional[float] = None,
                 position: str = "pooled", tower: str = "image") -> Intervention:
    """One head edit per (layer, head).

    op: "zero" (x ← 0), "mean" / "replace" (x ← value), "scale" (x ← factor·x).
    value: a vector [d_model] used for every head, or a mapping {(layer, head): vector} (e.g. the output of
    `mean_activations`, or `class_prototypes(...)[c]`); [pos, d_model] vectors with position="all".
    position: "pooled" (alias "cls") edits the head's write to the pooled token (hook_cls_result); "all" its
    write at every position.
    """
    _check_op(op, factor, value, ABLATION_OPS)
    if isinstance(value, Prototypes):
        raise EditError("value is a whole Prototypes table; pass one prototype set, e.g. value=protos['neutral'] "
                        "or value=protos[c] for class c")
    edits = []
    for l, h in _head_list(heads):
        v = factor if op == "scale" else _lookup(value, (l, h), "head")
        edits.append(Edit(target="head", op=op, layer=l, head=h, value=v, position=position, tower=tower))
    return Intervention(edits)


def _lookup(value, key: Hashable, what: str):
    if isinstance(value, Mapping):
        if key not in value:
            raise EditError(f"value has no entry for {what} {key}; it has {sorted(value)[:8]}")
        return value[key]
    return value


def ablate_neurons(neurons: Iterable[tuple], op: str = "zero", value=None, factor: Optional[float] = None,
                   position: str = "pooled", tower: str = "image") -> Intervention:
    """Edits on single neurons, grouped into one edit per (layer, head).

    neurons: (layer, head, index) triples; head=None addresses MLP neurons (mlp.hook_post), an int head
    addresses coordinates of that head's output; index is an int or a list of ints.
    op: "zero", "mean" / "replace" / "set" (→ value), "scale" (→ factor·x; the usual damping is factor=0.1).
    value: a float for every neuron, or a mapping {(layer, head, index): float}.
    """
    _check_op(op, factor, value, ABLATION_OPS + ("set",))
    groups: dict[tuple, list[int]] = {}
    for n in neurons:
        if not (isinstance(n, (tuple, list)) and len(n) == 3):
            raise EditError(f"neurons must be (layer, head_or_None, index) triples, got {n!r}")
        layer, head, index = n
        idx = canonical_index(index)
        groups.setdefault((layer, head), []).extend([idx] if isinstance(idx, int) else idx)
    edits = []
    for (layer, head), idx in groups.items():
        if op == "scale":
            v = factor
        elif isinstance(value, Mapping):
            v = [float(_lookup(value, (layer, head, i), "neuron")) for i in idx]
        else:
            v = value
        edits.append(Edit(target="neuron", op=op, layer=layer, head=head, index=idx, value=v, position=position,
                          tower=tower))
    return Intervention(edits)


def ablate_latents(latents, op: str = "zero", value=None, factor: Optional[float] = None, layer: Optional[int] = None,
                   hook: Optional[str] = None, position: str = "all", tower: Optional[str] = None) -> Intervention:
    """One sae_latent edit on the SAE at `blocks.{layer}.hook_resid_post` (or `hook`).

    op: "zero", "mean" / "replace" / "set" (→ value: float or [len(latents)]), "scale" (→ factor·z). Apply with
    `intervene(model, iv, sae=sae, alpha=blend)` (alpha: the SAE blend weight).
    """
    _check_op(op, factor, value, ABLATION_OPS + ("set",))
    if tower is None:
        tower = hook_tower(hook) if hook is not None else "image"
    v = factor if op == "scale" else value
    return Intervention([Edit(target="sae_latent", op=op, layer=layer, hook=hook, index=latents, value=v,
                              position=position, tower=tower)])


# ---------------------------------------------------------------------------------------------- reference means
@dataclass
class Prototypes:
    """Per-class means of head writes (prototypes; see docs/methods.md).

    classes: {label: {(layer, head): Tensor [d_model] (or [pos, d_model])}}; neutral: same mapping for the
    neutral prototype; counts: {label: number of images}. `protos[c]` and `protos["neutral"]` index them.
    """

    classes: dict
    neutral: dict
    counts: dict = field(default_factory=dict)

    def __getitem__(self, key) -> dict:
        if key in self.classes:
            return self.classes[key]
        if key == "neutral":
            return self.neutral
        raise KeyError(f"no prototype for class {key!r}; classes: {sorted(self.classes, key=str)} (and 'neutral')")


def _all_heads(model) -> list[Head]:
    c = model.visual.cfg
    return [(l, h) for l in range(c.n_layers) for h in range(c.n_heads)]


def _check_heads(model, heads) -> list[Head]:
    heads = _all_heads(model) if heads is None else _head_list(heads)
    c = model.visual.cfg
    bad = [(l, h) for l, h in heads if not (0 <= l < c.n_layers and 0 <= h < c.n_heads)]
    if bad:
        raise EditError(f"heads {bad} out of range: the image tower has {c.n_layers} layers × {c.n_heads} heads")
    if not heads:
        raise EditError("heads is empty")
    return heads


def _batches(images, labels, batch_size: int) -> Iterator[tuple[Tensor, Optional[list]]]:
    """(images [b, 3, H, W], labels list | None) from a tensor (+ aligned labels) or an iterable of batches
    (tensors, or (images, labels) with labels a tensor/sequence or a dict indexed by the key `labels`)."""
    if isinstance(images, Tensor):
        ys = None
        if labels is not None:
            if isinstance(labels, str):
                raise EditError("labels is a key name, but images is a tensor; pass the label values instead")
            ys = labels.tolist() if hasattr(labels, "tolist") else list(labels)
            if len(ys) != len(images):
                raise EditError(f"{len(ys)} labels for {len(images)} images")
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size], None if ys is None else ys[i:i + batch_size]
        return
    for batch in images:
        if isinstance(batch, Tensor):
            if labels is not None:
                raise EditError("the loader yields bare image tensors, so there are no labels to group by")
            yield batch, None
            continue
        if not (isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor)):
            raise EditError(f"each batch must be an image tensor or (images, labels), got {type(batch).__name__}")
        x, y = batch[0], batch[1] if len(batch) > 1 else None
        if labels is None:
            yield x, None
            continue
        if isinstance(y, Mapping):
            if not isinstance(labels, str) or labels not in y:
                raise EditError(f"the loader yields label dicts with keys {sorted(y)}; pass labels=<one of them>")
            y = y[labels]
        ys = y.tolist() if hasattr(y, "tolist") else list(y)
        yield x, ys


@torch.no_grad()
def _head_write_sums(model, images, heads: list[Head], position: str, labels, batch_size: int):
    """Σ of head writes per label (float64): {label: Tensor [n_heads, d_model] or [n_heads, pos, d_model]}, counts."""
    try:
        position = canonical_position(position)
    except ValueError as err:
        raise EditError(str(err)) from None
    kind = "cls_result" if position == "pooled" else "result"
    names = sorted({act_name(kind, l) for l, _ in heads})
    sums: dict = {}
    counts: dict = {}
    for x, ys in _batches(images, labels, batch_size):
        _, cache = model.run_with_cache(x.to(model.device), names_filter=names)
        per_head = [cache[act_name(kind, l)][:, h] if position == "pooled" else
                    cache[act_name(kind, l)][:, :, h] for l, h in heads]
        acts = torch.stack(per_head, dim=1).double()  # [b, n_heads, (pos,) d_model]
        keys = [None] * len(acts) if ys is None else ys
        if len(keys) != len(acts):
            raise EditError(f"a batch has {len(acts)} images but {len(keys)} labels")
        for key in dict.fromkeys(keys):
            mask = torch.tensor([k == key for k in keys], device=acts.device)
            s = acts[mask].sum(0)
            sums[key] = s if key not in sums else sums[key] + s
            counts[key] = counts.get(key, 0) + int(mask.sum())
    if not counts:
        raise EditError("no images: the reference set is empty")
    return sums, counts


def _per_head(total: Tensor, heads: list[Head]) -> dict[Head, Tensor]:
    return {hd: total[i].float().cpu() for i, hd in enumerate(heads)}


def mean_activations(model, images, heads: Optional[Iterable[Head]] = None, position: str = "pooled",
                     batch_size: int = 64) -> dict[Head, Tensor]:
    """Mean head writes over a reference set: {(layer, head): Tensor [d_model]} ([pos, d_model] for position="all").

    images: a preprocessed tensor [n, 3, H, W] (processed in chunks of batch_size) or an iterable of
    batches (tensors or (images, labels) pairs, e.g. a DataLoader). heads: (layer, head) pairs, default all.
    """
    heads = _check_heads(model, heads)
    sums, counts = _head_write_sums(model, images, heads, position, None, batch_size)
    return _per_head(sums[None] / counts[None], heads)


def class_prototypes(model, images, labels, heads: Optional[Iterable[Head]] = None, position: str = "pooled",
                     neutral: str = "balanced", batch_size: int = 64) -> Prototypes:
    """Per-class mean head writes μ_c^(l,h) and a neutral prototype, in one pass over the reference set.

    labels: values aligned with an image tensor, or — for a loader yielding (images, {key: labels}) — the
    key. neutral: "balanced" (mean of the class means: every class weighs the same) or "all" (mean over
    all images).
    """
    if neutral not in ("balanced", "all"):
        raise EditError(f"neutral must be 'balanced' or 'all', got {neutral!r}")
    if labels is None:
        raise EditError("class_prototypes needs labels; use mean_activations for one overall mean")
    heads = _check_heads(model, heads)
    sums, counts = _head_write_sums(model, images, heads, position, labels, batch_size)
    if len(sums) < 2:
        only = ", ".join(repr(k) for k in sums)
        raise EditError(f"class_prototypes found a single class ({only}) in the labels; a neutral prototype needs "
                        "at least 2 classes. Use mean_activations for one overall mean")
    means = {k: sums[k] / counts[k] for k in sums}
    if neutral == "balanced":
        neutral_mean = torch.stack(list(means.values())).mean(0)
    else:
        neutral_mean = sum(sums.values()) / sum(counts.values())
    order = sorted(means, key=lambda k: (str(type(k)), k))
    return Prototypes(classes={k: _per_head(means[k], heads) for k in order},
                      neutral=_per_head(neutral_mean, heads), counts={k: counts[k] for k in order})
