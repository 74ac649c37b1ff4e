"""extract / extract_text against run_with_cache and the model's own decomposition."""
import pytest
import torch

from workbench.activations import extract, extract_text
from workbench.activations.extract import collate_items, plan_batches, sample_indices
from workbench.models import TruncatedPromptWarning, UnknownWordsWarning


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


def test_cls_is_an_alias_of_pooled(tiny):
    prompts = ["a cat", "a photo of a dog"]
    pooled = extract_text(tiny, prompts, "text.blocks.1.hook_resid_post", position="pooled", progress=False)
    cls = extract_text(tiny, prompts, "text.blocks.1.hook_resid_post", position="cls", progress=False)
    assert cls.position == pooled.position == "pooled"  # stored under the canonical name
    assert torch.equal(cls["text.blocks.1.hook_resid_post"], pooled["text.blocks.1.hook_resid_post"])


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


# ------------------------------------------------------------------ inputs: the image rule (docs/inputs.md)
class Items(torch.utils.data.Dataset):
    """The given images with labels y = i % 2; has a `transform` attribute only when one is passed."""

    def __init__(self, images, **transform):
        self.images = list(images)
        self.__dict__.update(transform)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        transform = getattr(self, "transform", None)
        return (transform(self.images[i]) if transform else self.images[i]), {"y": i % 2}


def embed(model, dataset, **kwargs):
    return extract(model, dataset, ["hook_image_embed"], batch_size=2, progress=False, **kwargs)["hook_image_embed"]


def unit_images(n, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_raw_synthsocial_is_preprocessed_by_extract(tiny):
    from workbench.data import SynthSocial

    raw = SynthSocial("train", n=5)  # 64×64 floats in [0, 1], transform None
    store = extract(tiny, raw, ["hook_image_embed"], batch_size=2, progress=False)
    cooked = embed(tiny, SynthSocial("train", n=5, transform=tiny.preprocess))
    assert torch.equal(store["hook_image_embed"], cooked)  # the same per-item preprocess: the same computation
    close(store["hook_image_embed"], tiny.encode_image(tiny.preprocess(raw.tensors()[0])).detach())
    assert store.manifest["dataset"]["preprocessed_by_extract"] == repr(tiny.preprocess)  # part of the cache identity
    workers = extract(tiny, raw, ["hook_image_embed"], batch_size=2, num_workers=2, progress=False)
    assert torch.equal(workers["hook_image_embed"], store["hook_image_embed"])
    subset = embed(tiny, torch.utils.data.Subset(raw, [3, 1]))  # the transform is looked up through Subset
    close(subset, cooked[[3, 1]])


def test_pil_and_uint8_items_are_preprocessed_by_extract(tiny):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pils = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 30), (32, 32), (90, 70)]]
    close(embed(tiny, Items(pils)), tiny.encode_image(tiny.preprocess(pils)).detach())
    u8 = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    close(embed(tiny, Items(u8)), tiny.encode_image(tiny.preprocess(u8.float() / 255)).detach())


def test_raw_unit_range_images_without_preprocess_are_refused(tiny):
    x = unit_images(4)
    fix = r"give the dataset transform=model.preprocess, or pass preprocess=True"
    for dataset in (Items(x), Items(x, transform=lambda image: image.clone())):  # no transform / not the model's
        with pytest.raises(ValueError, match=r"dataset items \[0, 1\) look like raw images in \[0, 1\] that never "
                                             r"went through the model's preprocess .*" + fix):
            embed(tiny, dataset)
    close(embed(tiny, Items(x), preprocess=True), tiny.encode_image(tiny.preprocess(x)).detach())
    # preprocess=False: the caller vouches they are model inputs; only shape and finiteness are checked
    close(embed(tiny, Items(x), preprocess=False), tiny.encode_image(x).detach())


def test_zero_to_255_images_are_refused_with_the_fix(tiny):
    x = unit_images(3) * 255
    with pytest.raises(ValueError, match=r"far outside what the model's preprocess produces .*0–255 pixel values\? "
                                         r"give the dataset transform=model.preprocess"):
        embed(tiny, Items(x))
    with pytest.raises(ValueError, match=r"dataset item 0: preprocess takes float images with values in \[0, 1\].*"
                                         r"looks like 0–255 pixel values: divide by 255 or pass a uint8 tensor"):
        embed(tiny, Items(x, transform=None))  # a workbench-style dataset without transform: extract preprocesses


def test_wrong_size_model_inputs_are_refused(tiny):
    with pytest.raises(ValueError, match=r"dataset items \[0, 1\) are torch.float32 images of shape \[3, 64, 64\] "
                                         r"but the model takes preprocessed float images \[3, 32, 32\]: give the "
                                         r"dataset transform=model.preprocess"):
        embed(tiny, Items(torch.randn(2, 3, 64, 64)))


def test_nan_items_are_named(tiny):
    x = torch.randn(5, 3, 32, 32)
    x[3, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"dataset items \[2, 4\) contain 1 NaN and 0 inf values.*NaN/inf at "
                                         r"dataset item\(s\) \[3\]"):
        embed(tiny, Items(x))
    raw = unit_images(4)
    raw[2, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"dataset item 2: the images given to preprocess contain 0 NaN and 1 inf"):
        embed(tiny, Items(raw, transform=None))


def test_preprocess_argument_and_transform_conflicts(tiny):
    from PIL import Image

    from workbench.models import Preprocess

    with pytest.raises(ValueError, match=r"another model's preprocess \(Preprocess\(size=\(64, 64\).*give the "
                                         r"dataset transform=model.preprocess"):
        embed(tiny, Items(unit_images(2, 64), transform=Preprocess((64, 64))))
    with pytest.raises(ValueError, match="preprocess=True would apply the model's preprocess twice"):
        embed(tiny, Items(unit_images(2), transform=tiny.preprocess), preprocess=True)
    with pytest.raises(TypeError, match="preprocess=False says the dataset yields model inputs, but its items are "
                                        "PIL images"):
        embed(tiny, Items([Image.new("RGB", (32, 32))]), preprocess=False)
    with pytest.raises(ValueError, match=r"preprocess must be None \(decide from the dataset\), True or False"):
        embed(tiny, Items(unit_images(2)), preprocess="yes")


# ------------------------------------------------------------------ inputs: prompts
def test_extract_text_refuses_overlong_prompts_before_any_forward(tiny, count_forwards):
    prompts = ["a doctor", " ".join(["a"] * 11)]  # 13 tokens, context 12
    with count_forwards(tiny, tower="text") as sizes:
        with pytest.raises(ValueError, match=r"1 prompt\(s\) exceed the model's context of 12 tokens.*\(13 tokens\)"):
            extract_text(tiny, prompts, "text.hook_text_embed", progress=False)
    assert sizes == []
    with pytest.warns(TruncatedPromptWarning) as caught:
        store = extract_text(tiny, prompts, "text.hook_text_embed", batch_size=1, truncate=True, progress=False)
    assert len(caught) == 1  # one warning per call, not per batch
    with pytest.warns(TruncatedPromptWarning):
        close(store["text.hook_text_embed"], tiny.encode_text(prompts, truncate=True).detach())


def test_extract_text_refuses_non_strings(tiny):
    with pytest.raises(TypeError, match=r"prompts must be a string or a list of strings.*got dict; a dict would be "
                                        r"encoded by its keys"):
        extract_text(tiny, {"a doctor": 0}, "text.hook_text_embed", progress=False)
    with pytest.raises(TypeError, match=r"item 1 of the list is NoneType"):
        extract_text(tiny, ["a doctor", None], "text.hook_text_embed", progress=False)


def test_extract_text_warns_once_about_unknown_words():
    from workbench.models import load_clip

    shipped = load_clip("synthsocial")
    with pytest.warns(UnknownWordsWarning, match=r"1 word\(s\) in the 5 prompt\(s\).*: 'zebra'\.") as caught:
        extract_text(shipped, ["a photo of a zebra"] * 4 + ["a nurse"], "text.hook_text_embed", batch_size=2,
                     progress=False)
    assert len(caught) == 1
