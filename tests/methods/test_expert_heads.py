"""Expert heads (the seed): bias attribution by hand on small tensors, head selection, and the whole
method on the shipped model checked against an independent route (model.visual.head_contributions)."""
import pytest
import torch

from workbench.data import SynthSocial, vocab
from workbench.methods.expert_heads import (
    bias_attribution,
    expert_heads,
    measured_skew,
    neutral_prototype_intervention,
    top_heads,
)
from workbench.models import load_clip

QUERIES = [f"a photo of a {o}" for o in vocab.OCCUPATIONS]


def _toy():
    """4 images, 1 layer × 2 heads, d=2, one query along e0. Head 0 writes 0.5·e0 on group-1 images and
    0.1·e0 on group-0 images; head 1 writes e1 everywhere (orthogonal to the query)."""
    heads = torch.zeros(4, 1, 2, 2)
    groups = torch.tensor([1, 1, 0, 0])
    heads[:, 0, 0, 0] = torch.tensor([0.5, 0.5, 0.1, 0.1])
    heads[:, 0, 1, 1] = 1.0
    image_embed = torch.tensor([[2.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # norms 2, 2, 1, 1
    text = torch.tensor([[1.0, 0.0]])
    return heads, image_embed, text, torch.zeros(4, dtype=torch.long), groups


def test_bias_attribution_by_hand():
    heads, image_embed, text, queries, groups = _toy()
    # share = contribution · text / ‖image_embed‖: head 0 → 0.5/2 = 0.25 (group 1), 0.1/1 = 0.1 (group 0).
    score = bias_attribution(heads, image_embed, text, queries, groups, skew=torch.tensor([1.0]))
    torch.testing.assert_close(score, torch.tensor([[0.25 - 0.1, 0.0]]))
    flipped = bias_attribution(heads, image_embed, text, queries, groups, skew=torch.tensor([-1.0]))
    torch.testing.assert_close(flipped, -score)


def test_bias_attribution_sums_over_queries_with_their_skew():
    heads, image_embed, text, _, groups = _toy()
    heads, image_embed = torch.cat([heads, heads]), torch.cat([image_embed, image_embed])
    queries, groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.cat([groups, 1 - groups])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # query 1 sees the groups swapped, so with skew −1 it adds the same +0.15 again
    score = bias_attribution(heads, image_embed, text, queries, groups, skew=torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(score, torch.tensor([[0.3, 0.0]]))


def test_bias_attribution_refuses_bad_inputs():
    heads, image_embed, text, queries, groups = _toy()
    skew = torch.tensor([1.0])
    with pytest.raises(ValueError, match=r"compares two groups coded 0 and 1; groups has values \[0, 1, 2\]"):
        bias_attribution(heads, image_embed, text, queries, torch.tensor([0, 1, 2, 1]), skew)
    with pytest.raises(ValueError, match=r"query 0 has no relevant image in group 0"):
        bias_attribution(heads, image_embed, text, torch.tensor([0, 0, 1, 1]), groups, skew)
    with pytest.raises(ValueError, match=r"heads must be \[n, layers, heads, d_embed\], got shape \(4, 2, 2\)"):
        bias_attribution(heads[:, 0], image_embed, text, queries, groups, skew)
    with pytest.raises(ValueError, match=r"image_embed must be \[n, d_embed\] = \[4, 2\] like heads, got \(3, 2\)"):
        bias_attribution(heads, image_embed[:3], text, queries, groups, skew)
    with pytest.raises(ValueError, match=r"text must be \[n_queries, d_embed=2\], got \(1, 3\)"):
        bias_attribution(heads, image_embed, torch.ones(1, 3), queries, groups, skew)
    with pytest.raises(ValueError, match=r"query_labels must have one entry per image \(4\), got shape \(3,\)"):
        bias_attribution(heads, image_embed, text, queries[:3], groups, skew)
    with pytest.raises(ValueError, match=r"skew must have one entry per query \(1\), got shape \(2,\)"):
        bias_attribution(heads, image_embed, text, queries, groups, torch.tensor([1.0, 1.0]))


def test_top_heads_orders_by_score():
    scores = torch.tensor([[0.1, 0.9, -1.0], [0.5, 0.0, 0.7]])
    assert top_heads(scores, 3) == [(0, 1), (1, 2), (1, 0)]
    assert top_heads(scores, 1) == [(0, 1)]
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.6 \(the number of heads\), got 7"):
        top_heads(scores, 7)
    with pytest.raises(ValueError, match=r"k must be an integer in 1\.\.6 .* got 0"):
        top_heads(scores, 0)
    with pytest.raises(ValueError, match=r"scores must be \[layers, heads\], got shape \(6,\)"):
        top_heads(scores.flatten(), 2)


# ---------------------------------------------------------------------------------------------- shipped model
@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def reference(model):
    return SynthSocial("test_balanced", seed=1, n=256, transform=model.preprocess)


@pytest.fixture(scope="module")
def found(model, reference):
    return expert_heads(model, reference, QUERIES, attribute="gender", target="occupation", k=3, progress=False)


def test_measured_skew_recovers_the_planted_direction(model, reference):
    images, labels = SynthSocial("test_balanced", seed=1, n=256).tensors()
    with torch.no_grad():
        embed = model.encode_image(model.preprocess(images))
        text = model.encode_text(QUERIES, normalize=True)
    skew = measured_skew(embed, text, labels["occupation"], labels["gender"])
    planted = torch.sign(torch.as_tensor(reference.config.female_probs()) - 0.5).float()
    assert torch.equal(skew, planted)


def test_expert_heads_matches_an_independent_route(model, reference, found):
    """Attribution recomputed from model.visual.head_contributions (no extraction store), same heads."""
    images, labels = SynthSocial("test_balanced", seed=1, n=256).tensors()
    x = model.preprocess(images)
    with torch.no_grad():
        heads = model.visual.head_contributions(x, space="embed")
        embed = model.encode_image(x)
        text = model.encode_text(QUERIES, normalize=True)
    planted = torch.sign(torch.as_tensor(reference.config.female_probs()) - 0.5).float()
    expected = bias_attribution(heads, embed, text, labels["occupation"], labels["gender"], planted)
    torch.testing.assert_close(found.attribution, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert found.heads == top_heads(expected, 3)
    assert found.attribution[found.heads[0]] > 0.01  # a real signal, not noise around zero


def test_the_intervention_replaces_the_selected_heads_with_the_neutral_prototype(model, reference, found):
    from workbench.primitives import class_prototypes

    images, labels = SynthSocial("test_balanced", seed=1, n=256).tensors()
    protos = class_prototypes(model, model.preprocess(images), labels["gender"], heads=found.heads)
    assert [(e.layer, e.head) for e in found.intervention] == found.heads
    for e in found.intervention:
        assert e.op == "replace"
        neutral = (protos[0][(e.layer, e.head)] + protos[1][(e.layer, e.head)]) / 2
        torch.testing.assert_close(e.value, neutral, rtol=1e-5, atol=1e-5 * neutral.abs().max().item())


def test_a_raw_reference_set_gives_the_same_prototypes(model, reference, found):
    """A dataset without a transform is preprocessed by the same rule as extract, not fed raw."""
    raw = SynthSocial("test_balanced", seed=1, n=256)
    intervention, _ = neutral_prototype_intervention(model, raw, "gender", found.heads)
    for mine, theirs in zip(intervention, found.intervention):
        torch.testing.assert_close(mine.value, theirs.value, rtol=1e-5, atol=1e-5 * theirs.value.abs().max().item())


def test_table_and_spec(model, found):
    from workbench.methods import get_method, method_for_spec

    table = found.table()
    assert len(table) == 6 * 8
    assert list(table.columns) == ["layer", "head", "attribution", "accuracy", "auroc", "ap", "selected"]
    assert table["attribution"].is_monotonic_decreasing
    assert [(int(r.layer), int(r.head)) for r in table[table.selected].itertuples()] == found.heads
    assert table["ap"].between(0, 1).all() and table["ap"].max() > 0.8  # some head encodes gender
    spec = found.to_spec(model)
    assert spec.provenance["method"] == "expert_heads" and spec.provenance["selection"] == "bias_attribution"
    assert spec.provenance["attribute"] == "gender" and "test_balanced" in spec.provenance["dataset"]
    assert method_for_spec(spec) is get_method("expert_heads")


def test_expert_heads_refuses_bad_inputs(model, reference):
    with pytest.raises(TypeError, match="queries must be a list of prompt strings"):
        expert_heads(model, reference, "a photo of a doctor", progress=False)
    with pytest.raises(ValueError, match=r"the reference set has no label 'religion'; it has \['age', "):
        expert_heads(model, reference, QUERIES, attribute="religion", progress=False)
    with pytest.raises(ValueError, match=r"compares two groups coded 0 and 1; attribute 'ethnicity' has values "
                                         r"\[0, 1, 2, 3\]. Pass a binary attribute"):
        expert_heads(model, reference, QUERIES, attribute="ethnicity", progress=False)
