"""extract / extract_text against run_with_cache and the model's own decomposition."""
import pytest
import torch

from workbench.activations import extract, extract_text
from workbench.activations.extract import collate_items, plan_batches, sample_indices


def close(actual, expected, atol=1e-5):
    """Batched vs whole-set forward passes differ by float rounding only."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def reference_cache(model, images, names):
    _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
    return cache


def test_hook_sites_match_run_with_cache(tiny, random_images):
    ds = random_images(11)
    sites = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.2.attn.hook_z",
             "blocks.0.attn.hook_cls_result", "ln_post.hook_scale", "hook_image_embed"]
    store = extract(tiny, ds, sites, batch_size=4, progress=False)
    cache = reference_cache(tiny, ds.images(), sites)
    assert len(store) == 11 and store.sites == sites
    close(store["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"][:, 0])
    # attention pattern: the CLS query row, [b, head, key]
    close(store["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"][:, :, 0])
    close(store["blocks.2.attn.hook_z"], cache["blocks.2.attn.hook_z"][:, 0])
    # hooks without a token axis are stored as they are
    for name in ("blocks.0.attn.hook_cls_result", "ln_post.hook_scale", "hook_image_embed"):
        close(store[name], cache[name])
    close(store["hook_image_embed"], tiny.encode_image(ds.images()).detach())


@pytest.mark.parametrize("position, index", [("all", slice(None)), (3, 3), (-1, -1)])
def test_position_all_and_int(tiny, random_images, position, index):
    ds = random_images(5)
    sites = ["blocks.2.mlp.hook_post", "blocks.1.attn.hook_pattern", "hook_patch_embed"]
    store = extract(tiny, ds, sites, batch_size=2, position=position, progress=False)
    cache = reference_cache(tiny, ds.images(), sites)
    close(store["blocks.2.mlp.hook_post"], cache["blocks.2.mlp.hook_post"][:, index])
    close(store["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"][:, :, index])
    close(store["hook_patch_embed"], cache["hook_patch_embed"][:, index])
    if position == "all":
        assert store.shapes["blocks.2.mlp.hook_post"] == (17, 256)  # 1 CLS + 16 patches, d_mlp 256


@pytest.mark.parametrize("site, space", [("head_contributions", "embed"), ("head_contributions:resid", "resid")])
def test_head_contributions_site_matches_model(tiny, random_images, site, space):
    ds = random_images(9)
    store = extract(tiny, ds, [site], batch_size=4, progress=False)
    expected = tiny.visual.head_contributions(ds.images(), space=space)
    assert store.shapes[site] == tuple(expected.shape[1:])
    close(store[site], expected)


def test_head_contributions_sum_with_rest_to_embedding(tiny, random_images):
    # independent check of the projection: heads + the non-head components of decompose() = encode_image
    ds = random_images(4)
    heads = extract(tiny, ds, "head_contributions", batch_size=4, progress=False)["head_contributions"]
    dec = tiny.visual.decompose(ds.images())
    rest = sum(dec[label] for label in dec.labels if ".H" not in label)
    close(heads.sum((1, 2)) + rest, tiny.encode_image(ds.images()).detach(), atol=1e-4)


def test_labels_and_label_names_stored(tiny, random_images):
    store = extract(tiny, random_images(7), ["hook_image_embed"], batch_size=3, progress=False)
    assert torch.equal(store.labels["gender"], torch.tensor([0, 1, 0, 1, 0, 1, 0]))
    assert torch.equal(store.labels["group"], torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    assert store.labels["gender"].dtype == torch.long
    assert store.label_names == {"gender": ["female", "male"], "group": ["a", "b", "c"]}


def test_one_forward_pass_per_batch_for_all_sites(tiny, random_images, count_forwards):
    with count_forwards(tiny) as sizes:
        extract(tiny, random_images(12), ["head_contributions", "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"],
                batch_size=5, progress=False)
    assert sizes == [1, 5, 5, 2]  # a 1-item shape probe, then one pass per batch


def test_hooks_already_on_the_model_stay_active(tiny, random_images):
    # an intervention in place (zeroing layer 0's output) is what extraction sees downstream
    ds = random_images(3)

    def zero(t, hook):
        return torch.zeros_like(t)

    with tiny.hooks(fwd_hooks=[("blocks.0.hook_resid_post", zero)]):
        store = extract(tiny, ds, ["blocks.0.hook_resid_post", "hook_image_embed"], batch_size=3, progress=False)
        expected = tiny.encode_image(ds.images()).detach()
    assert torch.equal(store["blocks.0.hook_resid_post"], torch.zeros(3, 64))
    close(store["hook_image_embed"], expected)
    assert not torch.allclose(expected, tiny.encode_image(ds.images()).detach(), atol=1e-3)


def test_float16_storage(tiny, random_images):
    ds = random_images(4)
    full = extract(tiny, ds, ["blocks.2.hook_resid_post"], batch_size=4, progress=False)
    half = extract(tiny, ds, ["blocks.2.hook_resid_post"], batch_size=4, dtype=torch.float16, progress=False)
    assert half.dtype == torch.float16 and half["blocks.2.hook_resid_post"].dtype == torch.float16
    assert torch.equal(half["blocks.2.hook_resid_post"], full["blocks.2.hook_resid_post"].half())


def test_progress_bar_reports_images_per_second(tiny, random_images, capsys):
    extract(tiny, random_images(3), ["hook_image_embed"], batch_size=3, progress=True)
    assert "img/s" in capsys.readouterr().err


# ------------------------------------------------------------------ text tower
def test_text_sites_match_run_with_cache(tiny):
    prompts = ["a photo of a nurse", "a doctor", "", "an old firefighter"]
    store = extract_text(tiny, prompts, ["text.blocks.1.hook_resid_post", "text.hook_text_embed"], batch_size=3,
                         progress=False)
    tokens = tiny.tokenize(prompts)
    _, cache = tiny.run_with_cache(text=tokens, names_filter=lambda n: n == "text.blocks.1.hook_resid_post")
    eot = tokens.argmax(-1)  # open_clip pools the EOT token, the largest id
    close(store["text.blocks.1.hook_resid_post"], cache["text.blocks.1.hook_resid_post"][torch.arange(4), eot])
    close(store["text.hook_text_embed"], tiny.encode_text(prompts).detach())
    assert store.labels == {} and len(store) == 4


def test_text_position_all(tiny):
    store = extract_text(tiny, ["a cat", "a dog"], "text.blocks.0.attn.hook_z", position="all", progress=False)
    _, cache = tiny.run_with_cache(text=tiny.tokenize(["a cat", "a dog"]),
                                   names_filter=lambda n: n == "text.blocks.0.attn.hook_z")
    close(store["text.blocks.0.attn.hook_z"], cache["text.blocks.0.attn.hook_z"])


# ------------------------------------------------------------------ helpers
def test_plan_batches_never_straddle_shards():
    assert plan_batches(0, 23, 5, 10) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert plan_batches(0, 23, 4, 10) == [(0, 4), (4, 8), (8, 10), (10, 14), (14, 18), (18, 20), (20, 23)]
    assert plan_batches(20, 23, 64, 10) == [(20, 23)]
    assert plan_batches(5, 5, 4, 10) == []


def test_sample_indices_are_evenly_spaced():
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    assert sample_indices(15, k=8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_indices(1000, k=3) == [0, 500, 999]


def test_collate_items():
    a, b = torch.zeros(3, 2, 2), torch.ones(3, 2, 2)
    images, labels = collate_items([(a, {"y": 1}), (b, {"y": 0})])
    assert torch.equal(images, torch.stack([a, b]))
    assert torch.equal(labels["y"], torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="different shapes"):
        collate_items([(a, {}), (torch.zeros(3, 4, 4), {})])
    with pytest.raises(ValueError, match="same keys"):
        collate_items([(a, {"y": 1}), (b, {"z": 0})])
    with pytest.raises(TypeError, match="must be ints"):
        collate_items([(a, {"y": 0.5})])
    with pytest.raises(TypeError, match=r"should be \(image, \{label: int\}\) with the image a tensor .* got tuple of \(str, dict\)"):
        collate_items([("not an image", {"y": 1})])


# ------------------------------------------------------------------ errors
def test_typo_in_site_suggests_the_hook(tiny, random_images):
    with pytest.raises(ValueError, match="did you mean 'blocks.1.hook_resid_post'"):
        extract(tiny, random_images(2), ["blocks.1.hook_resid_pst"], progress=False)
    with pytest.raises(ValueError, match="did you mean 'head_contributions'"):
        extract(tiny, random_images(2), ["head_contribution"], progress=False)


def test_tower_mismatch_errors(tiny, random_images):
    with pytest.raises(ValueError, match="use extract_text"):
        extract(tiny, random_images(2), ["text.hook_text_embed"], progress=False)
    with pytest.raises(ValueError, match="use extract\\(model, dataset"):
        extract_text(tiny, ["a"], ["hook_image_embed"], progress=False)
    with pytest.raises(ValueError, match="image-tower site"):
        extract_text(tiny, ["a"], ["head_contributions"], progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"position": "first"}, "unknown position 'first'; expected one of \\['pooled', 'all'\\] or an int"),
    ({"position": 17}, "position 17 is out of range for blocks.0.hook_resid_post"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"shard_size": -1}, "shard_size must be a positive int"),
    ({"dtype": torch.int64}, "dtype must be one of"),
])
def test_bad_arguments(tiny, random_images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract(tiny, random_images(2), ["blocks.0.hook_resid_post"], progress=False, **kwargs)


def test_cls_position_on_patch_embed_is_an_error(tiny, random_images):
    with pytest.raises(ValueError, match="no CLS token"):
        extract(tiny, random_images(2), ["hook_patch_embed"], progress=False)


def test_empty_inputs(tiny, random_images):
    with pytest.raises(ValueError, match="no sites given"):
        extract(tiny, random_images(2), [], progress=False)
    with pytest.raises(ValueError, match="dataset is empty"):
        extract(tiny, random_images(0), ["hook_image_embed"], progress=False)
    with pytest.raises(ValueError, match="no prompts given"):
        extract_text(tiny, [], ["text.hook_text_embed"], progress=False)


def test_worker_processes_give_the_same_result(tiny, random_images):
    ds = random_images(10)
    single = extract(tiny, ds, ["blocks.1.hook_resid_post"], batch_size=4, progress=False)
    workers = extract(tiny, ds, ["blocks.1.hook_resid_post"], batch_size=4, num_workers=2, progress=False)
    assert torch.equal(workers["blocks.1.hook_resid_post"], single["blocks.1.hook_resid_post"])
    assert torch.equal(workers.labels["group"], single.labels["group"])
