"""SAE training throughput: `train_sae` fed from the on-disk activation store vs sae_lens's own
`SAETrainer.fit` fed from an in-memory tensor of the same activations (same SAE, optimiser and batch size).

The store holds `blocks.5.hook_resid_post` (every token) of N SynthSocial images of the embedded model, on disk
in several shards; `train_sae` streams it shard by shard (`ActivationBatches`). The baseline hands
`SAETrainer.fit` an iterator over slices of one preloaded, pre-shuffled tensor: no data cost at all. Steps/s is
timed from step WARMUP to the last step (first shard read and checksum, allocator warm-up excluded), repeats
interleaved; the ratio of the medians is the figure (target ≥ 0.9). One torch thread.

    python benchmarks/bench_sae_train.py             # N = 2000 images (34,000 rows), 5 × 2 runs of 150 steps
    python benchmarks/bench_sae_train.py --quick     # smoke test

Exit status 1 when the ratio is below the target.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case  # noqa: E402

TARGET = 0.9
SITE = "blocks.5.hook_resid_post"
WARMUP = 10


def ours(model, store, args) -> float:
    from workbench.saes import train_sae

    stamps = {}

    def callback(info):
        if info["step"] in (WARMUP, args.steps):
            stamps[info["step"]] = time.perf_counter()

    train_sae(model, store, SITE, args.architecture, position="all", k=args.k, expansion=args.expansion,
              steps=args.steps, batch_size=args.batch_size, lr_warm_up_steps=0, dead_feature_window=50,
              progress=False, callback=callback)
    return (args.steps - WARMUP) / (stamps[args.steps] - stamps[WARMUP])


def baseline(rows: torch.Tensor, args) -> float:
    """sae_lens's SAETrainer.fit over in-memory batches; the same SAE config train_sae builds."""
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    from workbench.saes.train import _sae_config, _training_sae

    d_in = rows.shape[1]
    d_sae = args.expansion * d_in
    cfg = _sae_config(args.architecture, d_in, d_sae, args.k, None, (1 / 16, 1 / 8, 1 / 4, 9 / 16), None, {})
    torch.manual_seed(0)
    sae = _training_sae(cfg)
    perm = rows[torch.randperm(rows.shape[0])]
    n_batches = rows.shape[0] // args.batch_size
    stamps = []

    def provider():
        i = 0
        while True:
            stamps.append(time.perf_counter())
            yield perm[(i % n_batches) * args.batch_size:(i % n_batches + 1) * args.batch_size]
            i += 1

    trainer_cfg = SAETrainerConfig(total_training_samples=args.steps * args.batch_size,
                                   train_batch_size_samples=args.batch_size, lr=3e-4, lr_end=3e-4,
                                   dead_feature_window=50, feature_sampling_window=args.steps,
                                   logger=LoggingConfig(log_to_wandb=False))
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provider()).fit()
    # stamps[i] is taken when step i+1's batch is requested, i.e. after i steps; the fit ends after step S
    end = time.perf_counter()
    return (args.steps - WARMUP) / (end - stamps[WARMUP])


def main(argv=None) -> int:
    ratio = measure(argv)["ratio"]
    return 0 if ratio >= TARGET else 1


def measure(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--architecture", default="topk")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.repeats = 300, 30, 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args) -> dict:
    from tqdm import tqdm  # noqa: F401  (sae_lens's fit prints a bar; keep it off the figures)

    from workbench import load_clip
    from workbench.activations import extract
    from workbench.data import SynthSocial

    model = load_clip("synthsocial")
    with tempfile.TemporaryDirectory() as tmp:
        store = extract(model, SynthSocial("train", n=args.n), SITE, position="all", progress=False,
                        cache_dir=tmp, shard_size=max(1, args.n // 4))
        rows = store[SITE].reshape(-1, store.shapes[SITE][-1]).float()
        print(f"store: {len(store)} images × {store.shapes[SITE][0]} tokens = {rows.shape[0]} rows of "
              f"{rows.shape[1]}, {store.n_shards} shards on disk; {args.architecture} ×{args.expansion}, "
              f"k={args.k}, batch {args.batch_size}, {args.steps} steps (timed from step {WARMUP})")
        ours_runs, base_runs = [], []
        for r in range(args.repeats):
            ours_runs.append(ours(model, store, args))
            base_runs.append(baseline(rows, args))
            print(f"repeat {r}: train_sae from store {ours_runs[-1]:.2f} steps/s, "
                  f"SAETrainer.fit from memory {base_runs[-1]:.2f} steps/s", flush=True)
    ratio = statistics.median(ours_runs) / statistics.median(base_runs)
    print(f"median: store {statistics.median(ours_runs):.2f} steps/s, memory {statistics.median(base_runs):.2f} "
          f"steps/s, ratio {ratio:.3f} (target ≥ {TARGET})")
    return {"ours": statistics.median(ours_runs), "baseline": statistics.median(base_runs), "ratio": ratio,
            "ours_runs": ours_runs, "baseline_runs": base_runs, "n_images": args.n, "steps": args.steps,
            "architecture": args.architecture, "expansion": args.expansion, "batch_size": args.batch_size}


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    """The suite's case (CPU, one torch thread, float32: the training loop's own settings)."""
    r = measure(["--quick"] if quick else [])
    return [case(f"SAE training from the store vs sae_lens from memory ({r['architecture']} ×{r['expansion']}, "
                 f"batch {r['batch_size']})", figure=r["ours"], baseline=r["baseline"], unit="steps/s",
                 baseline_name="sae_lens SAETrainer.fit, in-memory tensor", ratio=r["ratio"],
                 ratio_means="figure / baseline", goal=f"≥ {TARGET}×", met=r["ratio"] >= TARGET, device="cpu",
                 dtype="float32", **{k: v for k, v in r.items() if k not in ("ours", "baseline", "ratio")})]


if __name__ == "__main__":
    sys.exit(main())
