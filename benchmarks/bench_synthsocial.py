"""Rendering throughput of SynthSocial on one CPU thread (the generator runs on the CPU whatever --device says).

Figure: images/s of the batch path `ds.batches(batch_size)` (what training uses; goal ≥ 2,000 images/s at 64 px);
baseline: `torch.rand` of the same batch shape (the cost of merely producing that many floats on this machine).
The DataLoader paths (`ds[i]` in order, and shuffled) are in the details.

    python -m benchmarks --only synthsocial
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, median  # noqa: E402

TARGET = 2000.0


def _rate(n_images: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - start)


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    import torch
    from torch.utils.data import DataLoader, Subset

    from workbench.data import SynthSocial

    n, batch, size, repeats = (1024, 256, 64, 1) if quick else (4096, 256, 64, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = SynthSocial("train", n=n, image_size=size)
        next(ds.batches(8))  # warm-up: builds the noise bank
        shape = (batch, 3, size, size)

        def consume(batches) -> None:
            for _ in batches:
                pass

        rates = {"batch": [], "rand": []}
        for _ in range(repeats):  # interleaved
            rates["rand"].append(_rate(n, lambda: [torch.rand(shape) for _ in range(0, n, batch)]))
            rates["batch"].append(_rate(n, lambda: consume(ds.batches(batch))))
        n_random = min(n, 512)
        loader = {
            "dataloader_in_order": _rate(n, lambda: consume(DataLoader(ds, batch_size=batch))),
            "dataloader_shuffled": _rate(n_random, lambda: consume(DataLoader(
                Subset(ds, torch.randperm(n)[:n_random].tolist()), batch_size=batch))),
        }
    finally:
        torch.set_num_threads(threads)
    r, b = median(rates["batch"]), median(rates["rand"])
    return [case(f"SynthSocial batch path, {size} px, one thread", figure=r, baseline=b, unit="images/s",
                 baseline_name="torch.rand of the same batches", ratio=r / b, ratio_means="figure / baseline",
                 goal=f"≥ {TARGET:,.0f} images/s", met=r >= TARGET, device="cpu", dtype="float32",
                 n=n, batch=batch, runs=rates, images_per_s=loader)]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
