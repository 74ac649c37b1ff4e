"""The on-disk store: shards + manifest, atomic writes, resuming after a crash, mismatch errors."""
import copy
import json

import pytest
import torch

from workbench.activations import ActivationStore, extract, extract_text
from workbench.activations.extract import sample_indices
from workbench.activations.store import MANIFEST, SCHEMA

SITES = ["head_contributions", "blocks.1.hook_resid_post"]
N, BATCH, SHARD = 40, 4, 8  # 5 shards of 8 items, 2 batches each


def run(model, ds, cache_dir=None, **kwargs):
    kwargs = {"sites": SITES, "batch_size": BATCH, "shard_size": SHARD, "progress": False, **kwargs}
    return extract(model, ds, cache_dir=cache_dir, **kwargs)


def assert_same(a, b):
    assert a.sites == b.sites and len(a) == len(b)
    for site in a.sites:
        assert torch.equal(a[site], b[site]), site
    assert a.labels.keys() == b.labels.keys()
    for key in a.labels:
        assert torch.equal(a.labels[key], b.labels[key]), key


@pytest.fixture
def reference(tiny, random_images):
    """An uninterrupted in-memory run with the same batches (batch 4 divides shard 8, so no batch differs)."""
    return run(tiny, random_images(N))


def test_disk_equals_memory_and_layout(tiny, random_images, reference, tmp_path):
    store = run(tiny, random_images(N), tmp_path)
    assert_same(store, reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST] + [f"shard_{i:05d}.safetensors" for i in range(5)]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["schema"] == SCHEMA
    assert manifest["model"] == {"name": "wb-tiny", "pretrained": None, "fingerprint": tiny.fingerprint()}
    assert manifest["dataset"]["class"] == "RandomImages" and manifest["dataset"]["len"] == N
    assert manifest["dataset"]["id"].startswith("sha256:")
    assert manifest["sites"]["head_contributions"]["shape"] == [3, 4, 32]
    assert manifest["sites"]["blocks.1.hook_resid_post"]["shape"] == [64]
    settings = [manifest[k] for k in ("dtype", "position", "batch_size", "shard_size")]
    assert settings == ["float32", "cls", 4, 8]
    assert [(r["start"], r["stop"]) for r in manifest["completed"]] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    assert all(r["bytes"] == (tmp_path / r["file"]).stat().st_size for r in manifest["completed"])
    assert_same(ActivationStore.open(tmp_path), reference)


def test_last_shard_may_be_short(tiny, random_images, tmp_path):
    ds = random_images(11)
    store = run(tiny, ds, tmp_path, batch_size=3, shard_size=6)
    assert [(r["start"], r["stop"]) for r in store.manifest["completed"]] == [(0, 6), (6, 11)]
    assert_same(store, run(tiny, ds, batch_size=3, shard_size=6))  # memory: batches [0,3) [3,6) [6,9) [9,11)


def test_repr_names_sites_shapes_and_fingerprint(tiny, random_images, tmp_path):
    text = repr(run(tiny, random_images(N), tmp_path))
    for part in ("n=40", "float32", "head_contributions: [3, 4, 32]", "blocks.1.hook_resid_post: [64]",
                 tiny.fingerprint()[:12], "5 shard(s)", "'gender'"):
        assert part in text


def test_resume_after_crash_recomputes_only_missing_shards(tiny, random_images, reference, tmp_path, count_forwards):
    crash_at = 21  # inside shard 2 ([16, 24)): shards 0 and 1 are complete
    assert crash_at not in sample_indices(N)  # the dataset hash must not read the crashing item
    with pytest.raises(RuntimeError, match="simulated crash at item 21"):
        run(tiny, random_images(N, fail_at=crash_at), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [r["file"] for r in manifest["completed"]] == ["shard_00000.safetensors", "shard_00001.safetensors"]
    with pytest.raises(ValueError, match="unfinished .2 of 5 shards, 16 of 40 items"):
        ActivationStore.open(tmp_path)
    partial = ActivationStore.open(tmp_path, partial=True)
    site = "blocks.1.hook_resid_post"
    assert len(partial) == 16 and torch.equal(partial[site], reference[site][:16])

    with count_forwards(tiny) as sizes:
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 6  # items 16..39 only (3 shards × 2 batches), no shape probe
    assert_same(resumed, reference)

    with count_forwards(tiny) as sizes:  # a finished cache is returned without any forward pass
        again = run(tiny, random_images(N), tmp_path)
    assert sizes == [] and len(again) == N


def test_crash_while_writing_a_shard_leaves_no_shard(tiny, random_images, reference, tmp_path, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    calls = []

    def dying_save(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:  # third shard: half a file, then the process "dies"
            with open(filename, "wb") as f:
                f.write(b"\x00" * 100)
            raise KeyboardInterrupt("killed while writing")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(tiny, random_images(N), tmp_path)
    assert calls[-1].endswith("shard_00002.safetensors.tmp")
    assert not (tmp_path / "shard_00002.safetensors").exists()  # the final name never holds a partial file
    assert (tmp_path / "shard_00002.safetensors.tmp").exists()
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)

    resumed = run(tiny, random_images(N), tmp_path)
    assert not list(tmp_path.glob("*.tmp"))
    assert_same(resumed, reference)


def test_unlisted_truncated_shard_and_leftover_tmp_are_ignored(tiny, random_images, reference, tmp_path,
                                                               count_forwards):
    run(tiny, random_images(N), tmp_path)
    # a kill between writing shard 4 and recording it: shard file present (here truncated), manifest without it
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["completed"] = manifest["completed"][:4]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    shard = tmp_path / "shard_00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:50])
    (tmp_path / "manifest.json.tmp").write_text("{ half a manifest")
    (tmp_path / "shard_00003.safetensors.tmp").write_bytes(b"junk")

    assert len(ActivationStore.open(tmp_path, partial=True)) == 32  # the unlisted shard is not read
    with count_forwards(tiny) as sizes:
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH, BATCH]  # shard 4 only
    assert not list(tmp_path.glob("*.tmp"))
    assert_same(resumed, reference)


def test_damaged_listed_shard_is_reported_and_recomputed(tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)
    shard = tmp_path / "shard_00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="shard_00003.safetensors is damaged"):
        ActivationStore.open(tmp_path)
    with count_forwards(tiny) as sizes:
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 4  # shards 3 and 4: completed shards stay a prefix
    assert_same(resumed, reference)


@pytest.mark.parametrize("change, field", [
    ({"dtype": torch.float16}, "dtype"),
    ({"position": "all"}, "position"),
    ({"sites": ["head_contributions"]}, "sites"),
    ({"shard_size": 16}, "shard_size"),
])
def test_mismatch_on_resume_names_the_field(tiny, random_images, tmp_path, change, field):
    run(tiny, random_images(8), tmp_path)
    with pytest.raises(ValueError, match=f"written with a different {field}:") as info:
        run(tiny, random_images(8), tmp_path, **change)
    message = str(info.value)
    assert "stored:" in message and "requested:" in message and "overwrite=True" in message
    assert len(run(tiny, random_images(8), tmp_path, overwrite=True, **change)) == 8


def test_mismatch_of_dataset_or_model(tiny, random_images, tmp_path):
    run(tiny, random_images(8), tmp_path)
    with pytest.raises(ValueError, match="different dataset"):
        run(tiny, random_images(8, seed=1), tmp_path)
    with pytest.raises(ValueError, match="different dataset"):
        run(tiny, random_images(7), tmp_path)
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        other.visual.proj.add_(0.01)
    with pytest.raises(ValueError, match=f"different model fingerprint:\n  stored:    '{tiny.fingerprint()}'"):
        run(other, random_images(8), tmp_path)
    store = ActivationStore.open(tmp_path)
    store.check_model(tiny)
    with pytest.raises(ValueError, match="fingerprint"):
        store.check_model(other)


def test_dataset_id_replaces_the_content_hash(tiny, random_images, tmp_path):
    store = run(tiny, random_images(8), tmp_path, dataset_id="my-faces-v1")
    assert store.manifest["dataset"]["id"] == "my-faces-v1"


def test_iter_shards_and_iter_batches(tiny, random_images, reference, tmp_path):
    store = run(tiny, random_images(N), tmp_path)
    site = "blocks.1.hook_resid_post"
    assert torch.equal(torch.cat(list(store.iter_shards(site))), reference[site])

    batches = list(store.iter_batches(6))  # 6 does not divide the shard size: batches straddle shards
    assert [len(labels["gender"]) for _, labels in batches] == [6] * 6 + [4]
    assert torch.equal(torch.cat([acts[site] for acts, _ in batches]), reference[site])
    assert torch.equal(torch.cat([labels["group"] for _, labels in batches]), reference.labels["group"])

    shuffled = list(store.iter_batches(6, sites=[site], shuffle=True, seed=3))
    rows = torch.cat([acts[site] for acts, _ in shuffled])
    groups = torch.cat([labels["group"] for _, labels in shuffled])
    # each yielded row is some original row, each exactly once, with that row's label
    match = (rows[:, None, :] == reference[site][None]).all(-1).float().argmax(1)
    assert sorted(match.tolist()) == list(range(N)) and match.tolist() != list(range(N))
    assert torch.equal(groups, reference.labels["group"][match])
    assert list(store.iter_batches(6, shuffle=True, seed=3))[0][0][site].shape == (6, 64)
    assert len(list(store.iter_batches(6, drop_last=True))) == 6


def test_in_memory_store_iterates_too(reference):
    site = "head_contributions"
    assert torch.equal(torch.cat(list(reference.iter_shards(site))), reference[site])
    assert torch.equal(torch.cat([a[site] for a, _ in reference.iter_batches(16)]), reference[site])
    assert "in memory" in repr(reference)


def test_unknown_site_in_store(reference):
    with pytest.raises(KeyError, match="did you mean 'head_contributions'"):
        reference["head_contribution"]


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        ActivationStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"schema": "something/v9"}))
    with pytest.raises(ValueError, match="expected 'workbench.activations/v1'"):
        ActivationStore.open(tmp_path)


def test_text_extraction_to_disk_resumes(tiny, tmp_path, count_forwards):
    prompts = [f"a photo of person {i}" for i in range(10)]
    kwargs = {"sites": ["text.blocks.0.hook_resid_post"], "batch_size": 2, "shard_size": 4, "progress": False}
    memory = extract_text(tiny, prompts, **kwargs)
    extract_text(tiny, prompts, cache_dir=tmp_path, **kwargs)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["completed"] = manifest["completed"][:1]
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with count_forwards(tiny, tower="text") as sizes:
        store = extract_text(tiny, prompts, cache_dir=tmp_path, **kwargs)
    assert sizes == [2, 2, 2]  # prompts 4..9
    assert store.manifest["tower"] == "text"
    assert torch.equal(store["text.blocks.0.hook_resid_post"], memory["text.blocks.0.hook_resid_post"])
    with pytest.raises(ValueError, match="different dataset"):
        extract_text(tiny, prompts[::-1], cache_dir=tmp_path, **kwargs)
