"""Tests for workbench.data.synthsocial: determinism, batch paths, planted skews, balanced splits."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from workbench.data import SynthConfig, SynthSocial, vocab
from workbench.data.captions import mention_rates

OCC = {name: i for i, name in enumerate(vocab.OCCUPATIONS)}
ETH = {name: i for i, name in enumerate(vocab.ETHNICITIES)}
SCENE = {name: i for i, name in enumerate(vocab.SCENES)}


@pytest.fixture(scope="module")
def big_train_labels():
    return SynthSocial("train", n=40_000).labels  # labels only: nothing is rendered


def conditional(labels, key, value, given, given_value):
    mask = labels[given] == given_value
    return (labels[key][mask] == value).float().mean().item()


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_data_different_seed_different_data():
    a, b, c = (SynthSocial("train", n=32, seed=s) for s in (0, 0, 1))
    ia, la = a.tensors()
    ib, lb = b.tensors()
    ic, lc = c.tensors()
    assert torch.equal(ia, ib) and all(torch.equal(la[k], lb[k]) for k in la)
    assert not torch.equal(la["occupation"], lc["occupation"])
    assert (ia - ic).abs().flatten(1).max(1).values.min() > 0.1  # every image changed


def test_splits_never_share_images():
    images = [SynthSocial(split, n=64).tensors()[0] for split in ("train", "test_balanced", "test_spurious")]
    flat = torch.cat(images).flatten(1)
    dist = torch.cdist(flat, flat) + torch.eye(len(flat)) * 1e9
    assert dist.min() > 1.0


def test_train_prefix_does_not_depend_on_split_size():
    small, large = SynthSocial("train", n=40), SynthSocial("train", n=300)
    assert all(torch.equal(small.labels[k], large.labels[k][:40]) for k in small.labels)
    assert torch.equal(small.tensors()[0], large.tensors(0, 40)[0])


# --------------------------------------------------------------------------- access paths
def test_getitem_equals_batch_rows_whatever_the_access_pattern():
    ds = SynthSocial("test_balanced", n=128)
    images, labels = ds.tensors()
    order = list(range(70)) + [100, 5, 99, 98, 127, 0, 1]  # sequential runs, jumps, repeats
    for i in order:
        image, item_labels = ds[i]
        assert torch.equal(image, images[i])
        assert item_labels == {k: int(v[i]) for k, v in labels.items()}
    assert torch.equal(ds[-1][0], images[127])


def test_tensors_chunks_and_batches_agree():
    ds = SynthSocial("train", n=100)
    images, labels = ds.tensors()
    assert images.shape == (100, 3, 64, 64) and images.dtype == torch.float32
    assert torch.equal(ds.tensors(30, 70)[0], images[30:70])
    assert torch.equal(ds.images(np.arange(100), chunk_size=7), images)
    seen = []
    for batch in ds.batches(16, shuffle=True, seed=3):
        assert torch.equal(batch.images, images[batch.index])
        assert all(torch.equal(batch.labels[k], labels[k][batch.index]) for k in labels)
        seen.append(batch.index)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(100)) and seen.tolist() != list(range(100))
    assert [len(b.index) for b in ds.batches(32, drop_last=True)] == [32, 32, 32]


def test_dataloader_with_default_collate():
    ds = SynthSocial("test_spurious", n=24)
    images, labels = ds.tensors()
    got_images, got_labels = next(iter(DataLoader(ds, batch_size=24)))
    assert torch.equal(got_images, images)
    assert all(torch.equal(got_labels[k], labels[k]) for k in labels)


def test_transform_is_applied_on_every_path():
    plain = SynthSocial("train", n=8)
    doubled = SynthSocial("train", n=8, transform=lambda x: x[:, ::2, ::2] * 2)
    ref = plain.tensors()[0][:, :, ::2, ::2] * 2
    assert torch.equal(doubled.tensors()[0], ref)
    assert torch.equal(doubled[3][0], ref[3])
    assert torch.equal(next(doubled.batches(8)).images, ref)


def test_image_size_is_configurable():
    images = SynthSocial("train", n=4, image_size=32).tensors()[0]
    assert images.shape == (4, 3, 32, 32)
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.1


def test_label_names_follow_the_data_contract():
    train = SynthSocial("train", n=8)
    assert train.label_names["gender"] == ("male", "female")
    assert len(train.label_names["ethnicity"]) == 4 and len(train.label_names["occupation"]) >= 8
    assert len(train.label_names["scene"]) >= 4 and train.label_names["age"] == ("young", "old")
    assert "target" not in train.label_names and "target" not in train[0][1]
    spurious = SynthSocial("test_spurious", n=8)
    assert spurious.label_names["target"] == ("chef", "farmer")
    assert spurious.label_names["spurious"] == ("kitchen", "field")
    for key, names in spurious.label_names.items():  # every label indexes its names
        assert spurious.labels[key].max() < len(names)


# --------------------------------------------------------------------------- planted skews
def test_train_gender_skew_matches_config(big_train_labels):
    labels = big_train_labels
    expected_female = {"doctor": 0.06, "nurse": 0.94, "chef": 0.94, "firefighter": 0.06,
                       "engineer": 0.06, "teacher": 0.94, "farmer": 0.94, "pilot": 0.06}  # the documented defaults
    for occ, p in expected_female.items():
        assert conditional(labels, "gender", 1, "occupation", OCC[occ]) == pytest.approx(p, abs=0.025)
    counts = torch.bincount(labels["occupation"], minlength=8).float() / len(labels["occupation"])
    assert torch.allclose(counts, torch.full((8,), 1 / 8), atol=0.01)
    assert labels["age"].float().mean().item() == pytest.approx(0.5, abs=0.015)


def test_train_ethnicity_and_scene_skews_match_config(big_train_labels):
    labels = big_train_labels
    assert conditional(labels, "ethnicity", ETH["white"], "occupation", OCC["doctor"]) == pytest.approx(0.7, abs=0.03)
    assert conditional(labels, "ethnicity", ETH["black"], "occupation", OCC["doctor"]) == pytest.approx(0.1, abs=0.02)
    assert conditional(labels, "ethnicity", ETH["asian"], "occupation", OCC["engineer"]) == pytest.approx(0.7, abs=0.03)
    for eth in ETH.values():  # nurse is not skewed
        assert conditional(labels, "ethnicity", eth, "occupation", OCC["nurse"]) == pytest.approx(0.25, abs=0.03)
    assert conditional(labels, "scene", SCENE["hospital"], "occupation", OCC["doctor"]) == pytest.approx(0.6, abs=0.03)
    assert conditional(labels, "scene", SCENE["street"], "occupation", OCC["doctor"]) == pytest.approx(0.08, abs=0.02)
    # The spurious pair: own scene 0.9, partner scene 0.1, never elsewhere.
    assert conditional(labels, "scene", SCENE["kitchen"], "occupation", OCC["chef"]) == pytest.approx(0.9, abs=0.02)
    assert conditional(labels, "scene", SCENE["field"], "occupation", OCC["chef"]) == pytest.approx(0.1, abs=0.02)
    assert conditional(labels, "scene", SCENE["field"], "occupation", OCC["farmer"]) == pytest.approx(0.9, abs=0.02)
    chef_scenes = set(labels["scene"][labels["occupation"] == OCC["chef"]].tolist())
    assert chef_scenes == {SCENE["kitchen"], SCENE["field"]}


def test_custom_config_changes_the_skew():
    config = SynthConfig(female_prob={"doctor": 0.5, "nurse": 0.2}, ethnicity_skew={}, home_scene_prob=1.0,
                         old_prob=0.2)
    labels = SynthSocial("train", n=16_000, config=config).labels
    assert conditional(labels, "gender", 1, "occupation", OCC["doctor"]) == pytest.approx(0.5, abs=0.04)
    assert conditional(labels, "gender", 1, "occupation", OCC["nurse"]) == pytest.approx(0.2, abs=0.04)
    assert conditional(labels, "gender", 1, "occupation", OCC["pilot"]) == pytest.approx(0.5, abs=0.04)  # unlisted
    assert conditional(labels, "ethnicity", ETH["white"], "occupation", OCC["doctor"]) == pytest.approx(0.25, abs=0.04)
    assert conditional(labels, "scene", SCENE["classroom"], "occupation", OCC["teacher"]) == 1.0
    assert labels["age"].float().mean().item() == pytest.approx(0.2, abs=0.02)


# --------------------------------------------------------------------------- balanced splits
def test_test_balanced_cells_are_exactly_balanced():
    ds = SynthSocial("test_balanced")
    labels = ds.labels
    assert len(ds) == 2048
    cell = (labels["occupation"] * 2 + labels["gender"]) * 4 + labels["ethnicity"]
    assert torch.equal(torch.bincount(cell, minlength=64), torch.full((64,), 32))
    assert torch.equal(torch.bincount(cell[labels["age"] == 1], minlength=64), torch.full((64,), 16))
    # Scenes are independent of occupation: every occupation sees every scene at roughly 1/6.
    for occ in range(8):
        share = torch.bincount(labels["scene"][labels["occupation"] == occ], minlength=6).float() / 256
        assert share.min() > 0.08 and share.max() < 0.26
    assert labels["occupation"][:64].unique().numel() == 8  # shuffled, not sorted by cell


def test_test_spurious_groups_are_balanced_and_consistent():
    ds = SynthSocial("test_spurious")
    labels = ds.labels
    assert len(ds) == 1024
    group = labels["target"] * 2 + labels["spurious"]
    assert torch.equal(torch.bincount(group, minlength=4), torch.full((4,), 256))
    occ = torch.tensor([OCC["chef"], OCC["farmer"]])[labels["target"]]
    scene = torch.tensor([SCENE["kitchen"], SCENE["field"]])[labels["spurious"]]
    assert torch.equal(labels["occupation"], occ) and torch.equal(labels["scene"], scene)
    assert labels["gender"].float().mean().item() == pytest.approx(0.5, abs=0.06)


# --------------------------------------------------------------------------- captions
def test_captions_name_the_images_own_attributes():
    ds = SynthSocial("test_balanced", n=64)
    words = lambda text: set(text.split())  # noqa: E731
    for i in range(0, 64, 7):
        _, lab = ds[i]
        caps = ds.captions(i)
        occupation = vocab.OCCUPATIONS[lab["occupation"]]
        assert any(occupation in words(c) for c in caps)  # (the sampled share is tested below)
        gender_words = {"male": {"man", "male"}, "female": {"woman", "female"}}
        own, other = gender_words[vocab.GENDERS[lab["gender"]]], gender_words[vocab.GENDERS[1 - lab["gender"]]]
        assert any(own & words(c) for c in caps) and not any(other & words(c) for c in caps)
        eth = vocab.ETHNICITIES[lab["ethnicity"]]
        assert any(eth in words(c) for c in caps)
        assert not any((set(vocab.ETHNICITIES) - {eth}) & words(c) for c in caps)
        scene_phrases = vocab.SCENE_PHRASES[vocab.SCENES[lab["scene"]]]
        assert any(p in c for c in caps for p in scene_phrases)
        other_occupations = set(vocab.OCCUPATIONS) - {occupation}
        assert not any(other_occupations & words(c) for c in caps)


def test_sampled_captions_are_reproducible_fillings_at_the_configured_rates():
    ds = SynthSocial("train", n=4000)
    index = np.arange(4000)
    first, again = ds.sample_captions(index, 7), ds.sample_captions(index, np.random.default_rng(7))
    assert first == again and first != ds.sample_captions(index, 8)
    for i in range(0, 4000, 397):
        assert first[i] in ds.captions(i)
    occupations = [vocab.OCCUPATIONS[o] for o in ds.labels["occupation"].tolist()]
    named = np.mean([occ in cap.split() for occ, cap in zip(occupations, first)])
    ethnic = np.mean([bool(set(vocab.ETHNICITIES) & set(cap.split())) for cap in first])
    rates = mention_rates()
    assert named == pytest.approx(rates["occupation"], abs=0.02) and named > 0.8
    assert ethnic == pytest.approx(rates["ethnicity"], abs=0.02) and ethnic > 0.15
    assert ds.caption(5, 7) == ds.sample_captions([5], 7)[0]


def test_config_caption_weights_reach_the_sampler():
    config = SynthConfig(caption_weights={name: 0.0 for name in ("plain", "adjective", "activity", "gender",
                                                                 "gender_photo", "gender_working", "scene", "age",
                                                                 "ethnicity", "full", "ethnicity_gender_photo",
                                                                 "ethnicity_gender", "age_gender_scene", "person")})
    ds = SynthSocial("train", n=50, config=config)  # only "a photo of a {occupation}" is left
    occupations = [vocab.OCCUPATIONS[o] for o in ds.labels["occupation"].tolist()]
    expected = [("a photo of an " if o[0] in "aeiou" else "a photo of a ") + o for o in occupations]
    assert ds.sample_captions(np.arange(50), 0) == expected


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(split="validation"), ValueError, "unknown split"),
        (dict(split="test_balanced", n=100), ValueError, "divisible by 64"),
        (dict(split="test_spurious", n=10), ValueError, "divisible by 4"),
        (dict(split="train", n=0), ValueError, "positive integer"),
        (dict(split="train", seed=-1), ValueError, "non-negative"),
        (dict(split="train", image_size=8), ValueError, ">= 16"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        SynthSocial(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(female_prob={"astronaut": 0.5}), "unknown keys"),
        (dict(female_prob={"doctor": 1.5}), r"female_prob\['doctor'\]"),
        (dict(ethnicity_skew={"doctor": ("martian", 0.7)}), "ethnicity_skew"),
        (dict(spurious_occupations=("chef", "chef")), "two different names"),
        (dict(spurious_scenes=("kitchen", "moon")), "two different names"),
        (dict(n_test_spurious=1022), "multiple of 4"),
        (dict(caption_weights={"nonsense": 1.0}), "unknown caption template"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_index_out_of_range():
    ds = SynthSocial("train", n=5)
    with pytest.raises(IndexError, match="length 5"):
        ds[5]
    with pytest.raises(IndexError):
        ds.tensors(0, 6)
