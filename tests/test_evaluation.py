"""evaluation: embed_images over tensors and datasets, retrieval_report over any prompts and label keys;
values checked against the metric functions and by hand, bad input refused with a specific message."""
import pytest
import torch

from workbench.data import SynthSocial, vocab
from workbench.evaluation import embed_images, query_prompts, retrieval_report
from workbench.metrics import max_skew_at_k, ndkl, zero_shot_accuracy
from workbench.models import load_clip

QUERIES = {o: f"a photo of a {o}" for o in vocab.OCCUPATIONS}


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def gallery():
    return SynthSocial("test_balanced", seed=2, n=128).tensors()


@pytest.fixture(scope="module")
def embeddings(model, gallery):
    return embed_images(model, gallery[0])


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


# ---------------------------------------------------------------------------------------------- embed_images
def test_embed_images_is_normalised_encode_image(model, gallery, embeddings):
    images = gallery[0]
    with torch.no_grad():
        expected = model.encode_image(model.preprocess(images), normalize=True)
    assert embeddings.shape == (128, 128) and embeddings.dtype == torch.float32
    _close(embeddings, expected)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(128))
    _close(embed_images(model, images, batch_size=7), expected)  # batching does not change the result


def test_embed_images_from_a_dataset(model, embeddings):
    raw = SynthSocial("test_balanced", seed=2, n=128)
    _close(embed_images(model, raw, batch_size=50), embeddings)
    preprocessed = SynthSocial("test_balanced", seed=2, n=128, transform=model.preprocess)
    _close(embed_images(model, preprocessed, batch_size=50), embeddings)  # not preprocessed twice


def test_embed_images_runs_under_the_models_hooks(model, gallery, embeddings):
    from workbench.primitives import ablate_heads, intervene

    with intervene(model, ablate_heads([(5, 0), (5, 1)], op="zero")):
        ablated = embed_images(model, gallery[0])
    assert (ablated - embeddings).abs().max() > 1e-3


def test_embed_images_takes_uint8_images_like_preprocess(model, gallery):
    quantised = (gallery[0][:8] * 255).round().to(torch.uint8)
    _close(embed_images(model, quantised), embed_images(model, quantised.float() / 255))


def test_embed_images_refuses_bad_input(model, gallery):
    """Tensor images follow the one image rule of model.preprocess (docs/inputs.md); its messages say why."""
    images = gallery[0][:4]
    with pytest.raises(ValueError, match=r"negative values look like an image that was normalised already"):
        embed_images(model, model.preprocess(images))
    with pytest.raises(ValueError, match=r"looks like 0–255 pixel values"):
        embed_images(model, images * 255)
    with pytest.raises(ValueError, match=r"contain 12288 NaN and 0 inf values \(1 of 4 images\)"):
        embed_images(model, images.clone().index_fill_(0, torch.tensor([1]), float("nan")))
    with pytest.raises(ValueError, match=r"images must be a tensor \[n, 3, H, W\], got shape \(3, 64, 64\)"):
        embed_images(model, images[0])
    with pytest.raises(ValueError, match="no images to embed: the gallery is empty"):
        embed_images(model, images[:0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        embed_images(model, images, batch_size=0)
    with pytest.raises(TypeError, match="needs an image tensor \\[n, 3, H, W\\] or a dataset, got int"):
        embed_images(model, 3)


def test_input_batches_preprocess_a_raw_dataset_once(model, gallery):
    from workbench.evaluation import input_batches

    raw = SynthSocial("test_balanced", seed=2, n=128)
    batches = list(input_batches(model, raw, batch_size=100))
    assert [len(x) for x, _ in batches] == [100, 28]
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), model.preprocess(gallery[0]))
    assert torch.equal(torch.cat([y["gender"] for _, y in batches]), gallery[1]["gender"])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        input_batches(model, raw, batch_size=-1)


# ---------------------------------------------------------------------------------------------- retrieval_report
def test_report_equals_the_metric_functions(model, gallery, embeddings):
    _, labels = gallery
    report = retrieval_report(model, embeddings, labels, QUERIES, groups=("gender", "ethnicity"), top_k=20)
    assert list(report) == ["zero_shot_accuracy", "gender_ndkl", "gender_maxskew_at_20", "ethnicity_ndkl",
                            "ethnicity_maxskew_at_20"]
    with torch.no_grad():
        text = model.encode_text(list(QUERIES.values()), normalize=True)
    sim = text @ embeddings.T
    relevant = labels["occupation"][None, :] == torch.arange(8)[:, None]
    assert report["zero_shot_accuracy"] == zero_shot_accuracy(sim.T, labels["occupation"])
    assert report["gender_ndkl"] == ndkl(sim, labels["gender"], n_groups=2, relevant_mask=relevant)
    assert report["gender_maxskew_at_20"] == max_skew_at_k(sim, labels["gender"], k=20, n_groups=2)
    assert report["ethnicity_ndkl"] == ndkl(sim, labels["ethnicity"], n_groups=4, relevant_mask=relevant)
    assert 0.8 <= report["zero_shot_accuracy"] <= 1 and report["gender_ndkl"] > 0


def test_queries_as_a_list_by_code_or_by_name_agree(model, gallery, embeddings):
    labels = gallery[1]
    by_name = retrieval_report(model, embeddings, labels, QUERIES)
    assert retrieval_report(model, embeddings, labels, list(QUERIES.values())) == by_name
    assert retrieval_report(model, embeddings, labels, dict(enumerate(QUERIES.values()))) == by_name
    assert retrieval_report(model, embeddings, labels, QUERIES, groups="gender") == by_name


def test_a_subset_of_queries_scores_zero_shot_on_those_classes_only(model, gallery, embeddings):
    labels = gallery[1]
    subset = {"nurse": "a photo of a nurse", "pilot": "a photo of a pilot"}
    report = retrieval_report(model, embeddings, labels, subset)
    with torch.no_grad():
        text = model.encode_text(list(subset.values()), normalize=True)
    mine = (labels["occupation"] == 1) | (labels["occupation"] == 7)
    predicted = (embeddings[mine] @ text.T).argmax(1)
    truth = (labels["occupation"][mine] == 7).long()
    assert report["zero_shot_accuracy"] == pytest.approx((predicted == truth).float().mean().item())
    relevant = labels["occupation"][None, :] == torch.tensor([1, 7])[:, None]
    assert report["gender_ndkl"] == ndkl(text @ embeddings.T, labels["gender"], n_groups=2, relevant_mask=relevant)


def test_a_gallery_of_one_group_is_not_reported_as_fair(model, gallery, embeddings):
    """Only men in the gallery: the number of groups comes from label_names, so NDKL is ln 2, not 0."""
    labels = gallery[1]
    men = labels["gender"] == 0
    report = retrieval_report(model, embeddings[men], {k: v[men] for k, v in labels.items()}, QUERIES, top_k=10)
    assert report["gender_ndkl"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)
    assert report["gender_maxskew_at_10"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)


def test_other_label_keys_with_their_names(model, gallery, embeddings):
    labels = dict(gallery[1])
    labels["hat"] = labels["occupation"] % 2
    names = {"occupation": vocab.OCCUPATIONS, "hat": ("no", "yes")}
    report = retrieval_report(model, embeddings, labels, QUERIES, groups=("hat",), label_names=names, top_k=5)
    assert set(report) == {"zero_shot_accuracy", "hat_ndkl", "hat_maxskew_at_5"}
    # every query's relevant images share one "hat" value, so its ranking is as skewed as it can be
    assert report["hat_ndkl"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)


def test_retrieval_report_refuses_bad_input(model, gallery, embeddings):
    labels = gallery[1]
    with pytest.raises(ValueError, match=r"query class 'astronaut' is not a 'occupation' class; classes: \['doctor'"):
        retrieval_report(model, embeddings, labels, {"astronaut": "a photo of an astronaut"})
    with pytest.raises(ValueError, match=r"a list of queries needs one prompt per 'occupation' class \(8: .* got 2; "
                                         r"pass a \{class: prompt\} mapping for a subset"):
        retrieval_report(model, embeddings, labels, ["a photo of a nurse", "a photo of a pilot"])
    with pytest.raises(TypeError, match="not a single string"):
        retrieval_report(model, embeddings, labels, "a photo of a nurse")
    with pytest.raises(ValueError, match=r"query key 9 must be a 'occupation' class name or a code in 0\.\.7"):
        retrieval_report(model, embeddings, labels, {9: "a photo"})
    with pytest.raises(ValueError, match=r"two queries for the same 'occupation' class: \['nurse', 'nurse'\]"):
        retrieval_report(model, embeddings, labels, {"nurse": "a nurse", 1: "a photo of a nurse"})
    with pytest.raises(TypeError, match="every query must be a prompt string, got int"):
        retrieval_report(model, embeddings, labels, {"nurse": 3})
    with pytest.raises(ValueError, match=r"labels have no key 'religion' \(the group\); they have \['age', "):
        retrieval_report(model, embeddings, labels, QUERIES, groups=("religion",),
                         label_names={**vocab.LABEL_NAMES, "religion": ("a", "b")})
    with pytest.raises(ValueError, match=r"no class names for label 'religion': pass label_names="):
        retrieval_report(model, embeddings, labels, QUERIES, groups=("religion",))
    with pytest.raises(ValueError, match=r"labels\['gender'\] has shape \(127,\), expected \(128,\): one per image"):
        retrieval_report(model, embeddings, {**labels, "gender": labels["gender"][:127]}, QUERIES)
    with pytest.raises(ValueError, match=r"image_embeddings must be L2-normalised .* got norms in \[2, 2\]"):
        retrieval_report(model, 2 * embeddings, labels, QUERIES)
    with pytest.raises(ValueError, match=r"image_embeddings must be a tensor \[n, d_embed\]"):
        retrieval_report(model, embeddings[0], labels, QUERIES)
    with pytest.raises(ValueError, match=r"top_k must be an integer in 1\.\.128 \(the gallery size\), got 500"):
        retrieval_report(model, embeddings, labels, QUERIES, top_k=500)


def test_query_prompts_keeps_the_class_codes():
    assert query_prompts({"pilot": "p", 0: "d"}, vocab.OCCUPATIONS, "occupation") == (["p", "d"], [7, 0])
    with pytest.raises(ValueError, match="queries is empty"):
        query_prompts({}, vocab.OCCUPATIONS, "occupation")
