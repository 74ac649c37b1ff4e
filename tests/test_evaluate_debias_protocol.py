"""evaluate_variants, the SEM / DebiasLens protocol: TextOverride variants, lists of specs as one variant,
bias-query KL / MaxSkew (uniform and prior targets), worst-group accuracy with its interval, and joining two
results. Every value is checked against the metric function it comes from, computed here by hand."""
import numpy as np
import pytest
import torch

from workbench.data import SynthSocial, prompt_sets, vocab
from workbench.evaluation import TextOverride, evaluate_variants
from workbench.metrics import kl_divergence_at_k, max_skew_at_k, worst_group_accuracy
from workbench.models import load_clip
from workbench.primitives import Edit, InterventionSpec, apply

N_BOOT = 200
TOP_K = 40
SPURIOUS_QUERIES = {"chef": "a photo of a chef", "farmer": "a photo of a farmer"}


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def sets():
    ps = prompt_sets("synthsocial")
    return {"occupations": ps.occupations, "stereotypes": ps.stereotypes}


@pytest.fixture(scope="module")
def gallery():
    return SynthSocial("test_balanced", seed=3, n=192)


def _shift(model):
    """A text override that moves every prompt toward "a photo of a woman" (a crude, visible text-side change)."""
    woman = model.encode_text(["a photo of a woman"], normalize=True)

    def fn(prompts):
        return torch.nn.functional.normalize(model.encode_text(prompts), dim=-1) + 0.7 * woman
    return fn


def _specs(model):
    d = model.cfg.embed_dim if hasattr(model, "cfg") else model.visual.cfg.d_embed
    g = torch.Generator().manual_seed(0)
    img = Edit(target="direction", op="project_out", hook="hook_image_embed", value=torch.randn(d, generator=g))
    txt = Edit(target="direction", op="project_out", hook="text.hook_text_embed", tower="text",
               value=torch.randn(d, generator=g))
    return InterventionSpec.from_edits(model, [img]), InterventionSpec.from_edits(model, [txt])


@pytest.fixture(scope="module")
def result(model, gallery, sets):
    return evaluate_variants(model, gallery, {"same": TextOverride(lambda p: model.encode_text(p), "model's own"),
                                              "shift": TextOverride(_shift(model), "toward woman"),
                                              "both": list(_specs(model))},
                             bias_queries=sets, word_lists={}, captions=False, top_k=TOP_K, n_boot=N_BOOT,
                             progress=False)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@torch.no_grad()
def _by_hand(model, images, prompts, groups, n_groups, prior):
    sim = (model.encode_text(prompts, normalize=True) @ images.T).numpy()
    kl = kl_divergence_at_k(sim, groups, TOP_K, prior=prior, n_groups=n_groups)
    skew = max_skew_at_k(sim, groups, TOP_K, prior=prior, n_groups=n_groups)
    return kl, skew


def test_bias_queries_equal_the_metric_functions(result, model, sets):
    images = result.embeddings["baseline"]
    for name, prompts in sets.items():
        for g in ("gender", "ethnicity"):
            codes = result.labels[g].numpy()
            for prior, tag in (("uniform", ""), ("pool", "_prior")):
                kl, skew = _by_hand(model, images, prompts, codes, len(vocab.LABEL_NAMES[g]), prior)
                assert result.value("baseline", f"{g}_kl{tag}_{name}") == pytest.approx(kl, abs=1e-9)
                assert result.value("baseline", f"{g}_maxskew{tag}_{name}") == pytest.approx(skew, abs=1e-9)
    row = result.table[(result.table.variant == "baseline") & (result.table.metric == "gender_kl_stereotypes")]
    assert int(row["n"].iloc[0]) == len(sets["stereotypes"])
    assert row["lo"].iloc[0] <= row["value"].iloc[0] <= row["hi"].iloc[0]


def test_prior_and_uniform_targets_differ_on_an_unbalanced_gallery(model, sets):
    # a gallery with 3× more men than women: the pool prior is not uniform, so KL to it is another number
    ds = SynthSocial("test_balanced", seed=4, n=256)
    keep = [i for i in range(len(ds)) if ds[i][1]["gender"] == 0 or i % 3 == 0]
    from torch.utils.data import Subset

    sub = Subset(ds, keep)
    sub.label_names = ds.label_names
    r = evaluate_variants(model, sub, {}, bias_queries={"occupations": sets["occupations"]}, groups=("gender",),
                          word_lists={}, captions=False, top_k=TOP_K, n_boot=N_BOOT, progress=False)
    codes = r.labels["gender"].numpy()
    assert 0.2 < codes.mean() < 0.4
    kl_u, _ = _by_hand(model, r.embeddings["baseline"], sets["occupations"], codes, 2, "uniform")
    kl_p, _ = _by_hand(model, r.embeddings["baseline"], sets["occupations"], codes, 2, "pool")
    assert r.value("baseline", "gender_kl_occupations") == pytest.approx(kl_u, abs=1e-9)
    assert r.value("baseline", "gender_kl_prior_occupations") == pytest.approx(kl_p, abs=1e-9)
    assert abs(kl_u - kl_p) > 1e-3


def test_a_text_override_replaces_every_prompt_embedding(result, model, sets):
    same, base = result.per_query["same"], result.per_query["baseline"]
    for m in base:  # the model's own embeddings, renormalised: the same rankings, the same metrics
        np.testing.assert_allclose(same[m], base[m], atol=1e-6)
    assert result.paths["shift"] == "baseline"  # the image tower is left alone
    assert torch.equal(result.embeddings["shift"], result.embeddings["baseline"])
    shifted = torch.nn.functional.normalize(_shift(model)(sets["stereotypes"]), dim=-1)
    sim = (shifted @ result.embeddings["baseline"].T).numpy()
    codes = result.labels["gender"].numpy()
    want = max_skew_at_k(sim, codes, TOP_K, n_groups=2)
    assert result.value("shift", "gender_maxskew_stereotypes") == pytest.approx(want, abs=1e-9)
    # pulling every query toward "woman" makes the top k more female: the skew grows, beyond noise
    assert result.value("shift", "gender_maxskew_stereotypes") > result.value("baseline", "gender_maxskew_stereotypes")


def test_a_list_of_specs_is_applied_together(result, model, gallery, sets):
    image_spec, text_spec = _specs(model)
    with apply(model, image_spec), apply(model, text_spec):
        text = model.encode_text(sets["occupations"], normalize=True)
        images = torch.cat([model.encode_image(model.preprocess(gallery[i][0])[None], normalize=True)
                            for i in range(len(gallery))])
    torch.testing.assert_close(result.embeddings["both"], images, atol=1e-5, rtol=1e-5)
    sim = (text @ images.T).numpy()
    want = kl_divergence_at_k(sim, result.labels["gender"].numpy(), TOP_K, prior="uniform", n_groups=2)
    assert result.value("both", "gender_kl_occupations") == pytest.approx(want, abs=1e-6)
    assert result.paths["both"] == "forward"


@pytest.fixture(scope="module")
def spurious(model):
    # the chef prompt becomes a kitchen prompt: farmers photographed in a kitchen are now called chefs
    shift = TextOverride(lambda p: model.encode_text(
        [q.replace("a photo of a chef", "a photo of a person in a kitchen") for q in p]), "chef → kitchen")
    return evaluate_variants(model, SynthSocial("test_spurious", n=512), {"same": None, "kitchen": shift},
                             target="target", groups=(), worst_group="spurious", queries=SPURIOUS_QUERIES,
                             word_lists={}, captions=False, n_boot=N_BOOT, progress=False)


def test_worst_group_accuracy_equals_the_metric_function(spurious, model):
    labels = spurious.labels
    for variant in ("baseline", "kitchen"):
        text = spurious.prompt_embeddings.get(variant, {"queries": spurious.text})["queries"]
        logits = spurious.embeddings[variant] @ text.T
        want, table = worst_group_accuracy(logits, labels["target"],
                                           {"target": labels["target"], "spurious": labels["spurious"]})
        assert spurious.value(variant, "worst_group_accuracy") == pytest.approx(want, abs=1e-12)
        row = spurious.table[(spurious.table.variant == variant) & (spurious.table.metric == "worst_group_accuracy")]
        assert row["lo"].iloc[0] <= want + 1e-12 and row["hi"].iloc[0] <= 1.0
        assert int(row["n"].iloc[0]) == 512
    assert spurious.value("kitchen", "worst_group_accuracy") < spurious.value("baseline", "worst_group_accuracy")
    cmp = spurious.compare("kitchen", "baseline", "worst_group_accuracy")
    assert cmp["diff"] == pytest.approx(spurious.value("kitchen", "worst_group_accuracy")
                                        - spurious.value("baseline", "worst_group_accuracy"))
    assert cmp["lo"] <= cmp["diff"] <= cmp["hi"] or cmp["lo"] == cmp["hi"]
    same = spurious.compare("same", "baseline", "worst_group_accuracy")
    assert same == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "beyond_noise": False}


def test_worst_group_interval_resamples_images(spurious):
    fam = spurious._families[spurious._family_of["worst_group_accuracy"]]
    values, groups = spurious.per_query["kitchen"]["worst_group_accuracy"], spurious.grouped["worst_group_accuracy"]
    boot = fam.worst_group_means(values, groups)
    by_loop = [min(values[idx][groups[idx] == g].mean() for g in np.unique(groups[idx])) for idx in fam.index[:20]]
    np.testing.assert_allclose(boot[:20], by_loop, atol=1e-12)


def test_join(result, spurious, model, gallery):
    with pytest.raises(ValueError, match="same variants"):
        result.join(spurious)
    left = evaluate_variants(model, SynthSocial("test_spurious", seed=1, n=64), {"same": None, "kitchen": None},
                             target="target", groups=(), queries=SPURIOUS_QUERIES, word_lists={}, captions=False,
                             n_boot=N_BOOT, progress=False)
    with pytest.raises(ValueError, match="suffix"):
        left.join(spurious)
    with pytest.raises(KeyError, match="no metric"):
        left.join(spurious, metrics=["nope"])
    j = left.join(spurious, metrics=["worst_group_accuracy"])
    assert j.metrics == [*left.metrics, "worst_group_accuracy"]
    assert j.value("kitchen", "worst_group_accuracy") == spurious.value("kitchen", "worst_group_accuracy")
    assert j.compare("kitchen", "baseline", "worst_group_accuracy") == spurious.compare(
        "kitchen", "baseline", "worst_group_accuracy")
    assert j.compare("kitchen", "baseline", "map") == left.compare("kitchen", "baseline", "map")
    s = left.join(spurious, suffix="_spurious")
    assert "map_spurious" in s.metrics and s.value("baseline", "map_spurious") == spurious.value("baseline", "map")


def test_bad_input_is_refused(model, gallery, sets):
    kw = dict(word_lists={}, captions=False, n_boot=N_BOOT, progress=False)
    with pytest.raises(TypeError, match="callable"):
        TextOverride("not a function")
    with pytest.raises(ValueError, match=r"returned shape \(1, 64\) for 8 prompts"):
        evaluate_variants(model, gallery, {"bad": TextOverride(lambda p: torch.zeros(1, 64), "bad")}, **kw)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_variants(model, gallery, {"nan": TextOverride(
            lambda p: torch.full((len(p), model.encode_text(["a"]).shape[1]), float("nan")))}, **kw)
    with pytest.raises(ValueError, match="identifier"):
        evaluate_variants(model, gallery, {}, bias_queries={"two words": ["a photo of a chef"]}, **kw)
    with pytest.raises(ValueError, match="non-empty list"):
        evaluate_variants(model, gallery, {}, bias_queries={"occupations": []}, **kw)
    with pytest.raises(ValueError, match="groups="):
        evaluate_variants(model, gallery, {}, bias_queries=sets, groups=(), **kw)
    with pytest.raises(ValueError, match="worst_group needs a target"):
        evaluate_variants(model, gallery, {}, target=None, queries=["a photo of a chef"], worst_group="scene", **kw)
    with pytest.raises(ValueError, match="no key 'spurious'"):
        evaluate_variants(model, gallery, {}, worst_group="spurious", label_names={**vocab.LABEL_NAMES,
                                                                                   "spurious": ("a", "b")}, **kw)
    spec = InterventionSpec.from_edits(model, [Edit(target="head", op="zero", layer=5, head=1)])
    with pytest.raises(TypeError, match="mixes InterventionSpecs"):
        evaluate_variants(model, gallery, {"mixed": [spec, Edit(target="head", op="zero", layer=5, head=2)]}, **kw)


def test_a_failing_spec_in_a_list_leaves_no_hooks_behind(model):
    from workbench.evaluation import _applied
    from workbench.models.hooks import is_active
    from workbench.primitives import SpecError

    image_spec, _ = _specs(model)
    with pytest.raises(SpecError, match="no spec file at 'not a spec'"):  # applying the second one fails
        with _applied(model, [image_spec, "not a spec"]):
            pass
    assert not any(is_active(h) for h in model.hook_dict.values())
    with _applied(model, [image_spec]):  # and a good list applies
        assert is_active(model.hook_dict["hook_image_embed"])
    assert not is_active(model.hook_dict["hook_image_embed"])
