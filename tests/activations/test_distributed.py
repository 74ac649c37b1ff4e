"""Distributed extraction (torch.distributed, gloo on CPU): 2 processes give the single-process store exactly,
a killed rank leaves a store that resumes from its complete shards (with any number of processes), a rank's
error reaches every rank, and the `workbench extract` command (in one process and under torchrun)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.activations import dist_worker as w
from workbench.activations import ActivationStore, extract
from workbench.activations.distributed import Ranks, _check_same_request, init_ranks, rank_device, rank_shards
from workbench.activations.store import MANIFEST
from workbench.cli import main

ROOT = Path(__file__).resolve().parents[2]


def assert_same_store(a: ActivationStore, b: ActivationStore) -> None:
    """Same rows in the same order (exact), same labels, same shards (rows and byte sizes)."""
    assert a.sites == b.sites and len(a) == len(b)
    for site in a.sites:
        assert torch.equal(a[site], b[site]), site
    assert a.labels.keys() == b.labels.keys()
    for key in a.labels:
        assert torch.equal(a.labels[key], b.labels[key]), key
    ignore = ("created", "updated", "completed")
    assert {k: v for k, v in a.manifest.items() if k not in ignore} == \
        {k: v for k, v in b.manifest.items() if k not in ignore}
    # safetensors writes its metadata in no fixed order, so the bytes (and sha256) of equal shards may differ
    shards = [[(r["file"], r["start"], r["stop"], r["bytes"]) for r in s.manifest["completed"]] for s in (a, b)]
    assert shards[0] == shards[1]


def spawn(world: int, cache_dir: Path, **kwargs) -> bool:
    """Run `world` ranks; False when a rank died (spawn then stops the others)."""
    try:
        mp.spawn(w.rank_main, args=(world, w.free_port(), str(cache_dir), kwargs.get("fail_rank"),
                                     kwargs.get("how", "exit"), kwargs.get("n_of_rank")), nprocs=world, join=True)
    except mp.ProcessExitedException:
        return False
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process store (one torch thread, like the ranks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return w.extract_once(tmp_path_factory.mktemp("single") / "acts")
    finally:
        torch.set_num_threads(threads)


def progress_records(folder: Path) -> dict[int, list]:
    return {int(p.stem.removeprefix("progress_rank")): json.loads(p.read_text())["completed"]
            for p in folder.glob("progress_rank*.json")}


# ---------------------------------------------------------------------------------------------- 2 processes
@pytest.mark.slow
def test_two_ranks_equal_one_process(reference, tmp_path):
    acts = tmp_path / "acts"
    assert spawn(2, acts)
    assert not list(tmp_path.glob("error_rank*.txt"))
    store = ActivationStore.open(acts)
    assert_same_store(store, reference)
    assert len(store) == w.N and store.n_shards == 6
    assert sorted(p.name for p in acts.iterdir()) == [MANIFEST] + [f"shard_{i:05d}.safetensors" for i in range(6)]
    store.verify()  # every shard's sha256 matches the merged manifest


@pytest.mark.slow
@pytest.mark.parametrize("world_on_resume", [1, 2])
def test_killed_rank_resumes_from_complete_shards(reference, tmp_path, world_on_resume):
    acts = tmp_path / "acts"
    assert not spawn(2, acts, fail_rank=1, how="exit")  # rank 1 dies inside its second shard (3)
    progress = progress_records(acts)
    assert [r["file"] for r in progress[1]] == ["shard_00001.safetensors"]  # its one complete shard, recorded
    assert {r["file"] for r in progress.get(0, [])} <= {f"shard_{i:05d}.safetensors" for i in (0, 2, 4)}
    assert json.loads((acts / MANIFEST).read_text())["completed"] == []  # rank 0 never got to merge
    with pytest.raises(ValueError, match=r"unfinished \(0 of 6 shards.*progress_rank\*\.json.*call extract"):
        ActivationStore.open(acts)
    kept = {r["file"]: (acts / r["file"]).stat().st_ino for records in progress.values() for r in records}

    if world_on_resume == 1:  # the plain single-process API resumes a distributed store (world size changed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            from workbench.models import load_clip

            store = extract(load_clip("synthsocial"), w.dataset(), w.SITES, batch_size=w.BATCH,
                            cache_dir=acts, progress=False)
        finally:
            torch.set_num_threads(threads)
    else:
        assert spawn(2, acts)
        store = ActivationStore.open(acts)
    assert_same_store(store, reference)
    assert {f: (acts / f).stat().st_ino for f in kept} == kept  # complete shards were not recomputed
    assert not list(acts.glob("progress_rank*.json"))


@pytest.mark.slow
def test_error_on_one_rank_reaches_every_rank(tmp_path):
    acts = tmp_path / "acts"
    assert spawn(2, acts, fail_rank=1, how="raise")  # both ranks return (after writing their error)
    errors = {p.name: p.read_text() for p in tmp_path.glob("error_rank*.txt")}
    assert errors["error_rank1.txt"] == "RuntimeError: simulated bad item 100"
    assert errors["error_rank0.txt"].startswith(
        "RuntimeError: rank 1 of the distributed extraction into ") and "simulated bad item 100" in \
        errors["error_rank0.txt"] and "run the same command again to resume" in errors["error_rank0.txt"]
    # rank 0 finished its shards and recorded them with rank 1's first one in the manifest
    done = [r["file"] for r in json.loads((acts / MANIFEST).read_text())["completed"]]
    assert done == [f"shard_{i:05d}.safetensors" for i in (0, 1, 2, 4)]


# ---------------------------------------------------------------------------------------------- pieces
def test_rank_shards_are_disjoint_and_cover():
    missing = [0, 2, 3, 5, 7, 8, 9]
    shares = [rank_shards(missing, r, 3) for r in range(3)]
    assert shares == [[0, 5, 9], [2, 7], [3, 8]]
    assert sorted(sum(shares, [])) == missing


class _FakeRanks(Ranks):
    def __init__(self, requests):
        super().__init__(0, len(requests), 0)
        object.__setattr__(self, "requests", requests)

    def gather(self, obj):
        return self.requests


def test_ranks_must_ask_for_the_same_extraction():
    same = {"model": "abc", "dataset": {"len": 192}, "sites": ["x"], "dtype": "float32"}
    _check_same_request(_FakeRanks([same, dict(same)]), same)
    other = {**same, "dataset": {"len": 96}}
    with pytest.raises(ValueError, match=r"rank 1 asks for a different dataset than rank 0 \(\{'len': 96\} vs "
                                         r"\{'len': 192\}\); every rank must run the same command"):
        _check_same_request(_FakeRanks([same, other]), same)


def test_init_ranks_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert init_ranks() == Ranks(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but \['RANK', 'MASTER_ADDR', 'MASTER_PORT'\] are not set: "
                                           "start the job with torchrun"):
        init_ranks()


def test_bad_arguments(tmp_path):
    from workbench.activations import extract_distributed
    from workbench.models import load_clip

    model = load_clip("synthsocial")
    with pytest.raises(ValueError, match="distributed extraction writes one store on disk: pass cache_dir"):
        extract_distributed(model, w.dataset(64), w.SITES, None)
    with pytest.raises(ValueError, match=r"did you mean 'blocks\.5\.hook_resid_post'"):
        extract_distributed(model, w.dataset(64), ["blocks.5.hook_resid_pots"], tmp_path / "a")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was asked for but CUDA is not available here"):
            rank_device("cuda", Ranks())
    assert rank_device("cpu", Ranks(1, 2, 1)) == torch.device("cpu") and rank_device(None, Ranks()) is None


def test_progress_of_another_extraction_is_never_merged(tmp_path):
    """A progress file left next to a deleted manifest belongs to another extraction: dropped, not merged."""
    acts = tmp_path / "acts"
    w.extract_once(acts, n=64)
    stale = {"schema": "workbench.activations/v2", "rank": 1, "manifest_created": "2000-01-01T00:00:00+00:00",
             "completed": [{"file": "shard_00001.safetensors", "start": 32, "stop": 64, "bytes": 1, "sha256": "x"}]}
    (acts / MANIFEST).unlink()
    (acts / "progress_rank00001.json").write_text(json.dumps(stale))
    store = w.extract_once(acts, n=64)
    assert len(store) == 64 and not list(acts.glob("progress_rank*.json"))
    assert (acts / "shard_00001.safetensors").stat().st_size == store.manifest["completed"][1]["bytes"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_store_matches_cpu(tmp_path):
    from tests.tolerance import assert_fp32_close

    cpu = w.extract_once(tmp_path / "cpu", n=64)
    gpu = w.extract_once(tmp_path / "gpu", n=64, device="cuda")
    for site in cpu.sites:
        assert_fp32_close(gpu[site], cpu[site])


# ---------------------------------------------------------------------------------------------- the command
def test_extract_command_one_process(tmp_path, capsys):
    acts = tmp_path / "acts"
    args = ["extract", "--data", "synthsocial:train", "--n", "64", "--sites", ",".join(w.SITES),
            "--cache-dir", str(acts), "--batch-size", str(w.BATCH), "--shard-size", str(w.SHARD), "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"cache_dir": str(acts), "n": 64, "shards": 2,
                       "sites": {"head_contributions": [6, 8, 128], "blocks.5.hook_resid_post": [128]}}
    assert_same_store(ActivationStore.open(acts), w.extract_once(tmp_path / "api", n=64))  # = the Python API


@pytest.mark.parametrize("flags, message", [
    (["--sites", "blocks.5.hook_resid_pots"], r"did you mean 'blocks\.5\.hook_resid_post'"),
    (["--sites", " , "], r"--sites ' , ' names no site"),
    (["--data", "synthsocial:validation"], r"unknown SynthSocial split 'validation'; choose one of synthsocial:train"),
    (["--data", "imagenet:/data"], r"expected 'synthsocial' or KIND:DIR with KIND one of fairface"),
    (["--data", "fairface:/no/such/folder"], r"no folder '/no/such/folder'"),
    (["--dtype", "float64"], r"--dtype 'float64': choose one of float32, float16, bfloat16"),
    (["--n", "0"], r"--n must be a positive number of items, got 0"),
    (["--position", "middle"], r"--position 'middle': pooled, all, or a token index"),
])
def test_extract_command_bad_input(tmp_path, capsys, flags, message):
    args = ["extract", "--data", "synthsocial:train", "--n", "64", "--sites", "head_contributions",
            "--cache-dir", str(tmp_path / "acts"), "--quiet"]
    for i in range(0, len(flags), 2):  # a later flag overrides an earlier one in argparse
        args += flags[i:i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench extract: error: ") and re.search(message, err), err


def test_extract_command_refuses_a_different_store(tmp_path, capsys):
    acts = tmp_path / "acts"
    base = ["extract", "--data", "synthsocial:train", "--sites", "head_contributions", "--cache-dir", str(acts),
            "--quiet", "--shard-size", "32"]
    assert main(base + ["--n", "32"]) == 0
    capsys.readouterr()
    assert main(base + ["--n", "64"]) == 2
    assert re.search(r"was written with a different dataset", capsys.readouterr().err)


@pytest.mark.slow
def test_extract_command_under_torchrun(reference, tmp_path):
    acts = tmp_path / "acts"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(w.free_port()), "-m", "workbench.cli", "extract", "--data", "synthsocial:train",
           "--n-items", str(w.N), "--sites", ",".join(w.SITES), "--cache-dir", str(acts),
           "--batch-size", str(w.BATCH), "--shard-size", str(w.SHARD), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(summary) == 1 and summary[0]["n"] == w.N and summary[0]["shards"] == 6  # printed by rank 0 only
    assert_same_store(ActivationStore.open(acts), reference)


def test_a_finished_store_is_returned_untouched(tmp_path, count_forwards):
    from workbench.models import load_clip

    acts = tmp_path / "acts"
    w.extract_once(acts, n=64)
    before = {p.name: p.stat().st_mtime_ns for p in acts.iterdir()}
    model = load_clip("synthsocial")
    from workbench.activations import extract_distributed

    with count_forwards(model) as sizes:
        store = extract_distributed(model, w.dataset(64), w.SITES, acts, batch_size=w.BATCH, shard_size=w.SHARD,
                                    progress=False)
    assert sizes == [] and len(store) == 64  # no forward pass, no file rewritten
    assert {p.name: p.stat().st_mtime_ns for p in acts.iterdir()} == before
