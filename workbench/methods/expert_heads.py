"""Expert attention heads: find the heads that carry an attribute into retrieval, and neutralise them.

The seed of the expert-heads method ("Debiasing CLIP with Neural Interventions"; docs/methods.md):

1. `head_contributions`: every head's direct contribution to the image embedding at the pooled token,
   one extraction pass over a reference set (`workbench.activations.extract`), plus a linear probe per
   head for the attribute (`workbench.probes.probe`).
2. `bias_attribution`: each head's share of the query-image similarity gap between the two groups,
   signed by the direction each query is skewed; `top_heads` picks the k largest.
3. `neutral_prototype_intervention`: replace the chosen heads' writes with the neutral prototype
   (mean of the class means, `workbench.primitives.class_prototypes`), as ordinary edits that export
   as an `InterventionSpec`.

`expert_heads(...)` runs the three steps and is registered as method "expert_heads".
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .registry import register_method

__all__ = ["ExpertHeads", "expert_heads", "head_contributions", "bias_attribution", "measured_skew", "top_heads",
           "neutral_prototype_intervention", "TOP_K"]

Head = tuple[int, int]
TOP_K = 3


def head_contributions(model, reference, batch_size: int = 128, progress: bool = True):
    """One pass over `reference` (a labelled dataset, raw or preprocessed, as `extract` takes it) → an
    ActivationStore with "head_contributions" [n, L, H, d_embed] and "hook_image_embed" [n, d_embed]
    (unnormalised)."""
    from workbench.activations import extract

    return extract(model, reference, ["head_contributions", "hook_image_embed"], batch_size=batch_size,
                   progress=progress)


def _check_groups(groups: Tensor, what: str) -> Tensor:
    groups = torch.as_tensor(groups)
    values = sorted(torch.unique(groups).tolist())
    if values != [0, 1]:
        raise ValueError(f"bias attribution compares two groups coded 0 and 1; {what} has values {values[:8]}. "
                         "Pass a binary attribute (e.g. gender), or a 0/1 recoding of one group against the rest")
    return groups


def _check_attribution_inputs(heads: Tensor, image_embed: Tensor, text: Tensor, query_labels: Optional[Tensor],
                              groups: Tensor) -> None:
    if heads.ndim != 4:
        raise ValueError(f"heads must be [n, layers, heads, d_embed], got shape {tuple(heads.shape)}")
    n, d = heads.shape[0], heads.shape[-1]
    if tuple(image_embed.shape) != (n, d):
        raise ValueError(f"image_embed must be [n, d_embed] = [{n}, {d}] like heads, got {tuple(image_embed.shape)}")
    if text.ndim != 2 or text.shape[1] != d:
        raise ValueError(f"text must be [n_queries, d_embed={d}], got {tuple(text.shape)}")
    for name, v in (("query_labels", query_labels), ("groups", groups)):
        if v is not None and tuple(v.shape) != (n,):
            raise ValueError(f"{name} must have one entry per image ({n}), got shape {tuple(v.shape)}")


def _query_groups(query_labels: Optional[Tensor], groups: Tensor, o: int) -> tuple[Tensor, Tensor]:
    """Masks of the images relevant to query o in group 1 and in group 0 (all images when query_labels is None)."""
    mine = torch.ones_like(groups, dtype=torch.bool) if query_labels is None else query_labels == o
    g1, g0 = mine & (groups == 1), mine & (groups == 0)
    if not g1.any() or not g0.any():
        raise ValueError(f"query {o} has no relevant image in group {0 if not g0.any() else 1}; "
                         "every query needs images of both groups")
    return g1, g0


@torch.no_grad()
def measured_skew(image_embed: Tensor, text: Tensor, query_labels: Optional[Tensor], groups: Tensor) -> Tensor:
    """The direction each query leans, measured: sign(mean similarity of group 1 − of group 0) over the
    images relevant to the query. image_embed [n, d], text [Q, d] normalised, query_labels [n] (None: every
    image is relevant to every query) → [Q] of ±1 (0 on a tie)."""
    groups = _check_groups(groups, "groups")
    sim = (image_embed / image_embed.norm(dim=-1, keepdim=True)) @ text.T  # [n, Q]
    skew = torch.zeros(len(text))
    for o in range(len(text)):
        g1, g0 = _query_groups(query_labels, groups, o)
        skew[o] = torch.sign(sim[g1, o].mean() - sim[g0, o].mean())
    return skew


@torch.no_grad()
def bias_attribution(heads: Tensor, image_embed: Tensor, text: Tensor, query_labels: Optional[Tensor],
                     groups: Tensor, skew: Tensor) -> Tensor:
    """How much each head's direct contribution pushes retrieval towards each query's skew.

    heads [n, L, H, d_embed] (direct contributions, e.g. `head_contributions(...)["head_contributions"]`),
    image_embed [n, d_embed] (unnormalised), text [Q, d_embed] (normalised query embeddings),
    query_labels [n] (the query each image is relevant to: class code 0..Q−1, any other value for none;
    None: every image is relevant to every query, for galleries without a target label), groups [n] (0/1),
    skew [Q] (+1: the query favours group 1, −1: group 0).

    Returns [L, H]: Σ_q skew_q · (mean over group-1 − mean over group-0 images relevant to q) of the head's
    share of the cosine similarity to query q (its contribution · text_q / ‖image_embed‖).
    """
    heads, image_embed, text = heads.float(), image_embed.float(), text.float()
    groups = _check_groups(groups, "groups")
    query_labels = None if query_labels is None else torch.as_tensor(query_labels)
    _check_attribution_inputs(heads, image_embed, text, query_labels, groups)
    skew = torch.as_tensor(skew, dtype=torch.float32)
    if tuple(skew.shape) != (len(text),):
        raise ValueError(f"skew must have one entry per query ({len(text)}), got shape {tuple(skew.shape)}")
    share = torch.einsum("nlhd,od->nolh", heads, text) / image_embed.norm(dim=-1)[:, None, None, None]
    score = torch.zeros(heads.shape[1:3])
    for o in range(len(text)):
        g1, g0 = _query_groups(query_labels, groups, o)
        score += skew[o] * (share[g1, o].mean(0) - share[g0, o].mean(0))
    return score


def top_heads(scores: Tensor, k: int = TOP_K) -> list[Head]:
    """The k (layer, head) pairs with the largest scores [L, H], best first."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [layers, heads], got shape {tuple(scores.shape)}")
    if not isinstance(k, int) or not 1 <= k <= scores.numel():
        raise ValueError(f"k must be an integer in 1..{scores.numel()} (the number of heads), got {k!r}")
    order = scores.flatten().argsort(descending=True)[:k]
    return [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in order]


def neutral_prototype_intervention(model, reference, attribute: str, heads: Sequence[Head],
                                   batch_size: int = 128):
    """Replace each head's pooled-token write with its neutral prototype (the mean of the per-class means
    of `attribute` over `reference`, a labelled dataset read like `extract` reads it). Returns
    (Intervention, Prototypes)."""
    from workbench.evaluation import input_batches
    from workbench.primitives import ablate_heads, class_prototypes

    batches = input_batches(model, reference, batch_size)  # raw images preprocessed, as extract does
    prototypes = class_prototypes(model, batches, attribute, heads=list(heads))
    return ablate_heads(list(heads), op="replace", value=prototypes["neutral"]), prototypes


@dataclass
class ExpertHeads:
    """What `expert_heads` found and the intervention it built.

    heads: the selected (layer, head) pairs, best first; attribution: [L, H] bias attribution scores;
    probes: the per-head probe for the attribute (`ProbeResult`, table with accuracy / AUROC / AP);
    prototypes: per-class and neutral prototypes of the selected heads; intervention: the edits.
    """

    heads: list[Head]
    attribution: Tensor
    probes: Any
    prototypes: Any
    intervention: Any
    attribute: str
    reference: str

    def table(self):
        """Tidy per-head table: layer, head, attribution, the probe's accuracy / AUROC / AP, selected."""
        table = self.probes.table[["layer", "head", "accuracy", "auroc", "ap"]].copy()
        table.insert(2, "attribution", [float(self.attribution[l, h]) for l, h in zip(table["layer"], table["head"])])
        table["selected"] = [(int(l), int(h)) in self.heads for l, h in zip(table["layer"], table["head"])]
        return table.sort_values("attribution", ascending=False, ignore_index=True)

    def to_spec(self, model, **provenance):
        """The intervention as an `InterventionSpec` whose provenance names this method."""
        from workbench.primitives import InterventionSpec

        fields = {"dataset": self.reference, "attribute": self.attribute, "selection": "bias_attribution",
                  "replacement": "neutral_prototype", **provenance}
        return InterventionSpec.from_edits(model, self.intervention, method="expert_heads", **fields)


@register_method("expert_heads")
def expert_heads(model, reference, queries: Sequence[str], attribute: str = "gender", target: str = "occupation",
                 skew: Optional[Tensor] = None, k: int = TOP_K, batch_size: int = 128, seed: int = 0,
                 progress: bool = True) -> ExpertHeads:
    """Find the k heads that carry `attribute` into retrieval for `queries` and neutralise them.

    reference: a dataset yielding (image, {label: int}) with `attribute` (0/1) and `target` labels, raw
    or with `transform=model.preprocess` (the rule of `extract`, docs/inputs.md).
    queries: one prompt per `target` class, in class-code order.
    skew [Q] (±1): the group each query favours; default measured on `reference` (`measured_skew`).
    """
    from workbench.probes import probe

    if isinstance(queries, (str, bytes)) or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a list of prompt strings, one per target class")
    if len(reference) == 0:
        raise ValueError("the reference set is empty")
    keys = reference[0][1]  # check the labels before the extraction pass, not after
    for key in (attribute, target):
        if key not in keys:
            raise ValueError(f"the reference set has no label {key!r}; it has {sorted(keys)}")
    store = head_contributions(model, reference, batch_size=batch_size, progress=progress)
    _check_groups(store.labels[attribute], f"attribute {attribute!r}")
    heads = store["head_contributions"]
    probes = probe(heads, store.labels[attribute], unit_index=["layer", "head"], seed=seed)
    with torch.no_grad():
        text = model.encode_text(list(queries), normalize=True).float().cpu()
    labels, groups = store.labels[target], store.labels[attribute]
    if skew is None:
        skew = measured_skew(store["hook_image_embed"], text, labels, groups)
    scores = bias_attribution(heads, store["hook_image_embed"], text, labels, groups, skew)
    selected = top_heads(scores, k)
    intervention, prototypes = neutral_prototype_intervention(model, reference, attribute, selected, batch_size)
    return ExpertHeads(heads=selected, attribution=scores, probes=probes, prototypes=prototypes,
                       intervention=intervention, attribute=attribute, reference=repr(reference))


# ============================================================================================== find
SELECTION_NAMES = ("probe_ap", "bias_attribution")  # the two selections every finding reports side by side
NEURON_AP = 0.42  # the paper's expert-neuron threshold
DAMPING = 0.1  # the paper's damping factor


@dataclass(frozen=True)
class Selection:
    """How expert heads are picked from the per-head table.

    rule "top_k": the k heads with the largest score `by` ("ap": held-out probe AP, or "bias_attribution");
    rule "ap_above": every head whose held-out probe AP exceeds `threshold` (at least one must).
    Build one with `top_k(k)`, `top_k(k, by="bias_attribution")` or `ap_above(t)`.
    """

    rule: str
    by: str = "ap"
    k: Optional[int] = None
    threshold: Optional[float] = None

    @property
    def name(self) -> str:
        """The selection's key in `ExpertHeadsFinding.selections`: "probe_ap" or "bias_attribution"."""
        return "probe_ap" if self.by == "ap" else "bias_attribution"

    def describe(self) -> str:
        """Short readable tag used in variant names: "ap_top3", "attribution_top3", "ap_above0.9"."""
        if self.rule == "ap_above":
            return f"ap_above{self.threshold:g}"
        return f"{'ap' if self.by == 'ap' else 'attribution'}_top{self.k}"

    def pick(self, table) -> list[Head]:
        """The selected (layer, head) pairs, best first, from a table with layer, head, ap, attribution."""
        column = "ap" if self.by == "ap" else "attribution"
        ranked = table.sort_values([column, "layer", "head"], ascending=[False, True, True], kind="stable")
        if self.rule == "ap_above":
            ranked = ranked[ranked["ap"] > self.threshold]
            if ranked.empty:
                raise ValueError(f"no head has a held-out probe AP above {self.threshold:g} (the best is "
                                 f"{table['ap'].max():.3f}); lower the threshold or use top_k(k)")
        else:
            if self.k > len(table):
                raise ValueError(f"top_k({self.k}) asks for more heads than the chosen layers have ({len(table)})")
            ranked = ranked.head(self.k)
        return [(int(l), int(h)) for l, h in zip(ranked["layer"], ranked["head"])]


def top_k(k: int = TOP_K, by: str = "ap") -> Selection:
    """The k heads with the largest held-out probe AP (by="ap", the paper) or bias attribution."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k needs a positive integer number of heads, got {k!r}")
    if by not in ("ap", "bias_attribution"):
        raise ValueError(f"top_k ranks by 'ap' or 'bias_attribution', got by={by!r}")
    return Selection("top_k", by=by, k=k)


def ap_above(threshold: float) -> Selection:
    """Every head whose held-out probe AP exceeds `threshold` (in [0, 1))."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"ap_above needs a threshold in [0, 1), got {threshold!r}")
    return Selection("ap_above", by="ap", threshold=float(threshold))


def _as_selection(select) -> Selection:
    if isinstance(select, Selection):
        return select
    if select == "bias_attribution":
        return top_k(TOP_K, by="bias_attribution")
    if select == "ap":
        return top_k(TOP_K)
    raise ValueError(f"select must be top_k(k), ap_above(t) or 'bias_attribution', got {select!r}")


def _resolve_layers(model, layers) -> list[int]:
    n = model.visual.cfg.n_layers
    if layers == "last":
        return [n - 1]
    if layers == "all":
        return list(range(n))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be 'last', 'all' or a non-empty list of layer indices, got {layers!r}")
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not -n <= l < n:
            raise ValueError(f"layer {l!r} is out of range: the image tower has layers 0..{n - 1}")
        out.append(l % n)
    if len(set(out)) != len(out):
        raise ValueError(f"layers has duplicates: {list(layers)}")
    return sorted(out)


@dataclass
class ExpertHeadsFinding:
    """What `find_expert_heads` found (docs/methods.md, "Expert heads").

    heads: the selection `select` made, best first; selections: {"probe_ap": [...], "bias_attribution":
    [...]}, both always computed (the other one picks as many heads); select: the `Selection`.
    table: tidy per-head DataFrame (layer, head, accuracy, auroc, ap on the held-out split, attribution,
    rank_ap, rank_attribution, selected, selected_ap, selected_attribution), best AP first.
    neurons: per-neuron DataFrame (layer, head, neuron, auroc, ap[, class]) for every coordinate of every
    head's pooled write (resid space, the coordinates neuron edits act on) in the chosen layers.
    attribution: [len(layers), n_heads] bias attribution; probes: the per-head `ProbeResult`;
    prototypes: per-class and neutral (balanced) prototypes of every head of the chosen layers (`Prototypes`,
    keys = class codes); class_names: {code: name}; positive_rate: share of the probe's positive class
    (chance level of a binary AP); n: images in the reference set.
    """

    attribute: str
    layers: list[int]
    select: Selection
    heads: list[Head]
    selections: dict[str, list[Head]]
    table: Any
    neurons: Any
    attribution: Tensor
    probes: Any
    prototypes: Any
    class_names: dict[int, str]
    positive_rate: float
    queries: list[str]
    target: Optional[str]
    reference: str
    n: int

    def selection_tag(self, name: str) -> str:
        """Readable tag of selection `name` for variant names ("ap_top3", "attribution_top3", "ap_above0.9")."""
        if name == self.select.name:
            return self.select.describe()
        k = len(self.selections[name])
        return f"{'ap' if name == 'probe_ap' else 'attribution'}_top{k}"

    def ranked(self, selection: str) -> list[Head]:
        """Every head of the chosen layers, best first by the score of `selection` ("probe_ap": held-out AP,
        "bias_attribution"): `top_k(k)` takes the first k of this list."""
        if selection not in self.selections:
            raise ValueError(f"unknown selection {selection!r}; choose one of {list(self.selections)}")
        by = "ap" if selection == "probe_ap" else "bias_attribution"
        return top_k(len(self.table), by=by).pick(self.table)

    def expert_neurons(self, threshold: float = NEURON_AP, selection: str = "probe_ap") -> list[tuple[int, int, int]]:
        """(layer, head, neuron) of the coordinates with AP > threshold inside the heads of `selection`
        (the paper: neurons of the expert heads with AP > 0.42)."""
        if selection not in self.selections:
            raise ValueError(f"unknown selection {selection!r}; choose one of {list(self.selections)}")
        heads = set(self.selections[selection])
        rows = self.neurons[self.neurons["ap"] > threshold]
        return [(int(r.layer), int(r.head), int(r.neuron)) for r in rows.itertuples()
                if (int(r.layer), int(r.head)) in heads]

    def summary(self) -> dict:
        """JSON-ready summary: attribute, layers, both selections, neuron counts."""
        return {"attribute": self.attribute, "layers": self.layers, "select": self.select.describe(),
                "selections": {k: [list(h) for h in v] for k, v in self.selections.items()},
                "n_reference": self.n, "positive_rate": self.positive_rate,
                "expert_neurons_ap_0.42": len(self.expert_neurons())}


def _query_setup(data, queries, target) -> tuple[list[str], Optional[list[int]]]:
    """Prompts and, with a target label, the target class code of each prompt."""
    from workbench.evaluation import query_prompts

    names = getattr(data, "label_names", {}) or {}
    if target is None:
        if queries is None:
            raise ValueError("without a target label, pass queries=[prompts] (every image counts as relevant "
                             "to every query)")
        if isinstance(queries, (str, bytes, Mapping)):
            raise TypeError("without a target label, queries must be a list of prompt strings")
        prompts = list(queries)
        if not prompts or not all(isinstance(q, str) for q in prompts):
            raise TypeError("queries must be a non-empty list of prompt strings")
        return prompts, None
    if target not in names:
        raise ValueError(f"the dataset has no class names for target {target!r} (label_names has "
                         f"{sorted(names)}); pass a dataset with label_names, or target=None with queries")
    classes = tuple(names[target])
    if queries is None:
        queries = {c: f"a photo of a {c}" for c in classes}
    return query_prompts(queries, classes, target)


def _neuron_table(writes: Tensor, y: Tensor, units):
    """AP / AUROC of every coordinate of every head's write (unit_scores); one-vs-rest → the best class."""
    from workbench.metrics import unit_scores

    table = unit_scores(writes, y, unit_index=units)
    if "class" in table.columns:  # > 2 classes: keep, per neuron, the class it ranks best
        best = table.groupby(["layer", "head", "neuron"], sort=False)["ap"].idxmax()
        table = table.loc[best.values].reset_index(drop=True)
    return table


def _prototypes_from_writes(writes: Tensor, y: Tensor, heads: list[Head], layer_pos: dict[int, int]):
    """Per-class means of the stored writes (float64) and the balanced neutral prototype, like
    `class_prototypes` (no second forward pass: the writes are already extracted)."""
    from workbench.primitives import Prototypes

    w = writes.double()
    classes, means, counts = {}, {}, {}
    for c in sorted(torch.unique(y).tolist()):
        mask = y == c
        means[c] = w[mask].mean(0)  # [Lc, H, d]
        counts[c] = int(mask.sum())
    neutral = torch.stack(list(means.values())).mean(0)

    def per_head(m: Tensor) -> dict:
        return {(l, h): m[layer_pos[l], h].float() for l, h in heads}

    for c, m in means.items():
        classes[c] = per_head(m)
    return Prototypes(classes=classes, neutral=per_head(neutral), counts=counts)


def _attribution_scores(embed: Tensor, image_embed: Tensor, text: Tensor, query_labels, y: Tensor) -> Tensor:
    """Bias attribution [Lc, H]: binary attributes directly; more classes one-vs-rest, averaged over classes."""
    classes = sorted(torch.unique(y).tolist())
    pairs = [(None, y)] if len(classes) == 2 and classes == [0, 1] else [(c, (y == c).long()) for c in classes]
    total = torch.zeros(embed.shape[1:3])
    for _, groups in pairs:
        skew = measured_skew(image_embed, text, query_labels, groups)
        total += bias_attribution(embed, image_embed, text, query_labels, groups, skew)
    return total / len(pairs)


@dataclass
class HeadWrites:
    """One extraction pass over a reference set, shared by findings for several attributes.

    writes: [n, len(layers), n_heads, d_model] pooled head writes (resid space); scale: [n, 1] ln_post σ;
    image_embed: [n, d_embed] (unnormalised); labels: {key: LongTensor [n]}; label_names: the dataset's.
    """

    layers: list[int]
    writes: Tensor
    scale: Tensor
    image_embed: Tensor
    labels: dict
    label_names: dict
    reference: str


def _check_data(data) -> Mapping:
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"data must be a dataset yielding (image, {{label: int}}), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("the reference set is empty")
    keys = data[0][1]
    if not isinstance(keys, Mapping):
        raise TypeError("data must yield (image, {label: int}) pairs; its items carry no label dict")
    return keys


@torch.no_grad()
def extract_head_writes(model, data, layers="last", batch_size: int = 128, progress: bool = True) -> HeadWrites:
    """The single extraction pass of `find_expert_heads` (`workbench.activations.extract`): each chosen layer's
    `blocks.{l}.attn.hook_cls_result`, `ln_post.hook_scale` and `hook_image_embed` at the pooled token.
    Pass the result as `writes=` to find experts for several attributes from one pass."""
    from workbench.activations import extract
    from workbench.models.decompose import _check_cls_pooling
    from workbench.models.hook_names import act_name

    layer_list = _resolve_layers(model, layers)
    _check_cls_pooling(model.visual)
    _check_data(data)
    names = [act_name("cls_result", l) for l in layer_list]
    scale_name, embed_name = act_name("ln_post_scale"), act_name("image_embed")
    store = extract(model, data, names + [scale_name, embed_name], batch_size=batch_size, progress=progress)
    return HeadWrites(layers=layer_list, writes=torch.stack([store[n].float() for n in names], dim=1),
                      scale=store[scale_name].float(), image_embed=store[embed_name].float(),
                      labels={k: torch.as_tensor(v).long() for k, v in store.labels.items()},
                      label_names=dict(getattr(data, "label_names", {}) or {}), reference=repr(data))


@torch.no_grad()
def find_expert_heads(model, data, attribute: str = "gender", layers="last", select=None, queries=None,
                      target: Optional[str] = "occupation", test_size: float = 0.5, seed: int = 0,
                      batch_size: int = 128, progress: bool = True,
                      writes: Optional[HeadWrites] = None) -> ExpertHeadsFinding:
    """Find the heads (and neurons) that encode `attribute` and the heads that carry it into retrieval.

    One extraction pass over `data` (a dataset yielding (image, {label: int}), raw or preprocessed as
    `extract` takes it; `extract_head_writes`) collects each chosen layer's pooled head writes
    (`blocks.{l}.attn.hook_cls_result`, resid space, [n, layers, heads, d_model]), the ln_post scale and the
    image embeddings. Then:

    - a linear probe per head on its write (`workbench.probes.probe`, held-out split of `test_size`):
      accuracy, AUROC, AP (macro one-vs-rest when `attribute` has more than 2 classes);
    - `unit_scores` of every coordinate of those writes (the neurons `Edit(target="neuron", head=h)` edits);
      more than 2 classes: one-vs-rest, each neuron keeps its best class;
    - bias attribution of each head (`bias_attribution` on the writes projected to the joint space with the
      clean run's ln_post scale): binary attributes directly, more classes one-vs-rest averaged;
    - class prototypes of every chosen head (per-class means of the writes; neutral = mean of class means).

    layers: "last" (the paper), "all", or a list of indices. select: `top_k(k)` (default top_k(3) by probe
    AP), `ap_above(t)`, or "bias_attribution" (top 3 by attribution); the other selection is computed too,
    with as many heads. queries: {target class: prompt} or one prompt per target class (default "a photo
    of a {class}" from `data.label_names[target]`); with target=None a list of prompts, each relevant to
    every image. writes: a `HeadWrites` from `extract_head_writes(model, data, layers)` to skip the pass.
    """
    from workbench.models.decompose import project_to_embed
    from workbench.probes import probe

    import pandas as pd

    selection = top_k(TOP_K) if select is None else _as_selection(select)
    layer_list = _resolve_layers(model, layers)
    if not isinstance(test_size, (int, float)) or isinstance(test_size, bool) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    keys = _check_data(data)  # check the labels before the extraction pass, not after
    for key, role in ((attribute, "attribute"), (target, "target")):
        if key is not None and key not in keys:
            hint = "" if role == "attribute" else " (pass target=None with queries=[...] for a gallery without one)"
            raise ValueError(f"the reference set has no label {key!r} (the {role}); it has {sorted(keys)}{hint}")
    prompts, codes = _query_setup(data, queries, target)
    if writes is None:
        writes = extract_head_writes(model, data, layer_list, batch_size=batch_size, progress=progress)
    elif not isinstance(writes, HeadWrites) or writes.layers != layer_list or len(writes.writes) != len(data):
        raise ValueError("writes must be extract_head_writes(model, data, layers) for the same data and layers "
                         f"({layer_list})")

    w = writes.writes  # [n, Lc, H, d_model]
    y = writes.labels[attribute]
    classes = sorted(torch.unique(y).tolist())
    if len(classes) < 2:
        raise ValueError(f"attribute {attribute!r} has a single class ({classes}) in the reference set; "
                         "expert heads need images of at least two classes")
    n_heads = w.shape[2]
    units = pd.DataFrame([(l, h) for l in layer_list for h in range(n_heads)], columns=["layer", "head"])
    probes = probe(w, y, unit_index=units, test_size=test_size, seed=seed)
    neuron_units = pd.DataFrame([(l, h, i) for l in layer_list for h in range(n_heads)
                                 for i in range(w.shape[3])], columns=["layer", "head", "neuron"])
    neurons = _neuron_table(w, y, neuron_units)

    embed = project_to_embed(model.visual, w, writes.scale)  # [n, Lc, H, d_embed]
    text = model.encode_text(prompts, normalize=True).float().cpu()
    query_labels = None
    if codes is not None:
        position = {c: i for i, c in enumerate(codes)}
        query_labels = torch.tensor([position.get(int(v), -1) for v in writes.labels[target]])
    attribution = _attribution_scores(embed, writes.image_embed, text, query_labels, y)

    table = probes.table[["layer", "head", "accuracy", "auroc", "ap"]].copy()
    table["attribution"] = attribution.flatten().numpy()  # same (layer, head) order as units
    table["rank_ap"] = table["ap"].rank(ascending=False, method="first").astype(int)
    table["rank_attribution"] = table["attribution"].rank(ascending=False, method="first").astype(int)
    picked = selection.pick(table)
    other = top_k(len(picked), by="bias_attribution" if selection.by == "ap" else "ap")
    selections = {selection.name: picked, other.name: other.pick(table)}
    selections = {k: selections[k] for k in SELECTION_NAMES}
    for key, col in (("probe_ap", "selected_ap"), ("bias_attribution", "selected_attribution")):
        chosen = set(selections[key])
        table[col] = [(int(l), int(h)) in chosen for l, h in zip(table["layer"], table["head"])]
    table["selected"] = table["selected_ap" if selection.by == "ap" else "selected_attribution"]
    table = table.sort_values(["ap", "layer", "head"], ascending=[False, True, True], ignore_index=True)

    layer_pos = {l: i for i, l in enumerate(layer_list)}
    all_heads = [(l, h) for l in layer_list for h in range(n_heads)]
    prototypes = _prototypes_from_writes(w, y, all_heads, layer_pos)
    label_names = writes.label_names.get(attribute)
    class_names = {c: (str(label_names[c]) if label_names is not None and c < len(label_names) else str(c))
                   for c in classes}
    positive = classes[-1]
    return ExpertHeadsFinding(
        attribute=attribute, layers=layer_list, select=selection, heads=picked, selections=selections,
        table=table, neurons=neurons, attribution=attribution, probes=probes, prototypes=prototypes,
        class_names=class_names, positive_rate=float((y == positive).double().mean()), queries=prompts,
        target=target, reference=writes.reference, n=len(y))


# ============================================================================================== intervene
def _slug(name: str) -> str:
    """A class name as a file-name-safe part of a variant name ("East Asian" → "east-asian")."""
    return re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "class"


def _head_variants(finding: ExpertHeadsFinding, selection: str, factor: float) -> dict:
    from workbench.primitives import ablate_heads

    heads, protos, tag = finding.selections[selection], finding.prototypes, finding.selection_tag(selection)
    out = {f"{tag}_neutral": ablate_heads(heads, op="replace", value=protos["neutral"])}
    for code, name in finding.class_names.items():
        out[f"{tag}_{_slug(name)}"] = ablate_heads(heads, op="replace", value=protos[code])
    out[f"{tag}_zero"] = ablate_heads(heads, op="zero")
    out[f"{tag}_damp{factor:g}"] = ablate_heads(heads, op="scale", factor=factor)
    return out


def _sweep_variants(finding: ExpertHeadsFinding, sizes: Sequence[int]) -> dict:
    """{ap|attribution}_top{k}_neutral for each k in `sizes` (capped at the heads of the chosen layers): how the
    effect grows with the number of heads neutralised, by either ranking."""
    from workbench.primitives import ablate_heads

    out = {}
    for selection, tag in (("bias_attribution", "attribution"), ("probe_ap", "ap")):
        ranked = finding.ranked(selection)
        for k in sorted({min(int(k), len(ranked)) for k in sizes}):
            out[f"{tag}_top{k}_neutral"] = ablate_heads(ranked[:k], op="replace", value=finding.prototypes["neutral"])
    return out


def _neuron_values(finding: ExpertHeadsFinding, neurons, key) -> dict:
    proto = finding.prototypes[key]
    return {(l, h, i): float(proto[(l, h)][i]) for l, h, i in neurons}


def _neuron_variants(finding: ExpertHeadsFinding, threshold: float, factor: float) -> dict:
    from workbench.primitives import ablate_neurons

    neurons = finding.expert_neurons(threshold, "probe_ap")
    if not neurons:
        return {}
    tag = f"neurons_ap{threshold:g}"
    out = {f"{tag}_neutral": ablate_neurons(neurons, op="replace", value=_neuron_values(finding, neurons, "neutral"))}
    for code, name in finding.class_names.items():
        out[f"{tag}_{_slug(name)}"] = ablate_neurons(neurons, op="replace",
                                                     value=_neuron_values(finding, neurons, code))
    out[f"{tag}_damp{factor:g}"] = ablate_neurons(neurons, op="scale", factor=factor)
    return out


def _intersectional_variants(a: ExpertHeadsFinding, b: ExpertHeadsFinding, selection: str, combinations: bool) -> dict:
    """a's heads with a's prototype + b's heads (those not already in a's set) with b's prototype."""
    from workbench.primitives import ablate_heads

    heads_a = a.selections[selection]
    heads_b = [hd for hd in b.selections[selection] if hd not in heads_a]
    sel = "ap" if selection == "probe_ap" else "attribution"
    tag = f"intersectional_{_slug(a.attribute)}_{_slug(b.attribute)}_{sel}"

    def both(key_a, key_b):
        iv = ablate_heads(heads_a, op="replace", value=a.prototypes[key_a])
        return iv + ablate_heads(heads_b, op="replace", value=b.prototypes[key_b]) if heads_b else iv

    out = {f"{tag}_neutral": both("neutral", "neutral")}
    if combinations:
        for ca, na in a.class_names.items():
            for cb, nb in b.class_names.items():
                out[f"{tag}_{_slug(na)}_{_slug(nb)}"] = both(ca, cb)
    return out


def expert_variants(finding: ExpertHeadsFinding, *, intersect: Sequence[ExpertHeadsFinding] = (),
                    factor: float = DAMPING, neuron_threshold: float = NEURON_AP, single_heads: bool = True,
                    combinations: bool = True, sweep: Sequence[int] = ()) -> dict:
    """Every intervention of the method on `finding`'s experts, as {readable name: Intervention}.

    For each selection (tag "ap_top3", "attribution_top3", "ap_above0.9", ...):
      {tag}_neutral (neutral prototype), {tag}_{class} (each class's prototype, e.g. ap_top3_male),
      {tag}_zero (zero ablation), {tag}_damp{factor} (head write × factor).
    Neurons (coordinates with AP > neuron_threshold inside the probe-AP experts; none → no variant):
      neurons_ap{t}_neutral, neurons_ap{t}_{class}, neurons_ap{t}_damp{factor}.
    single_heads: head_L{l}H{h}_neutral for every head of either selection.
    sweep: head counts k (e.g. (1, 2, 4, 6, 8)): {ap|attribution}_top{k}_neutral, the top k of each ranking
      (`finding.ranked`) with the neutral prototype, to see how many heads the effect needs.
    intersect: findings for other attributes (e.g. ethnicity): intersectional_{a}_{b}_{ap|attribution}_neutral
      and, with combinations, _{class_a}_{class_b} (the paper's "Male+White"): a's heads get a's prototype,
      b's heads (those not in a's set) b's. All edits act on `blocks.{l}.attn.hook_cls_result` at the pooled
      token, so every variant exports as an `InterventionSpec`.
    """
    if not isinstance(finding, ExpertHeadsFinding):
        raise TypeError("expert_variants needs an ExpertHeadsFinding (find_expert_heads), got "
                        f"{type(finding).__name__}")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 <= factor <= 1:
        raise ValueError(f"factor (damping) must be in [0, 1], got {factor!r}")
    if isinstance(neuron_threshold, bool) or not isinstance(neuron_threshold, (int, float)) \
            or not 0 <= neuron_threshold < 1:
        raise ValueError(f"neuron_threshold must be an AP in [0, 1), got {neuron_threshold!r}")
    if isinstance(sweep, (int, str)) or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in sweep):
        raise ValueError(f"sweep must be a sequence of positive head counts, e.g. (1, 2, 4, 6), got {sweep!r}")
    if isinstance(intersect, ExpertHeadsFinding):
        intersect = [intersect]
    for other in intersect:
        if not isinstance(other, ExpertHeadsFinding):
            raise TypeError(f"intersect takes ExpertHeadsFinding objects, got {type(other).__name__}")
        if other.attribute == finding.attribute:
            raise ValueError(f"intersect needs findings for other attributes than {finding.attribute!r}")
    from workbench.primitives import ablate_heads

    variants: dict = {}
    for selection in ("bias_attribution", "probe_ap"):
        variants.update(_head_variants(finding, selection, factor))
    variants.update(_neuron_variants(finding, neuron_threshold, factor))
    for name, iv in _sweep_variants(finding, sweep).items():
        variants.setdefault(name, iv)  # top-k of the selection itself is already there
    if single_heads:
        for l, h in dict.fromkeys(finding.selections["bias_attribution"] + finding.selections["probe_ap"]):
            variants[f"head_L{l}H{h}_neutral"] = ablate_heads([(l, h)], op="replace",
                                                              value=finding.prototypes["neutral"])
    for other in intersect:
        for selection in ("bias_attribution", "probe_ap"):
            variants.update(_intersectional_variants(finding, other, selection, combinations))
    return variants


def variant_spec(model, name: str, intervention, finding: ExpertHeadsFinding, **provenance):
    """`InterventionSpec` of one variant, its provenance naming the method, attribute, variant and selections."""
    from workbench.primitives import InterventionSpec

    fields = {"dataset": finding.reference, "attribute": finding.attribute, "variant": name,
              "layers": ",".join(map(str, finding.layers)), **provenance}
    return InterventionSpec.from_edits(model, intervention, method="expert_heads", **fields)
