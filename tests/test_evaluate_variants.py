"""evaluate_variants: every metric equals the metric function it comes from, cached variants equal forward
passes, edits outside the last block's pooled row take the forward path and are still right, text-tower edits
re-encode the prompts, intervals and paired tests behave, bad input is refused with a specific message."""
import numpy as np
import pytest
import torch

from tests.tolerance import assert_fp32_close
from workbench.data import SynthSocial, vocab
from workbench.evaluation import (EvaluationResult, caption_gender, embed_images, evaluate_variants,
                                  neutralize_caption, retrieval_report, synthsocial_captions)
from workbench.metrics import (bias_at_k, mean_average_precision, ndcg, ndkl, normalized_entropy_at_k, recall_at_k,
                               relevance_from_labels, zero_shot_accuracy)
from workbench.models import load_clip
from workbench.primitives import EditError, InterventionSpec, ablate_heads, ablate_latents, ablate_neurons, intervene

N_BOOT = 200
QUERIES = {o: f"a photo of a {o}" for o in vocab.OCCUPATIONS}


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def dataset():
    return SynthSocial("test_balanced", seed=2, n=128)


@pytest.fixture(scope="module")
def variants(model):
    last = ablate_heads([(5, 1), (5, 3)], op="zero")
    return {
        "last_zero": last,
        "last_mix": ablate_heads([(5, 2)], op="scale", factor=0.1) + ablate_neurons([(5, None, [1, 2, 3])], op="zero")
        + ablate_neurons([(5, 4, [0, 9])], op="set", value=0.5),
        "early": ablate_heads([(2, 1), (3, 0)], op="zero"),
        "all_positions": ablate_heads([(5, 1), (5, 3)], op="zero", position="all"),
        "text": ablate_heads([(l, h) for l in range(3) for h in range(8)], op="zero", tower="text"),
        "spec": InterventionSpec.from_edits(model, last.edits),
    }


@pytest.fixture(scope="module")
def result(model, dataset, variants):
    return evaluate_variants(model, dataset, variants, n_boot=N_BOOT, progress=False)


@pytest.fixture(scope="module")
def uncached(model, dataset, variants):
    return evaluate_variants(model, dataset, variants, n_boot=N_BOOT, progress=False, use_cache=False)


def _metric(result, variant, metric):
    t = result.table
    return t[(t.variant == variant) & (t.metric == metric)].iloc[0]


# ---------------------------------------------------------------------------------------------- paths
def test_paths_cached_only_for_the_last_blocks_pooled_row(result, uncached):
    assert result.paths == {"baseline": "forward", "last_zero": "cached", "last_mix": "cached", "early": "forward",
                            "all_positions": "forward", "text": "baseline", "spec": "cached"}
    assert set(uncached.paths.values()) == {"forward", "baseline"}
    assert result.variants[0] == "baseline"


def test_cached_variants_equal_forward_passes(result, uncached, model, dataset, variants):
    for name in ("last_zero", "last_mix", "spec"):
        assert_fp32_close(result.embeddings[name], uncached.embeddings[name], msg=name)
    with intervene(model, variants["last_mix"]):
        assert_fp32_close(result.embeddings["last_mix"], embed_images(model, dataset))
    # metrics from the cache agree with those of forward passes (rank-based: equal unless a near-tie flips)
    for name in ("last_zero", "last_mix"):
        for m, v in result.per_query[name].items():
            np.testing.assert_allclose(v, uncached.per_query[name][m], atol=2e-3, err_msg=f"{name} {m}")


def test_fallback_variants_are_right(result, model, dataset, variants):
    base = embed_images(model, dataset)
    assert_fp32_close(result.embeddings["baseline"], base)
    for name in ("early", "all_positions"):
        with intervene(model, variants[name]):
            assert_fp32_close(result.embeddings[name], embed_images(model, dataset), msg=name)
        assert (result.embeddings[name] - base).abs().max() > 1e-3
    # a text-tower edit leaves the images alone and re-encodes every prompt under the edit
    assert torch.equal(result.embeddings["text"], result.embeddings["baseline"])
    with intervene(model, variants["text"]):
        expected = model.encode_text(list(QUERIES.values()), normalize=True)
    assert_fp32_close(result.prompt_embeddings["text"]["queries"], expected)
    assert (expected - result.text).abs().max() > 1e-3
    assert not np.allclose(result.per_query["text"]["map"], result.per_query["baseline"]["map"])


# ---------------------------------------------------------------------------------------------- values
def test_metrics_equal_the_metric_functions(result, model, dataset):
    emb, labels = result.embeddings["baseline"], dataset.labels
    text = model.encode_text(list(QUERIES.values()), normalize=True).float()
    sim = text @ emb.T
    rel = relevance_from_labels(np.arange(8), labels["occupation"].numpy())
    report = retrieval_report(model, emb, labels, QUERIES, groups=("gender", "ethnicity"))
    expected = {
        "zero_shot_accuracy": zero_shot_accuracy(sim.T, labels["occupation"]),
        "map": mean_average_precision(sim, rel), "ndcg": ndcg(sim, rel),
        "gender_ndkl": ndkl(sim, labels["gender"], n_groups=2, relevant_mask=rel),
        "ethnicity_ndkl": ndkl(sim, labels["ethnicity"], n_groups=4, relevant_mask=rel),
        "gender_ethnicity_ndkl": ndkl(sim, labels["gender"] * 4 + labels["ethnicity"], n_groups=8, relevant_mask=rel),
        "gender_maxskew_at_100": report["gender_maxskew_at_100"],
    }
    assert report["gender_ndkl"] == pytest.approx(expected["gender_ndkl"], abs=1e-12)
    assert report["zero_shot_accuracy"] == pytest.approx(expected["zero_shot_accuracy"], abs=1e-12)
    for name, value in expected.items():
        assert _metric(result, "baseline", name).value == pytest.approx(value, abs=1e-6), name
    words = [f"a photo of a {a} person" for a in vocab.ADJECTIVES]
    wsim = model.encode_text(words, normalize=True).float() @ emb.T
    assert _metric(result, "baseline", "gender_entropy_adjectives").value == pytest.approx(
        normalized_entropy_at_k(wsim, labels["gender"], 100, n_groups=2), abs=1e-6)
    captions = synthsocial_captions(labels)
    csim = model.encode_text(captions, normalize=True).float() @ emb.T
    for k in (1, 5, 10):
        assert _metric(result, "baseline", f"recall_at_{k}").value == pytest.approx(
            recall_at_k(csim, torch.arange(128), k), abs=1e-6)
    neutral = list(dict.fromkeys(neutralize_caption(c) for c in captions))
    nsim = model.encode_text(neutral, normalize=True).float() @ emb.T
    row = _metric(result, "baseline", "bias_at_5")
    assert row.n == len(neutral) < 128  # one query per distinct neutral caption
    assert row.value == pytest.approx(bias_at_k(nsim, labels["gender"], 5, classes=(0, 1), denominator="pair"),
                                      abs=1e-6)


def test_table_keys_intervals_and_wide(result):
    keys = ["zero_shot_accuracy", "map", "ndcg", "gender_ndkl", "ethnicity_ndkl", "gender_ethnicity_ndkl",
            "gender_maxskew_at_100", "ethnicity_maxskew_at_100", "gender_entropy_adjectives",
            "gender_entropy_occupations", "ethnicity_entropy_adjectives", "ethnicity_entropy_occupations",
            "recall_at_1", "recall_at_5", "recall_at_10", "bias_at_1", "bias_at_5", "bias_at_10"]
    assert result.metrics == keys
    t = result.table
    assert list(t.columns) == ["variant", "metric", "value", "lo", "hi", "n"]
    assert len(t) == len(keys) * len(result.variants)
    assert (t.lo <= t.value + 1e-12).all() and (t.value <= t.hi + 1e-12).all()
    assert (t.hi > t.lo).any()
    assert set(t[t.metric == "map"].n) == {8} and set(t[t.metric == "zero_shot_accuracy"].n) == {128}
    wide = result.wide()
    assert list(wide.index) == result.variants and list(wide.columns) == keys
    assert wide.loc["early", "gender_ndkl"] == _metric(result, "early", "gender_ndkl").value
    row = _metric(result, "early", "map")
    assert result.wide(intervals=True).loc["early", "map"] == f"{row.value:.4f} [{row.lo:.4f}, {row.hi:.4f}]"


def test_bootstrap_is_seeded_and_resamples_queries(model, dataset, result):
    again = evaluate_variants(model, dataset, {}, n_boot=N_BOOT, progress=False)
    base = result.table[result.table.variant == "baseline"].reset_index(drop=True)
    assert again.table.equals(base)
    other = evaluate_variants(model, dataset, {}, n_boot=N_BOOT, seed=1, progress=False)
    assert np.allclose(other.table.value, base.value) and not np.allclose(other.table.lo, base.lo)
    # the interval is the percentile interval of the mean over resampled queries
    values = result.per_query["baseline"]["map"]
    idx = result._families["queries"].index
    assert idx.shape == (N_BOOT, 8)
    row = _metric(result, "baseline", "map")
    assert (row.lo, row.hi) == pytest.approx(tuple(np.quantile(values[idx].mean(1), [0.025, 0.975])))


def test_paired_comparisons(result):
    same = result.compare("baseline", "baseline", "gender_ndkl")
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "beyond_noise": False}
    c = result.comparisons
    assert set(c.variant) == set(result.variants[1:]) and len(c) == 6 * len(result.metrics)
    row = c[(c.variant == "early") & (c.metric == "gender_ndkl")].iloc[0]
    d = result.per_query["early"]["gender_ndkl"] - result.per_query["baseline"]["gender_ndkl"]
    assert row["diff"] == pytest.approx(d.mean())
    assert row["beyond_noise"] == (row["lo"] > 0 or row["hi"] < 0) == result.beyond_noise("early", "baseline",
                                                                                           "gender_ndkl")
    text = c[(c.variant == "text")].set_index("metric")
    assert text.loc["map", "beyond_noise"]  # zeroing every text head ruins retrieval
    with pytest.raises(KeyError, match="no variant 'nope'"):
        result.compare("nope", "baseline", "map")
    with pytest.raises(KeyError, match="no metric 'auc'"):
        result.beyond_noise("early", "baseline", "auc")


def test_a_tuple_gallery_and_custom_prompts(model, dataset, result):
    images, labels = dataset.tensors()
    got = evaluate_variants(model, (images, labels), {"last_zero": ablate_heads([(5, 1), (5, 3)], op="zero")},
                            queries={"nurse": "a photo of a nurse", "pilot": "a photo of a pilot"},
                            groups="gender", word_lists={"jobs": ["a photo of a chef"]}, captions=False,
                            top_k=20, n_boot=N_BOOT, progress=False)
    assert got.metrics == ["zero_shot_accuracy", "map", "ndcg", "gender_ndkl", "gender_maxskew_at_20",
                           "gender_entropy_jobs"]
    assert got.paths["last_zero"] == "cached" and got.queries == ["a photo of a nurse", "a photo of a pilot"]
    assert _metric(got, "baseline", "zero_shot_accuracy").n == 32  # only images of the queried classes
    assert_fp32_close(got.embeddings["last_zero"], result.embeddings["last_zero"])


# ---------------------------------------------------------------------------------------------- captions
def test_caption_gender_and_neutralising():
    assert caption_gender("a young white female nurse in a hospital") == "female"
    assert caption_gender("A man and his Brothers") == "male"
    assert caption_gender("a man and a woman") is None and caption_gender("a nurse") is None
    assert caption_gender("a manager") is None  # whole words only
    assert neutralize_caption("a young white female nurse in a hospital") == "a young white person nurse in a hospital"
    assert neutralize_caption("two Women and a boy") == "two people and a person"


def test_synthsocial_captions_name_each_images_labels(dataset):
    labels = dataset.labels
    captions = synthsocial_captions(labels)
    assert len(captions) == 128
    for c, o, g in zip(captions[:20], labels["occupation"], labels["gender"]):
        assert vocab.OCCUPATIONS[o] in c and caption_gender(c) == vocab.GENDERS[g]
    with pytest.raises(ValueError, match="unknown caption template 'fancy'"):
        synthsocial_captions(labels, template="fancy")


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_is_refused(model, dataset):
    def run(variants=None, **kw):
        return evaluate_variants(model, dataset, {} if variants is None else variants, progress=False,
                                 **{"n_boot": N_BOOT, **kw})

    with pytest.raises(TypeError, match="variants must be a mapping"):
        run([ablate_heads([(5, 1)])])
    with pytest.raises(ValueError, match="'baseline' is reserved"):
        run({"baseline": ablate_heads([(5, 1)])})
    with pytest.raises(EditError, match="variant 'bad'.*layer 9 out of range"):
        run({"bad": ablate_heads([(9, 1)])})
    with pytest.raises(EditError, match="variant 'junk'"):
        run({"junk": "zero heads"})
    with pytest.raises(ValueError, match="n_boot must be an integer >= 100"):
        run(n_boot=10)
    with pytest.raises(ValueError, match="captions has 3 entries but the gallery has 128"):
        run(captions=["a", "b", "c"])
    with pytest.raises(ValueError, match="word list names become metric keys"):
        run(word_lists={"my list": ["a photo of a nurse"]})
    with pytest.raises(ValueError, match="no class names for label 'religion'"):
        run(groups=("religion",))
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate_variants(model, (torch.zeros(0, 3, 64, 64), {}), {}, progress=False)
    with pytest.raises(ValueError, match="needs a CLIP model with both towers"):
        evaluate_variants(model.visual, dataset, {}, progress=False)
    with pytest.raises(TypeError, match="gallery must be a dataset"):
        evaluate_variants(model, 3, {}, progress=False)
    images, labels = dataset.tensors()
    nurses = labels["occupation"] == 1
    with pytest.raises(ValueError, match=r"no image of 'occupation' class\(es\) \['doctor'"):
        evaluate_variants(model, (images[nurses], {k: v[nurses] for k, v in labels.items()}), {}, progress=False,
                          captions=False, top_k=5)
    with pytest.warns(UserWarning, match="fewer than top_k=100"):
        small = evaluate_variants(model, (images[:64], {k: v[:64] for k, v in labels.items()}), {}, n_boot=N_BOOT,
                                  progress=False, captions=False)
    assert "gender_maxskew_at_64" in small.metrics and isinstance(small, EvaluationResult)


def test_a_gallery_without_a_target_label(model, dataset, result):
    images, labels = dataset.tensors()
    faces = {"gender": labels["gender"], "ethnicity": labels["ethnicity"]}  # like FairFace: no occupation
    prompts = ["a photo of a nurse", "a photo of a pilot", "a photo of a chef"]
    got = evaluate_variants(model, (images, faces), {"last_zero": ablate_heads([(5, 1), (5, 3)], op="zero")},
                            queries=prompts, target=None, word_lists={}, n_boot=N_BOOT, progress=False)
    assert got.metrics == ["gender_ndkl", "ethnicity_ndkl", "gender_ethnicity_ndkl", "gender_maxskew_at_100",
                           "ethnicity_maxskew_at_100"]
    emb = got.embeddings["baseline"]
    assert_fp32_close(emb, result.embeddings["baseline"])
    sim = model.encode_text(prompts, normalize=True).float() @ emb.T
    assert _metric(got, "baseline", "gender_ndkl").value == pytest.approx(ndkl(sim, faces["gender"], n_groups=2),
                                                                          abs=1e-6)
    assert _metric(got, "baseline", "gender_ndkl").n == 3
    with pytest.raises(ValueError, match="with target=None pass queries as a non-empty list of prompts"):
        evaluate_variants(model, (images, faces), {}, target=None, progress=False)
    with pytest.raises(ValueError, match="labels have no key 'occupation'"):
        evaluate_variants(model, (images, faces), {}, progress=False)


def test_hooks_already_on_the_model_turn_the_cache_off(model, dataset):
    images, labels = dataset.tensors()
    gallery = (images[:64], {k: v[:64] for k, v in labels.items()})
    outer, inner = ablate_heads([(5, 2)], op="zero"), ablate_heads([(5, 1)], op="scale", factor=0.1)
    with pytest.warns(UserWarning, match="fewer than top_k"), intervene(model, outer):
        got = evaluate_variants(model, gallery, {"inner": inner}, captions=False, word_lists={}, n_boot=N_BOOT,
                                progress=False)
    assert got.paths["inner"] == "forward"  # the cached pass would have applied the outer edit twice
    with intervene(model, outer + inner):
        assert_fp32_close(got.embeddings["inner"], embed_images(model, gallery[0]))
    assert repr(got).startswith("EvaluationResult(2 variants ['baseline', 'inner'], 8 metrics")


def test_an_sae_variant_takes_the_forward_path(model, dataset, tmp_path):
    from tests.primitives.conftest import random_sae
    from workbench.primitives import apply

    sae_dir = tmp_path / "sae"
    random_sae(128, 256).save_model(sae_dir)  # on the last block's residual stream of the shipped model (d_model 128)
    spec = InterventionSpec.from_edits(model, ablate_latents([3, 7], op="zero", layer=5, position="pooled"),
                                       sae=sae_dir, alpha=0.5)
    images, labels = dataset.tensors()
    gallery = (images[:64], {k: v[:64] for k, v in labels.items()})
    with pytest.warns(UserWarning, match="fewer than top_k"):
        got = evaluate_variants(model, gallery, {"sae": spec}, captions=False, word_lists={}, n_boot=N_BOOT,
                                progress=False)
    assert got.paths["sae"] == "forward"
    with apply(model, spec):
        expected = embed_images(model, gallery[0])
    assert_fp32_close(got.embeddings["sae"], expected)
    assert (expected - got.embeddings["baseline"]).abs().max() > 1e-3


def test_ndkl_chance_levels_and_cut():
    """The result carries each NDKL metric's chance level (a random ranking's expected NDKL on this gallery,
    equal to `ndkl_chance` under the SISPI protocol) and `cut` reads a variant's change against it."""
    from workbench.data import SynthSocial
    from workbench.evaluation import evaluate_variants
    from workbench.metrics import ndkl_chance
    from workbench.models import load_clip
    from workbench.primitives import ablate_heads

    model = load_clip("synthsocial")
    gallery = SynthSocial("test_balanced", seed=0, n=256)
    result = evaluate_variants(model, gallery, {"zero": ablate_heads([(5, 0)])}, groups=("gender", "ethnicity"),
                               captions=False, word_lists=None, progress=False, n_boot=100)
    labels = gallery.labels
    relevant = (labels["occupation"][None, :] == torch.arange(8)[:, None]).numpy()
    assert result.chance["gender_ndkl"] == pytest.approx(ndkl_chance(labels["gender"], relevant_mask=relevant))
    joint = labels["gender"] * 4 + labels["ethnicity"]
    assert result.chance["gender_ethnicity_ndkl"] == pytest.approx(
        ndkl_chance(joint, n_groups=8, relevant_mask=relevant))
    assert set(result.chance) == {"gender_ndkl", "ethnicity_ndkl", "gender_ethnicity_ndkl"}
    b, v = result.value("baseline", "gender_ndkl"), result.value("zero", "gender_ndkl")
    cut = result.cut("zero", "gender_ndkl")
    assert cut["relative"] == pytest.approx(1 - v / b)
    assert cut["of_excess"] == pytest.approx((b - v) / (b - result.chance["gender_ndkl"]))
    assert "of_excess" not in result.cut("zero", "map")


def test_forward_variants_read_the_gallery_once(monkeypatch):
    """Variants that need a forward pass reuse the preprocessed batches of the first pass (within the memory budget),
    with the same embeddings as a streamed run; over the budget the gallery is streamed for every pass."""
    import workbench.evaluation as evaluation

    reads = []
    original = SynthSocial.__getitem__
    monkeypatch.setattr(SynthSocial, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    model = load_clip("synthsocial")
    gallery = SynthSocial("test_balanced", seed=0, n=128)
    variants = {f"L{l}": ablate_heads([(l, 0)]) for l in (0, 1, 2)}  # early layers: forward passes
    kwargs = dict(groups=("gender",), captions=False, word_lists=None, progress=False, n_boot=100, use_cache=False)
    a = evaluate_variants(model, gallery, variants, **kwargs)
    # each image once, + item 0 once more: the image source looks at it to tell raw images from model inputs
    assert len(reads) == 128 + 1 and set(a.paths.values()) == {"forward"}
    reads.clear()
    monkeypatch.setattr(evaluation._Replay.__init__, "__defaults__", (1000,))  # nothing fits: stream every pass
    b = evaluate_variants(model, gallery, variants, **kwargs)
    assert len(reads) == 4 * (128 + 1)
    for name in a.variants:
        assert torch.equal(a.embeddings[name], b.embeddings[name]), name
