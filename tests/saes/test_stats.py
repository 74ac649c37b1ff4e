"""LatentStats: values by hand on a small latent matrix, one extraction pass on the tiny CLIP, stores, errors."""
import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.models.archs import build_pair, images_for
from tests.primitives.conftest import random_sae
from tests.tolerance import assert_fp32_close
from workbench.saes.stats import LatentStats, latent_hook

ACTS = torch.tensor([[0.0, 2.0, 0.5],
                     [1.0, 0.0, 0.5],
                     [3.0, 0.0, 0.0],
                     [0.0, 4.0, 0.5]])
GENDER = torch.tensor([0, 1, 1, 0])
SCENE = torch.tensor([2, 0, 1, 2])


@pytest.fixture
def stats():
    return LatentStats(ACTS, {"gender": GENDER, "scene": SCENE}, {"gender": ["male", "female"]})


def test_summary_by_hand(stats):
    t = stats.summary()
    assert t["latent"].tolist() == [0, 1, 2]
    assert t["frequency"].tolist() == [0.5, 0.5, 0.75]
    assert t["mean"].tolist() == [1.0, 1.5, 0.375]
    assert t["max"].tolist() == [3.0, 4.0, 0.5]
    assert LatentStats(ACTS, threshold=0.75).summary()["frequency"].tolist() == [0.5, 0.5, 0.0]


def test_group_means_by_hand_with_names(stats):
    t = stats.group_means("gender").set_index(["group", "latent"])
    assert t.loc[("male", 1), "mean"] == 3.0 and t.loc[("female", 0), "mean"] == 2.0
    assert t.loc[("female", 2), "frequency"] == 0.5 and t.loc[("male", 2), "frequency"] == 1.0
    assert set(t["n"]) == {2}
    s = stats.group_means("scene")  # no names: the codes themselves
    assert sorted(set(s["group"])) == [0, 1, 2]
    assert s[(s.group == 2) & (s.latent == 1)]["mean"].item() == 3.0
    assert s[(s.group == 0)]["n"].tolist() == [1, 1, 1]


def test_top_k_by_hand_and_ties_keep_the_lower_index(stats):
    t = stats.top_k(2)
    assert t[t.latent == 0][["index", "value"]].values.tolist() == [[2, 3.0], [1, 1.0]]
    assert t[t.latent == 1][["index", "value"]].values.tolist() == [[3, 4.0], [0, 2.0]]
    assert t[t.latent == 2]["index"].tolist() == [0, 1]  # three items tie at 0.5
    assert t["rank"].tolist() == [0, 1] * 3
    assert stats.top_k(10, latents=1)["index"].tolist() == [3, 0, 1, 2]  # k capped at n


def test_ap_equals_scikit_learn_per_latent(stats):
    t = stats.ap("gender")
    for j in range(3):
        row = t[t.latent == j].iloc[0]
        assert row["ap"] == pytest.approx(average_precision_score(GENDER.numpy(), ACTS[:, j].numpy()), abs=1e-12)
        assert row["auroc"] == pytest.approx(roc_auc_score(GENDER.numpy(), ACTS[:, j].numpy()), abs=1e-12)
    sub = stats.ap("gender", latents=[2, 0])
    assert sub["latent"].tolist() == [2, 0]
    assert sub["ap"].tolist() == [t.loc[t.latent == 2, "ap"].item(), t.loc[t.latent == 0, "ap"].item()]


def test_ap_one_vs_rest_for_more_classes(stats):
    t = stats.ap("scene")
    assert len(t) == 9 and sorted(set(t["class"])) == [0, 1, 2]
    row = t[(t.latent == 1) & (t["class"] == 2)].iloc[0]
    assert row["ap"] == pytest.approx(average_precision_score((SCENE == 2).numpy(), ACTS[:, 1].numpy()))


def test_bad_inputs_are_specific_errors(stats):
    with pytest.raises(ValueError, match=r"acts must be \[n, d_sae\], got shape \[2, 5, 3\] \(one row per token: "
                                         r"pass reduce='max' or 'mean'"):
        LatentStats(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="reduce must be None, 'max' or 'mean'"):
        LatentStats(torch.zeros(2, 5, 3), reduce="sum")
    with pytest.raises(ValueError, match="acts is empty"):
        LatentStats(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite floating-point"):
        LatentStats(torch.tensor([[float("nan")]]))
    with pytest.raises(TypeError, match="acts must be a tensor"):
        LatentStats(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"labels\['g'\] must be \[n=4\], got shape \[3\]"):
        LatentStats(ACTS, {"g": torch.tensor([0, 1, 0])})
    with pytest.raises(ValueError, match=r"labels\['g'\] must be integers"):
        LatentStats(ACTS, {"g": torch.tensor([0.0, 1.0, 0.0, 1.0])})
    with pytest.raises(KeyError, match=r"no label 'age'; labels: \['gender', 'scene'\]"):
        stats.ap("age")
    with pytest.raises(ValueError, match=r"latents must be ints in 0..2, got \[3\]"):
        stats.top_k(1, latents=[0, 3])
    with pytest.raises(ValueError, match="k must be a positive int"):
        stats.top_k(0)


@pytest.fixture(scope="module")
def model():
    return copy.deepcopy(build_pair("wb-tiny")[1])


@pytest.fixture(scope="module")
def dataset(model):
    x = images_for(model, n=12, seed=4)
    return [(x[i], {"gender": i % 2, "age": i % 3}) for i in range(12)], x


def test_compute_is_one_extraction_pass_of_the_spliced_latents(model, dataset, tmp_path):
    data, x = dataset
    sae = random_sae(64, 24, seed=9)
    site = "blocks.1.hook_resid_post"
    stats = LatentStats.compute(model, sae, data, site=site, preprocess=False, cache_dir=tmp_path / "store")
    assert not model.spliced_saes()  # spliced for the pass only
    _, cache = model.run_with_cache(x, names_filter=site)
    assert_fp32_close(stats.acts, sae.encode(cache[site][:, 0]))
    assert stats.labels["gender"].tolist() == [i % 2 for i in range(12)]
    from workbench.activations import ActivationStore

    again = LatentStats.from_store(ActivationStore.open(tmp_path / "store"))
    assert again.site == site and torch.equal(again.acts, stats.acts)
    assert again.group_means("age").equals(stats.group_means("age"))


def test_token_latents_reduce_to_one_row_per_item(model, dataset):
    tokens = torch.tensor([[[0.0, 1.0], [2.0, 0.0]], [[4.0, 0.0], [0.0, 0.0]]])
    assert torch.equal(LatentStats(tokens, reduce="max").acts, torch.tensor([[2.0, 1.0], [4.0, 0.0]]))
    assert torch.equal(LatentStats(tokens, reduce="mean").acts, torch.tensor([[1.0, 0.5], [2.0, 0.0]]))
    data, x = dataset
    sae = random_sae(64, 24, seed=9)
    site = "blocks.2.hook_resid_post"
    stats = LatentStats.compute(model, sae, data, site=site, position="all", reduce="max", preprocess=False)
    _, cache = model.run_with_cache(x, names_filter=site)
    assert_fp32_close(stats.acts, sae.encode(cache[site]).amax(1))


def test_compute_on_an_embedding_and_on_prompts(model, dataset):
    data, x = dataset
    sae = random_sae(32, 16, seed=2)
    stats = LatentStats.compute(model, sae, data, site="hook_image_embed", preprocess=False)
    assert_fp32_close(stats.acts, sae.encode(model.encode_image(x)))
    prompts = ["a photo of a nurse", "a doctor", "a photo of a doctor"]
    tsae = random_sae(32, 16, seed=3)
    t = LatentStats.compute(model, tsae, prompts, site="text.hook_text_embed", labels={"doc": torch.tensor([0, 1, 1])})
    assert_fp32_close(t.acts, tsae.encode(model.encode_text(prompts)))
    assert t.ap("doc").shape[0] == 16
    with pytest.raises(TypeError, match="text-tower site: pass the prompts as a list of strings"):
        LatentStats.compute(model, tsae, "a doctor", site="text.hook_text_embed")


def test_compute_uses_an_sae_spliced_already_and_refuses_another(model, dataset):
    data, x = dataset
    sae = random_sae(32, 16, seed=2)
    with model.saes((sae, "hook_image_embed")):  # no error term: latents are the same, the output is recons
        stats = LatentStats.compute(model, sae, data, site="hook_image_embed", preprocess=False)
        with pytest.raises(ValueError, match="another SAE is spliced at 'hook_image_embed'"):
            LatentStats.compute(model, random_sae(32, 16), data, site="hook_image_embed", preprocess=False)
    assert_fp32_close(stats.acts, sae.encode(model.encode_image(x)))


def test_from_store_picks_the_latent_site(model, dataset):
    data, _ = dataset
    from workbench.activations import extract

    sae = random_sae(32, 8)
    with model.saes((sae, "hook_image_embed")):
        store = extract(model, data, [latent_hook("hook_image_embed"), "hook_image_embed"], preprocess=False,
                        progress=False)
    assert LatentStats.from_store(store).site == "hook_image_embed"
    picked = LatentStats.from_store(store, site="hook_image_embed")
    assert torch.equal(picked.acts, store[latent_hook("hook_image_embed")])
    with pytest.raises(ValueError, match="the store has no 'blocks.0.hook_resid_post.hook_sae_acts_post'"):
        LatentStats.from_store(store, site="blocks.0.hook_resid_post")
