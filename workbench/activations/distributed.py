"""Activation extraction across processes and machines with torch.distributed (launched by torchrun).

    torchrun --nproc-per-node 4 -m workbench.cli extract --model ViT-B-16 --pretrained openai \\
        --data fairface:/data/fairface --sites head_contributions --cache-dir acts/ --device cuda

    # or from Python, in a script started by torchrun:
    store = extract_distributed(model, dataset, ["head_contributions"], cache_dir="acts/", device="cuda")

How the work is split (docs/activations.md, "Distributed extraction"): rank 0 prepares the store (a new
manifest after one probe forward pass, or the existing one when resuming: verified, with the shards of dead
ranks merged in) and sends it to every rank. The shards still missing are dealt out round-robin by rank
(shard i to rank i mod world_size): a disjoint, deterministic part of the dataset per rank. Each rank writes
its shards atomically into the one folder and records them in its own `progress_rank*.json`; after all ranks
report, rank 0 merges them into `manifest.json`. Shard i holds the same rows whatever the number of
processes, so the store equals the single-process one exactly, and a store left by a dead rank (or a
killed job) resumes from its complete shards with any number of processes.

The process group comes from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...): gloo on CPU, nccl
on CUDA, each rank on `cuda:LOCAL_RANK`. Without torchrun this is the single-process `extract`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from workbench.files import check_writable_dir

from .extract import (
    ImageSource,
    Position,
    SiteCollector,
    _check_args,
    _extract_missing_shards,
    _header,
    _now,
    _resume_or_start,
    missing_shards,
    resolve_sites,
)
from .store import (
    DTYPES,
    MANIFEST,
    ActivationStore,
    clear_cache_dir,
    dtype_name,
    merge_rank_progress,
    remove_leftovers,
    remove_rank_progress,
    write_json_atomic,
    write_rank_progress,
)

__all__ = ["Ranks", "init_ranks", "rank_shards", "rank_device", "extract_distributed"]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# errors a rank re-raises as the same type when another rank hit them (anything else: RuntimeError)
_ERRORS = {e.__name__: e for e in (ValueError, TypeError, FileNotFoundError, KeyError, NotImplementedError)}


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: `rank` of `world_size` processes, `local_rank` on its machine.

    The collectives are torch.distributed's (no-ops for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """[every rank's obj] on every rank, in rank order."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, world_size={self.world_size}, local_rank={self.local_rank})"


def _wants_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def init_ranks(device=None) -> Ranks:
    """The running process group's ranks; starts one from torchrun's environment if there is none yet
    (backend: nccl when `device` is CUDA, else gloo). A plain `python` process is `Ranks()` (rank 0 of 1)."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks()
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: start the job with "
                           "torchrun (e.g. torchrun --nproc-per-node 2 ...), which sets them for every rank")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; run extraction in one process")
    backend = "nccl" if _wants_cuda(device) else "gloo"
    if backend == "nccl":
        _check_cuda(device)
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank)


def _check_cuda(device) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available here "
                         "(torch.cuda.is_available() is False); pass device='cpu'")


def rank_device(device, ranks: Ranks) -> Optional[torch.device]:
    """Where this rank runs: a bare "cuda" becomes cuda:LOCAL_RANK (one GPU per process); None stays None
    (the model's device); anything else is used as given."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cuda":
        _check_cuda(device)
        if device.index is None:
            device = torch.device("cuda", ranks.local_rank if ranks.world_size > 1 else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "start at most that many processes per node (torchrun --nproc-per-node)")
    return device


def rank_shards(missing: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of the missing shard indices: every world_size-th, from position `rank`."""
    return list(missing)[rank::world_size]


def _failure(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)}


def _raise_for(failures: list[tuple[int, dict]], own: Optional[BaseException], root: Path) -> None:
    """Raise on every rank when any rank failed: a rank's own error as is, else the first failed rank's,
    under its type when it is one of _ERRORS."""
    if own is not None:
        raise own
    if failures:
        rank, f = failures[0]
        cls = _ERRORS.get(f["type"], RuntimeError)
        raise cls(f"rank {rank} of the distributed extraction into {root} failed: {f['type']}: {f['message']} "
                  "(shards finished by the other ranks are kept; run the same command again to resume)")


def extract_distributed(model, dataset, sites: Union[str, Sequence[str]], cache_dir, batch_size: int = 64,
                        device=None, dtype: torch.dtype = torch.float32, position: Position = "pooled",
                        num_workers: int = 0, progress: bool = True, shard_size: Optional[int] = None,
                        overwrite: bool = False, dataset_id: Optional[str] = None,
                        preprocess: Optional[bool] = None) -> ActivationStore:
    """`extract(...)` into `cache_dir` with every process of a torchrun job taking a share of the shards.

    Every rank calls it with the same arguments (each rank loads the model and builds the dataset itself);
    every rank gets the finished store back (`ActivationStore.open(cache_dir)`). The arguments mean what they
    mean in `workbench.activations.extract`; `device="cuda"` puts each rank on cuda:LOCAL_RANK. The ranks
    check that they were given the same model, dataset, sites, dtype, position and shard size before any work.
    Under plain `python` (no torchrun) it is a single-process extraction.

    Rank 0 alone writes manifest.json; when a rank raises (e.g. a bad dataset item), the others finish their
    shards, rank 0 records every finished shard, and every rank raises (the same error type, naming the
    rank). A killed rank ends the job (torchrun stops the others); its finished shards are in its
    progress_rank*.json and the next run, with any number of processes, resumes from them.
    """
    if cache_dir is None:
        raise ValueError("distributed extraction writes one store on disk: pass cache_dir (a folder every rank can "
                         "write, e.g. on a shared file system for a multi-node job)")
    position = _check_args(batch_size, position, shard_size, num_workers)
    dtype_str = dtype_name(dtype)
    ranks = init_ranks(device)
    device = rank_device(device, ranks)
    if device is not None and device != model.device:
        model.to(device)
    source = ImageSource(model, dataset, num_workers, dataset_id, preprocess)
    sites = resolve_sites(model, sites, source.tower)
    collector = SiteCollector(model, sites, position, source.tower)
    header = _header(model, source, dtype_str, position, batch_size)
    _check_same_request(ranks, {"model": header["model"]["fingerprint"], "dataset": header["dataset"],
                                "sites": sites, "dtype": dtype_str, "position": position, "shard_size": shard_size,
                                "cache_dir": str(cache_dir)})  # as given: machines may mount it differently
    root = Path(cache_dir)

    setup: dict = {}
    own: Optional[BaseException] = None
    if ranks.is_main:  # rank 0 prepares the store; the others wait for its manifest (or its error)
        try:
            check_writable_dir(root, "activation cache folder")
            if overwrite:
                clear_cache_dir(root)
            remove_leftovers(root)
            setup = {"manifest": _resume_or_start(root, collector, source, header, shard_size)}
        except Exception as e:  # noqa: BLE001 (sent to the other ranks, then raised here)
            own = e
            setup = {"error": _failure(e)}
    setup = ranks.broadcast(setup)
    if "error" in setup:
        _raise_for([(0, setup["error"])], own, root)
    manifest = setup["manifest"]

    mine = rank_shards(missing_shards(manifest), ranks.rank, ranks.world_size)
    records: list[dict] = []

    def record(entry: dict) -> None:  # after each shard: this rank's progress, atomically
        records.append(entry)
        write_rank_progress(root, ranks.rank, manifest, records)

    own_error: Optional[BaseException] = None
    try:
        _extract_missing_shards(root, manifest, collector, source, DTYPES[dtype_str], batch_size,
                                progress and ranks.is_main, only=mine, on_shard=record)
    except Exception as e:  # noqa: BLE001 (reported to every rank below, then raised)
        own_error = e
    outcomes = ranks.gather(None if own_error is None else _failure(own_error))
    failures = [(r, f) for r, f in enumerate(outcomes) if f is not None]

    if ranks.is_main:  # every rank's progress file is written: merge them into the manifest
        if merge_rank_progress(root, manifest):  # (a finished store read again is left untouched)
            manifest["updated"] = _now()
            write_json_atomic(root / MANIFEST, manifest)
        remove_rank_progress(root)
    ranks.barrier()  # the manifest is complete before any rank opens the store
    _raise_for(failures, own_error, root)
    return ActivationStore.open(root)


def _check_same_request(ranks: Ranks, request: dict) -> None:
    """Raise on every rank unless all ranks ask for the same extraction as rank 0 (names the first that differs)."""
    requests = ranks.gather(request)
    for rank, other in enumerate(requests[1:], start=1):
        for key, value in requests[0].items():
            if other[key] != value:
                raise ValueError(f"rank {rank} asks for a different {key} than rank 0 ({other[key]!r} vs {value!r}); "
                                 "every rank must run the same command (same model, data, --n, sites, dtype, "
                                 "position, shard size and cache folder)")
