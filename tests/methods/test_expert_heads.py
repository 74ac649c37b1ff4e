"""Expert heads: bias attribution by hand on small tensors, head selection, the first version and
find_expert_heads on the shipped model checked against independent routes (model.visual.head_contributions,
unit_scores, class_prototypes), the variants and their specs, and the causality check against random heads."""
import pytest
import torch

from workbench.data import SynthSocial, vocab
from workbench.methods.expert_heads import (
    ExpertHeadsFinding,
    ap_above,
    bias_attribution,
    expert_heads,
    expert_variants,
    extract_head_writes,
    find_expert_heads,
    measured_skew,
    neutral_prototype_intervention,
    top_heads,
    top_k,
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


# ============================================================================================== find_expert_heads


def _head_table():
    import pandas as pd

    return pd.DataFrame({"layer": [5, 5, 5, 4], "head": [0, 1, 2, 7], "ap": [0.7, 0.9, 0.8, 0.95],
                         "attribution": [0.3, -0.1, 0.2, 0.0]})


def test_selections_pick_from_the_table():
    table = _head_table()
    assert top_k(2).pick(table) == [(4, 7), (5, 1)]
    assert top_k(2, by="bias_attribution").pick(table) == [(5, 0), (5, 2)]
    assert ap_above(0.75).pick(table) == [(4, 7), (5, 1), (5, 2)]
    assert top_k(3).describe() == "ap_top3" and top_k(3, by="bias_attribution").describe() == "attribution_top3"
    assert ap_above(0.9).describe() == "ap_above0.9" and top_k(1).name == "probe_ap"


def test_selections_refuse_bad_input():
    with pytest.raises(ValueError, match=r"no head has a held-out probe AP above 0.99 \(the best is 0.950\)"):
        ap_above(0.99).pick(_head_table())
    with pytest.raises(ValueError, match=r"top_k\(5\) asks for more heads than the chosen layers have \(4\)"):
        top_k(5).pick(_head_table())
    with pytest.raises(ValueError, match="top_k needs a positive integer number of heads, got 0"):
        top_k(0)
    with pytest.raises(ValueError, match="top_k ranks by 'ap' or 'bias_attribution', got by='auroc'"):
        top_k(3, by="auroc")
    with pytest.raises(ValueError, match=r"ap_above needs a threshold in \[0, 1\), got 1.5"):
        ap_above(1.5)


@pytest.fixture(scope="module")
def raw_reference():
    return SynthSocial("test_balanced", seed=1, n=256)


@pytest.fixture(scope="module")
def writes(model, raw_reference):
    return extract_head_writes(model, raw_reference, "last", progress=False)


@pytest.fixture(scope="module")
def gender(model, raw_reference, writes):
    return find_expert_heads(model, raw_reference, "gender", writes=writes, progress=False)


@pytest.fixture(scope="module")
def ethnicity(model, raw_reference, writes):
    return find_expert_heads(model, raw_reference, "ethnicity", writes=writes, progress=False)


def test_find_expert_heads_table_and_selections(gender):
    table = gender.table
    assert isinstance(gender, ExpertHeadsFinding) and gender.layers == [5] and gender.n == 256
    assert list(table.columns) == ["layer", "head", "accuracy", "auroc", "ap", "attribution", "rank_ap",
                                   "rank_attribution", "selected_ap", "selected_attribution", "selected"]
    assert len(table) == 8 and set(table["layer"]) == {5} and table["ap"].is_monotonic_decreasing
    assert table["ap"].between(0, 1).all() and table["ap"].max() > 0.8  # gender is linearly readable
    by_ap = table.sort_values("ap", ascending=False)
    by_attr = table.sort_values("attribution", ascending=False)
    assert gender.selections["probe_ap"] == [(5, int(h)) for h in by_ap["head"][:3]] == gender.heads
    assert gender.selections["bias_attribution"] == [(5, int(h)) for h in by_attr["head"][:3]]
    assert sorted(table["rank_ap"]) == list(range(1, 9))
    assert table["selected"].equals(table["selected_ap"]) and table["selected_attribution"].sum() == 3
    assert 0.45 < gender.positive_rate < 0.55 and gender.class_names == {0: "male", 1: "female"}


def test_attribution_and_neurons_match_an_independent_route(model, raw_reference, gender):
    """Attribution from model.visual.head_contributions (embed space); neuron AP from unit_scores on the
    resid-space writes of another forward route."""
    from workbench.metrics import unit_scores

    images, labels = raw_reference.tensors()
    x = model.preprocess(images)
    with torch.no_grad():
        embed_heads = model.visual.head_contributions(x, layers=[5], space="embed")
        resid_heads = model.visual.head_contributions(x, layers=[5], space="resid")
        embed = model.encode_image(x)
        text = model.encode_text(QUERIES, normalize=True)
    skew = measured_skew(embed, text, labels["occupation"], labels["gender"])
    expected = bias_attribution(embed_heads, embed, text, labels["occupation"], labels["gender"], skew)[0]
    got = torch.tensor([gender.table.set_index("head").loc[h, "attribution"] for h in range(8)], dtype=torch.float32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    scores = unit_scores(resid_heads[:, 0], labels["gender"], unit_index=["head", "neuron"])
    assert len(gender.neurons) == 8 * 128 and list(gender.neurons.columns) == ["layer", "head", "neuron", "auroc", "ap"]
    # rank-based scores: a near-tie flipped by fp32 round-off moves an AP by ~1/n at most
    assert (gender.neurons["ap"].to_numpy() - scores["ap"].to_numpy()).__abs__().max() < 2e-3


def test_prototypes_equal_class_prototypes(model, raw_reference, gender):
    from workbench.primitives import class_prototypes

    images, labels = raw_reference.tensors()
    heads = [(5, h) for h in range(8)]
    expected = class_prototypes(model, model.preprocess(images), labels["gender"], heads=heads)
    for key in (0, 1, "neutral"):
        for hd in heads:
            e = expected[key][hd]
            torch.testing.assert_close(gender.prototypes[key][hd], e, rtol=1e-5, atol=1e-5 * e.abs().max().item())
    assert gender.prototypes.counts == expected.counts


def test_multiclass_attribute_is_one_vs_rest(ethnicity):
    neurons = ethnicity.neurons
    assert len(neurons) == 8 * 128 and "class" in neurons.columns  # each neuron keeps its best class
    assert set(neurons["class"]) <= {0, 1, 2, 3}
    assert torch.isfinite(ethnicity.attribution).all() and ethnicity.attribution.abs().max() > 0
    assert ethnicity.class_names == {0: "white", 1: "black", 2: "asian", 3: "indian"}
    assert ethnicity.table["ap"].max() > 0.5  # macro AP over 4 classes, well above chance (0.25)


def test_layers_and_a_gallery_without_target(model, raw_reference, writes):
    everything = find_expert_heads(model, raw_reference, "gender", layers="all", select="bias_attribution",
                                   progress=False)
    assert everything.layers == list(range(6)) and len(everything.table) == 48
    assert everything.heads == everything.selections["bias_attribution"]
    assert everything.table.set_index(["layer", "head"]).loc[5]["ap"].sort_index().tolist() == pytest.approx(
        find_expert_heads(model, raw_reference, "gender", layers=[5], writes=writes,
                          progress=False).table.set_index("head")["ap"].sort_index().tolist(), abs=0.02)
    free = find_expert_heads(model, raw_reference, "gender", target=None, queries=QUERIES[:2], writes=writes,
                             progress=False)
    images, labels = raw_reference.tensors()
    x = model.preprocess(images)
    with torch.no_grad():
        embed_heads = model.visual.head_contributions(x, layers=[5], space="embed")
        embed = model.encode_image(x)
        text = model.encode_text(QUERIES[:2], normalize=True)
    skew = measured_skew(embed, text, None, labels["gender"])
    expected = bias_attribution(embed_heads, embed, text, None, labels["gender"], skew)
    torch.testing.assert_close(free.attribution, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_find_expert_heads_refuses_bad_input(model, raw_reference, writes):
    with pytest.raises(ValueError, match=r"no label 'religion' \(the attribute\); it has \['age', "):
        find_expert_heads(model, raw_reference, "religion", progress=False)
    with pytest.raises(ValueError, match=r"no label 'job' \(the target\).*pass target=None with queries"):
        find_expert_heads(model, raw_reference, "gender", target="job", progress=False)
    with pytest.raises(ValueError, match=r"without a target label, pass queries=\[prompts\]"):
        find_expert_heads(model, raw_reference, "gender", target=None, progress=False)
    with pytest.raises(ValueError, match="layers must be 'last', 'all' or a non-empty list"):
        find_expert_heads(model, raw_reference, "gender", layers="first", progress=False)
    with pytest.raises(ValueError, match=r"layer 6 is out of range: the image tower has layers 0..5"):
        find_expert_heads(model, raw_reference, "gender", layers=[6], progress=False)
    with pytest.raises(ValueError, match="select must be top_k"):
        find_expert_heads(model, raw_reference, "gender", select="random", progress=False)
    with pytest.raises(ValueError, match=r"test_size must be a fraction in \(0, 1\), got 1.5"):
        find_expert_heads(model, raw_reference, "gender", test_size=1.5, progress=False)
    with pytest.raises(ValueError, match=r"writes must be extract_head_writes\(model, data, layers\)"):
        find_expert_heads(model, raw_reference, "gender", layers="all", writes=writes, progress=False)
    from torch.utils.data import Subset

    men = Subset(raw_reference, [i for i in range(256) if raw_reference[i][1]["gender"] == 0])
    men.label_names = raw_reference.label_names
    with pytest.raises(ValueError, match=r"attribute 'gender' has a single class \(\[0\]\)"):
        find_expert_heads(model, men, "gender", progress=False)


# ============================================================================================== expert_variants
def test_variant_names_and_edits(gender, ethnicity):
    variants = expert_variants(gender, intersect=[ethnicity], combinations=False)
    ap, attr = gender.selections["probe_ap"], gender.selections["bias_attribution"]
    expected = [f"{t}_{s}" for t in ("attribution_top3", "ap_top3") for s in ("neutral", "male", "female", "zero",
                                                                               "damp0.1")]
    expected += [f"neurons_ap0.42_{s}" for s in ("neutral", "male", "female", "damp0.1")]
    expected += [f"head_L{l}H{h}_neutral" for l, h in dict.fromkeys(attr + ap)]
    expected += ["intersectional_gender_ethnicity_attribution_neutral", "intersectional_gender_ethnicity_ap_neutral"]
    assert list(variants) == expected
    neutral = variants["ap_top3_neutral"]
    assert [(e.layer, e.head, e.op) for e in neutral] == [(l, h, "replace") for l, h in ap]
    for e in neutral:
        assert torch.equal(e.value, gender.prototypes["neutral"][(e.layer, e.head)])
    assert all(torch.equal(e.value, gender.prototypes[1][(e.layer, e.head)]) for e in variants["ap_top3_female"])
    assert [(e.op, e.value) for e in variants["attribution_top3_damp0.1"]] == [("scale", 0.1)] * 3
    assert [e.op for e in variants["attribution_top3_zero"]] == ["zero"] * 3
    neurons = gender.expert_neurons()
    damp = variants["neurons_ap0.42_damp0.1"]
    assert sorted((e.layer, e.head, i) for e in damp for i in e.index) == sorted(neurons)
    assert all(e.target == "neuron" and e.op == "scale" for e in damp)
    (l, h, i), = [n for n in neurons[:1]]
    first = variants["neurons_ap0.42_male"][0]
    assert first.value[list(first.index).index(i)].item() == pytest.approx(gender.prototypes[0][(l, h)][i].item())
    inter = variants["intersectional_gender_ethnicity_ap_neutral"]
    eth_only = [hd for hd in ethnicity.selections["probe_ap"] if hd not in ap]
    assert [(e.layer, e.head) for e in inter] == ap + eth_only  # shared heads are edited once, with gender's prototype
    assert all(torch.equal(e.value, ethnicity.prototypes["neutral"][(e.layer, e.head)]) for e in inter[len(ap):])


def test_head_count_sweep(gender):
    """sweep=(1, 4, 20): the top k of each ranking (k capped at the 8 heads of the layer), neutral prototype; the
    top-3 selection's own variant is not duplicated."""
    table = gender.table
    by_attr = [(5, int(h)) for h in table.sort_values("attribution", ascending=False)["head"]]
    by_ap = [(5, int(h)) for h in table.sort_values("ap", ascending=False)["head"]]
    assert gender.ranked("bias_attribution") == by_attr and gender.ranked("probe_ap") == by_ap
    variants = expert_variants(gender, sweep=(1, 4, 20, 3), single_heads=False)
    for tag, ranked in (("attribution", by_attr), ("ap", by_ap)):
        for k in (1, 3, 4, 8):
            edits = variants[f"{tag}_top{k}_neutral"]
            assert [(e.layer, e.head, e.op) for e in edits] == [(l, h, "replace") for l, h in ranked[:k]]
            assert all(torch.equal(e.value, gender.prototypes["neutral"][(e.layer, e.head)]) for e in edits)
    assert not any(name.endswith("top20_neutral") for name in variants)
    assert list(variants).count("ap_top3_neutral") == 1
    with pytest.raises(ValueError, match="sweep must be a sequence of positive head counts"):
        expert_variants(gender, sweep=(0, 2))
    with pytest.raises(ValueError, match="sweep must be a sequence of positive head counts"):
        expert_variants(gender, sweep=4)
    with pytest.raises(ValueError, match="unknown selection 'x'"):
        gender.ranked("x")


def test_intersectional_combinations_and_class_names(gender, ethnicity):
    variants = expert_variants(gender, intersect=ethnicity, single_heads=False)
    combos = [v for v in variants if v.startswith("intersectional_gender_ethnicity_ap_") and not v.endswith("neutral")]
    assert combos == [f"intersectional_gender_ethnicity_ap_{g}_{e}" for g in ("male", "female")
                      for e in ("white", "black", "asian", "indian")]
    assert not any(v.startswith("head_") for v in variants)


def test_expert_variants_refuses_bad_input(gender):
    with pytest.raises(TypeError, match="expert_variants needs an ExpertHeadsFinding"):
        expert_variants({"heads": []})
    with pytest.raises(ValueError, match=r"factor \(damping\) must be in \[0, 1\], got 2"):
        expert_variants(gender, factor=2)
    with pytest.raises(ValueError, match=r"neuron_threshold must be an AP in \[0, 1\), got -0.1"):
        expert_variants(gender, neuron_threshold=-0.1)
    with pytest.raises(ValueError, match="intersect needs findings for other attributes than 'gender'"):
        expert_variants(gender, intersect=[gender])
    assert not any(v.startswith("neurons_") for v in expert_variants(gender, neuron_threshold=0.999))


def test_every_variant_exports_and_reapplies_bit_exactly(model, gender, ethnicity, tmp_path):
    from workbench.methods.expert_heads import variant_spec
    from workbench.primitives import InterventionSpec, apply, intervene

    images, _ = SynthSocial("test_balanced", seed=3, n=64).tensors()
    x = model.preprocess(images[:8])
    for name, iv in expert_variants(gender, intersect=[ethnicity], combinations=False).items():
        path = variant_spec(model, name, iv, gender).save(tmp_path / f"{name}.json")
        spec = InterventionSpec.load(path)
        assert spec.provenance["variant"] == name and spec.provenance["method"] == "expert_heads"
        with intervene(model, iv):
            expected = model.encode_image(x)
        with apply(model, spec):
            assert torch.equal(model.encode_image(x), expected), name
        assert not torch.equal(expected, model.encode_image(x)), f"{name} changes nothing"


# ============================================================================================== causality
@pytest.mark.slow
def test_ablating_the_experts_hurts_a_gender_probe_more_than_random_heads(model):
    """A gender probe trained on clean final image embeddings (one half of a gallery) loses more accuracy on the
    other half when the selected experts are replaced by their neutral prototype than when as many random heads
    (10 seeded draws over the same layers) are. Selections from every layer (layers="all"). Measured on the
    shipped model: probe_ap 0.879, bias_attribution 0.781, random mean 0.901, clean 0.920 (512 test images);
    with layers="last": probe_ap 0.902, bias_attribution 0.906, random 0.911."""
    import random

    from workbench.evaluation import embed_images
    from workbench.primitives import ablate_heads, intervene
    from workbench.probes import LinearProbes

    reference = SynthSocial("test_balanced", seed=1, n=1024)
    images, labels = SynthSocial("test_balanced", seed=2, n=1024).tensors()
    gender = labels["gender"]
    train, test = torch.arange(0, 1024, 2), torch.arange(1, 1024, 2)
    found = find_expert_heads(model, reference, "gender", layers="all", progress=False)
    clean = embed_images(model, images[train])
    probe = LinearProbes().fit(clean[:, None], gender[train])

    def accuracy(heads) -> float:
        with intervene(model, ablate_heads(heads, op="replace", value=found.prototypes["neutral"])):
            emb = embed_images(model, images[test])
        return float(probe.score(emb[:, None], gender[test])[0])

    pool = [(l, h) for l in found.layers for h in range(8)]
    rng = random.Random(0)
    random_mean = sum(accuracy(rng.sample(pool, 3)) for _ in range(10)) / 10
    for selection, heads in found.selections.items():
        assert len(heads) == 3
        assert accuracy(heads) < random_mean, selection


@pytest.mark.slow
def test_neutralising_the_attribution_experts_cuts_gender_ndkl_on_a_fresh_gallery(model):
    """The method's claim on the shipped model: the best variant of `workbench experts --layers all` (the six heads
    with the largest bias attribution, from every layer, replaced by the neutral prototype) cuts gender NDKL by at
    least 30 % beyond noise, with mAP down ≤ 0.02 and zero-shot accuracy down ≤ 2 points. The variant was picked on
    the command's gallery (test_balanced seed 0); this re-measures it on test_balanced seed 2, which played no part
    in the choice. Measured: 0.0954 → 0.0420 (−56 %; chance 0.0349, so 88 % of the part above chance)."""
    from workbench.evaluation import evaluate_variants
    from workbench.methods.expert_heads import top_k
    from workbench.primitives import ablate_heads

    reference = SynthSocial("test_balanced", seed=1, n=1024)
    found = find_expert_heads(model, reference, "gender", layers="all", select=top_k(6, by="bias_attribution"),
                              progress=False)
    heads = found.selections["bias_attribution"]
    variant = ablate_heads(heads, op="replace", value=found.prototypes["neutral"])
    result = evaluate_variants(model, SynthSocial("test_balanced", seed=2, n=2048), {"experts": variant},
                               groups=("gender",), captions=False, word_lists=None, progress=False)
    assert result.cut("experts", "gender_ndkl")["relative"] >= 0.30
    assert result.beyond_noise("experts", "baseline", "gender_ndkl")
    assert result.value("baseline", "map") - result.value("experts", "map") <= 0.02
    assert result.value("baseline", "zero_shot_accuracy") - result.value("experts", "zero_shot_accuracy") <= 0.02
