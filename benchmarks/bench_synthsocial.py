"""Rendering throughput of SynthSocial on one CPU thread.

Prints images/s for
  1. the batch path, ``ds.batches(batch_size)`` (what training uses; target >= 2,000 images/s at 64 px),
  2. a DataLoader over ``ds[i]`` read in order (the dataset renders sequential reads in runs),
  3. a DataLoader over ``ds[i]`` shuffled (each item rendered alone),
and, as the same-run baseline, ``torch.rand`` of the same batch shape (the cost of merely producing
that many floats on this machine): each path is reported as a ratio to it too.

    python benchmarks/bench_synthsocial.py [--n 4096] [--batch-size 256] [--image-size 64]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Subset

from workbench.data import SynthSocial


def _rate(n_images: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--target", type=float, default=2000.0, help="required images/s of the batch path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds = SynthSocial("train", n=args.n, image_size=args.image_size)
    next(ds.batches(8))  # warm-up: builds the noise bank, touches the code paths
    shape = (args.batch_size, 3, args.image_size, args.image_size)

    def consume(batches) -> None:
        for _ in batches:
            pass

    baseline = _rate(args.n, lambda: [torch.rand(shape) for _ in range(0, args.n, args.batch_size)])
    n_random = min(args.n, 1024)  # each shuffled read renders one image: keep the run short
    rates = {
        "batch path  ds.batches()": _rate(args.n, lambda: consume(ds.batches(args.batch_size))),
        "DataLoader  ds[i], in order": _rate(args.n, lambda: consume(DataLoader(ds, batch_size=args.batch_size))),
        "DataLoader  ds[i], shuffled": _rate(n_random, lambda: consume(
            DataLoader(Subset(ds, torch.randperm(args.n)[:n_random].tolist()), batch_size=args.batch_size))),
    }
    print(f"SynthSocial {args.image_size}x{args.image_size}, {args.n} images, batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'baseline    torch.rand':30s} {baseline:12,.0f} images/s")
    for name, rate in rates.items():
        print(f"{name:30s} {rate:12,.0f} images/s   ({rate / baseline:.4f} x baseline)")
    batch_rate = rates["batch path  ds.batches()"]
    verdict = "OK" if batch_rate >= args.target else "BELOW TARGET"
    print(f"batch path vs target {args.target:,.0f} images/s: {batch_rate / args.target:.2f}x  {verdict}")


if __name__ == "__main__":
    main()
