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

from collections.abc import Sequence
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


def _check_attribution_inputs(heads: Tensor, image_embed: Tensor, text: Tensor, query_labels: Tensor,
                              groups: Tensor) -> None:
    if heads.ndim != 4:
        raise ValueError(f"heads must be [n, layers, heads, d_embed], got shape {tuple(heads.shape)}")
    n, d = heads.shape[0], heads.shape[-1]
    if tuple(image_embed.shape) != (n, d):
        raise ValueError(f"image_embed must be [n, d_embed] = [{n}, {d}] like heads, got {tuple(image_embed.shape)}")
    if text.ndim != 2 or text.shape[1] != d:
        raise ValueError(f"text must be [n_queries, d_embed={d}], got {tuple(text.shape)}")
    for name, v in (("query_labels", query_labels), ("groups", groups)):
        if tuple(v.shape) != (n,):
            raise ValueError(f"{name} must have one entry per image ({n}), got shape {tuple(v.shape)}")


@torch.no_grad()
def measured_skew(image_embed: Tensor, text: Tensor, query_labels: Tensor, groups: Tensor) -> Tensor:
    """The direction each query leans, measured: sign(mean similarity of group 1 − of group 0) over the
    images relevant to the query. image_embed [n, d], text [Q, d] normalised → [Q] of ±1 (0 on a tie)."""
    groups = _check_groups(groups, "groups")
    sim = (image_embed / image_embed.norm(dim=-1, keepdim=True)) @ text.T  # [n, Q]
    skew = torch.zeros(len(text))
    for o in range(len(text)):
        mine = query_labels == o
        g1, g0 = mine & (groups == 1), mine & (groups == 0)
        if not g1.any() or not g0.any():
            raise ValueError(f"query {o} has no relevant image in group {0 if not g0.any() else 1}; "
                             "every query needs images of both groups")
        skew[o] = torch.sign(sim[g1, o].mean() - sim[g0, o].mean())
    return skew


@torch.no_grad()
def bias_attribution(heads: Tensor, image_embed: Tensor, text: Tensor, query_labels: Tensor, groups: Tensor,
                     skew: Tensor) -> Tensor:
    """How much each head's direct contribution pushes retrieval towards each query's skew.

    heads [n, L, H, d_embed] (direct contributions, e.g. `head_contributions(...)["head_contributions"]`),
    image_embed [n, d_embed] (unnormalised), text [Q, d_embed] (normalised query embeddings),
    query_labels [n] (the query each image is relevant to: class code 0..Q−1), groups [n] (0/1),
    skew [Q] (+1: the query favours group 1, −1: group 0).

    Returns [L, H]: Σ_q skew_q · (mean over group-1 − mean over group-0 images relevant to q) of the head's
    share of the cosine similarity to query q (its contribution · text_q / ‖image_embed‖).
    """
    heads, image_embed, text = heads.float(), image_embed.float(), text.float()
    query_labels, groups = torch.as_tensor(query_labels), _check_groups(groups, "groups")
    _check_attribution_inputs(heads, image_embed, text, query_labels, groups)
    skew = torch.as_tensor(skew, dtype=torch.float32)
    if tuple(skew.shape) != (len(text),):
        raise ValueError(f"skew must have one entry per query ({len(text)}), got shape {tuple(skew.shape)}")
    share = torch.einsum("nlhd,od->nolh", heads, text) / image_embed.norm(dim=-1)[:, None, None, None]
    score = torch.zeros(heads.shape[1:3])
    for o in range(len(text)):
        mine = query_labels == o
        g1, g0 = mine & (groups == 1), mine & (groups == 0)
        if not g1.any() or not g0.any():
            raise ValueError(f"query {o} has no relevant image in group {0 if not g0.any() else 1}; "
                             "every query needs images of both groups")
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
