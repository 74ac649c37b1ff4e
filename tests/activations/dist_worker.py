"""One rank of a distributed extraction in the tests (started by torch.multiprocessing.spawn, gloo on CPU).

The shipped model over the first N images of SynthSocial train. A rank can be made to die (os._exit, as a
killed process) or to raise at one dataset item, by patching SynthSocial.__getitem__ in that rank only (the
dataset's identity, class and content hash stay those of the plain dataset).
"""
import os
import socket
import traceback
from pathlib import Path

import torch

SITES = ["head_contributions", "blocks.5.hook_resid_post"]
N, BATCH, SHARD = 192, 16, 32  # 6 shards: rank 0 of 2 takes shards 0, 2, 4; rank 1 takes 1, 3, 5
# an item of shard 3 (rank 1's second shard) outside the 8 items hashed for the dataset's identity
FAIL_AT = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dataset(n=N):
    from workbench.data import SynthSocial

    return SynthSocial("train", n=n)


def extract_once(cache_dir, n=N, **kwargs):
    """The extraction every rank runs (and the single-process reference, in the test process)."""
    from workbench.activations import extract_distributed
    from workbench.models import load_clip

    kwargs = {"batch_size": BATCH, "shard_size": SHARD, "progress": False, **kwargs}
    return extract_distributed(load_clip("synthsocial"), dataset(n), SITES, cache_dir, **kwargs)


def rank_main(rank: int, world: int, port: int, cache_dir: str, fail_rank=None, how="exit", n_of_rank=None):
    """Entry point of spawn: set torchrun's variables, run the extraction; with fail_rank, that rank dies
    ("exit") or raises ("raise") at item FAIL_AT. Errors go to cache_dir/../error_rank{r}.txt."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if rank == fail_rank:
        from workbench.data import SynthSocial

        original = SynthSocial.__getitem__

        def failing(self, i):
            if i == FAIL_AT:
                if how == "exit":
                    os._exit(3)
                raise RuntimeError(f"simulated bad item {i}")
            return original(self, i)

        SynthSocial.__getitem__ = failing
    import torch.distributed as dist

    try:
        extract_once(cache_dir, n=(n_of_rank or {}).get(rank, N))
    except Exception as e:  # noqa: BLE001 (the test reads the message)
        Path(cache_dir).parent.joinpath(f"error_rank{rank}.txt").write_text(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
