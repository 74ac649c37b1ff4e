"""The on-disk store: shards + manifest, atomic writes, resuming after a crash, mismatch errors."""
import copy
import hashlib
import json
from pathlib import Path

import pytest
import torch

from workbench.activations import ActivationStore, ShardError, extract, extract_text
from workbench.activations.extract import sample_indices
from workbench.activations.store import MANIFEST, SCHEMA

SITES = ["head_contributions", "blocks.1.hook_resid_post"]
N, BATCH, SHARD = 40, 4, 8  # 5 shards of 8 items, 2 batches each
REDO = r"call extract\(\.\.\.\) again with the same arguments and cache_dir='.*': it recomputes the damaged shard"


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
    assert settings == ["float32", "pooled", 4, 8]
    assert [(r["start"], r["stop"]) for r in manifest["completed"]] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40)]
    assert all(r["bytes"] == (tmp_path / r["file"]).stat().st_size for r in manifest["completed"])
    assert all(r["sha256"] == hashlib.sha256((tmp_path / r["file"]).read_bytes()).hexdigest()
               for r in manifest["completed"])
    from safetensors import safe_open

    with safe_open(str(tmp_path / "shard_00002.safetensors"), "pt") as f:  # a shard says which one it is
        assert {k: f.metadata()[k] for k in ("index", "start", "stop", "dtype")} == \
            {"index": "2", "start": "16", "stop": "24", "dtype": "float32"}
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
    assert Path(calls[-1]).parent == tmp_path and Path(calls[-1]).name.startswith(".shard_00002.safetensors.")
    assert not (tmp_path / "shard_00002.safetensors").exists()  # the final name never holds a partial file
    assert not list(tmp_path.glob("*.tmp"))  # an exception removes the temporary file (a kill -9 does not)
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
    # temporary files of a killed run: files.atomic_write's names, and the `<name>.tmp` ones of older versions
    (tmp_path / ".manifest.json.k2j4x9.tmp").write_text("{ half a manifest")
    (tmp_path / ".shard_00003.safetensors.a8d0qq.tmp").write_bytes(b"junk")
    (tmp_path / "manifest.json.tmp").write_text("{ half a manifest")
    (tmp_path / "shard_00003.safetensors.tmp").write_bytes(b"junk")
    (tmp_path / "notes.tmp").write_text("the user's own file")

    assert len(ActivationStore.open(tmp_path, partial=True)) == 32  # the unlisted shard is not read
    with count_forwards(tiny) as sizes:
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH, BATCH]  # shard 4 only
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["notes.tmp"]  # only the store's own files are removed
    assert_same(resumed, reference)


def test_damaged_listed_shard_is_reported_and_recomputed(tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)
    shard = tmp_path / "shard_00003.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match=rf"shard_00003.safetensors is damaged: manifest.json records {size} bytes "
                                         rf"but the file has {size - 10} bytes; {REDO}"):
        ActivationStore.open(tmp_path)
    with count_forwards(tiny) as sizes, pytest.warns(UserWarning, match="(?s)recomputing 1 damaged shard.*shard_00003"):
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 2  # shard 3 only: the intact shard 4 after it is kept
    assert_same(resumed, reference)


def overwrite(path, offset, data):
    """Change bytes of a file in place (its size stays the same)."""
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def edit_manifest(root, change):
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def test_same_size_corruption_is_caught_by_the_checksum_and_only_that_shard_recomputed(
        tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)
    shard = tmp_path / "shard_00002.safetensors"
    size = shard.stat().st_size
    overwrite(shard, size - 64, b"\x7f" * 16)  # inside the tensor data: the header still parses
    assert shard.stat().st_size == size
    store = ActivationStore.open(tmp_path)  # open checks sizes and headers only
    site = "blocks.1.hook_resid_post"
    assert torch.equal(next(store.iter_shards(site)), reference[site][:8])  # shard 0 is fine
    with pytest.raises(ShardError, match=rf"shard_00002.safetensors is damaged: its sha256 is [0-9a-f]{{16}}… but "
                                         rf"manifest.json records [0-9a-f]{{16}}… .*; {REDO}"):
        store[site]
    with pytest.raises(ShardError, match="shard_00002.safetensors is damaged: its sha256"):
        store.verify()
    with count_forwards(tiny) as sizes, pytest.warns(UserWarning, match="(?s)1 damaged shard.*shard_00002.*sha256"):
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 2  # shard 2 only
    assert_same(resumed, reference)
    resumed.verify()


def test_damaged_header_names_the_shard(tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)
    shard = tmp_path / "shard_00001.safetensors"
    overwrite(shard, 8, b"\x00\xff garbage \x00")  # the JSON header right after its 8-byte length
    with pytest.raises(ShardError, match=rf"shard_00001.safetensors is damaged: its safetensors header cannot be "
                                         rf"read \(.*\); {REDO}"):
        ActivationStore.open(tmp_path)
    with count_forwards(tiny) as sizes, pytest.warns(UserWarning, match="(?s)shard_00001.*header cannot be read"):
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 2
    assert_same(resumed, reference)


def test_swapped_shard_names_in_manifest_are_caught(tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)

    def swap(manifest):
        done = manifest["completed"]
        done[1]["file"], done[2]["file"] = done[2]["file"], done[1]["file"]

    edit_manifest(tmp_path, swap)
    with pytest.raises(ShardError, match=r"shard_00002.safetensors is listed in manifest.json for rows \[8, 16\), "
                                         rf"which are the rows of shard_00001.safetensors .*; {REDO}"):
        ActivationStore.open(tmp_path)
    with count_forwards(tiny) as sizes, pytest.warns(UserWarning, match="(?s)recomputing 2 damaged shard"):
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 4  # shards 1 and 2
    assert_same(resumed, reference)


def test_swapped_shard_files_are_caught_by_their_own_metadata(tiny, random_images, tmp_path):
    run(tiny, random_images(N), tmp_path)
    one, two = tmp_path / "shard_00001.safetensors", tmp_path / "shard_00002.safetensors"
    one.rename(tmp_path / "swap")
    two.rename(one)
    (tmp_path / "swap").rename(two)
    assert one.stat().st_size == two.stat().st_size  # sizes cannot tell them apart
    with pytest.raises(ShardError, match=r"shard_00001.safetensors holds shard 2 \(rows \[16, 24\)\) but "
                                         rf"manifest.json lists it as shard 1 \(rows \[8, 16\)\).*; {REDO}"):
        ActivationStore.open(tmp_path)


def test_manifest_dtype_that_disagrees_with_the_shards_is_caught(tiny, random_images, tmp_path, count_forwards):
    run(tiny, random_images(8), tmp_path)
    edit_manifest(tmp_path, lambda m: m.update(dtype="float16"))
    with pytest.raises(ShardError, match=r"shard_00000.safetensors holds act/\S+ as F32 but manifest.json says "
                                         rf"dtype 'float16' \(F16\).*; {REDO}"):
        ActivationStore.open(tmp_path)
    # asking for float16, as the edited manifest says, recomputes the shard in float16
    with count_forwards(tiny) as sizes, pytest.warns(UserWarning, match="(?s)shard_00000.*as F32"):
        store = run(tiny, random_images(8), tmp_path, dtype=torch.float16)
    assert sizes == [BATCH] * 2 and store["blocks.1.hook_resid_post"].dtype == torch.float16


def test_resume_recomputes_a_missing_shard_in_the_middle(tiny, random_images, reference, tmp_path, count_forwards):
    run(tiny, random_images(N), tmp_path)
    edit_manifest(tmp_path, lambda m: m["completed"].pop(1))
    with pytest.raises(ValueError, match=r"unfinished \(4 of 5 shards, 32 of 40 items\)"):
        ActivationStore.open(tmp_path)
    site = "blocks.1.hook_resid_post"
    partial = ActivationStore.open(tmp_path, partial=True)  # the prefix before the gap
    assert len(partial) == 8 and torch.equal(partial[site], reference[site][:8])
    with count_forwards(tiny) as sizes:
        resumed = run(tiny, random_images(N), tmp_path)
    assert sizes == [BATCH] * 2  # shard 1 only
    assert [r["file"] for r in resumed.manifest["completed"]] == [f"shard_{i:05d}.safetensors" for i in range(5)]
    assert_same(resumed, reference)


def test_cache_of_the_previous_format_is_refused_with_the_fix(tiny, random_images, tmp_path):
    run(tiny, random_images(8), tmp_path)
    edit_manifest(tmp_path, lambda m: m.update(schema="workbench.activations/v1"))
    with pytest.raises(ValueError, match="recorded no checksums.*overwrite=True"):
        ActivationStore.open(tmp_path)
    with pytest.raises(ValueError, match="recorded no checksums.*overwrite=True"):
        run(tiny, random_images(8), tmp_path)
    assert len(run(tiny, random_images(8), tmp_path, overwrite=True)) == 8


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
    with pytest.raises(ValueError, match="expected 'workbench.activations/v2'"):
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
