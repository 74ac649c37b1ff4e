"""Peak memory of activation extraction to disk must not grow with the dataset.

Runs `workbench.activations.extract(..., cache_dir=...)` in a fresh subprocess for N and 10·N random
images and prints each child's peak RSS during `extract` (on Linux the peak is reset just before it,
/proc/self/clear_refs, so a transient of the imports or the model build cannot hide extraction's own peak;
elsewhere `ru_maxrss`), the ratio between the two (target ≤ 1.2), and throughput. Imports of
torch/open_clip/transformer_lens already take most of the RSS (~1 GB here), so the growth during `extract`
(peak minus the RSS before it) is printed too: it is the part that would scale with the dataset. The sites
keep every token of every layer's residual stream (~130 KB per image), so an extraction that held its results
in memory would grow by ~0.6 GB at 10·N; `--contrast` also runs the in-memory mode (cache_dir=None) to show that growth.

    python benchmarks/bench_extract_memory.py            # N = 500, about a minute on 2 cores
    python benchmarks/bench_extract_memory.py --quick    # smoke test, N = 64
    python benchmarks/bench_extract_memory.py --contrast # also the in-memory mode

Exit status 1 when the disk ratio exceeds the target.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case  # noqa: E402

TARGET_RATIO = 1.2
# A small random-weight CLIP with long token sequences: 64×64 images, patch 8 → 65 tokens, width 128.
BENCH_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SITES = ["head_contributions"] + [f"blocks.{l}.hook_resid_post" for l in range(BENCH_CONFIG["vision_cfg"]["layers"])]


def peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS; False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_since_reset_mib() -> float:
    return _status_mib("VmHWM")


class RandomImages:
    """n random images made on the fly from their index (the dataset itself takes no memory)."""

    label_names = {"gender": ("female", "male")}

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g), {"gender": i % 2}


def child(args) -> None:
    """Build the model, extract, print one JSON line with the measurements."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    import open_clip

    from workbench.activations import extract
    from workbench.models import HookedCLIP

    with tempfile.TemporaryDirectory() as configs:
        (Path(configs) / "wb-bench.json").write_text(json.dumps(BENCH_CONFIG))
        open_clip.add_model_config(configs)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            oc = open_clip.create_model("wb-bench", pretrained=None).eval()
    model = HookedCLIP.from_open_clip(oc, name="wb-bench").eval()
    del oc
    dataset = RandomImages(args.n_images, BENCH_CONFIG["vision_cfg"]["image_size"])
    # Reset the peak (Linux: /proc/self/clear_refs "5"), so a transient of the imports or the model build, above
    # what extraction needs, cannot hide extraction's own peak; elsewhere the lifetime peak is all there is.
    reset = reset_peak_rss()
    rss_before = current_rss_mib() if reset else peak_rss_mib()
    start = time.perf_counter()
    store = extract(model, dataset, SITES, batch_size=args.batch_size, position="all", progress=False,
                    cache_dir=args.cache_dir, shard_size=args.shard_size if args.cache_dir else None)
    seconds = time.perf_counter() - start
    assert len(store) == args.n_images
    cache_mib = sum(p.stat().st_size for p in Path(args.cache_dir).iterdir()) / 2**20 if args.cache_dir else 0.0
    print(json.dumps({"n": args.n_images, "peak_rss_mib": peak_since_reset_mib() if reset else peak_rss_mib(),
                      "rss_before_mib": rss_before, "peak_reset": reset,
                      "seconds": seconds, "images_per_s": args.n_images / seconds, "cache_mib": cache_mib,
                      "threads": torch.get_num_threads()}))


def run_child(n_images: int, args, to_disk: bool) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, __file__, "--child", "--n-images", str(n_images), "--batch-size", str(args.batch_size),
               "--shard-size", str(args.shard_size), "--threads", str(args.threads)]
        if to_disk:
            cmd += ["--cache-dir", cache]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"child for {n_images} images failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def report(title: str, rows: list[dict]) -> float:
    print(title)
    header = ("images", "peak RSS MiB", "growth MiB", "time s", "images/s", "cache MiB")
    print("  " + "  ".join(f"{h:>{w}}" for h, w in zip(header, (7, 12, 10, 7, 8, 9))))
    for r in rows:
        print(f"  {r['n']:>7}  {r['peak_rss_mib']:>12.1f}  {growth(r):>10.1f}  {r['seconds']:>7.1f}  "
              f"{r['images_per_s']:>8.0f}  {r['cache_mib']:>9.1f}")
    ratio = rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"  peak RSS ratio ({rows[1]['n']} / {rows[0]['n']} images): {ratio:.3f}; "
          f"growth during extract: {growth(rows[0]):.1f} → {growth(rows[1]):.1f} MiB")
    return ratio


def growth(row: dict) -> float:
    """Peak RSS minus the peak before extract() (imports + model): what the extraction itself added."""
    return row["peak_rss_mib"] - row["rss_before_mib"]


def main(argv=None) -> None:
    ratio, _ = measure(argv)
    sys.exit(0 if ratio <= TARGET_RATIO else 1)


def measure(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="N: the small run's image count (the large one is 10·N)")
    parser.add_argument("--quick", action="store_true", help="smoke test: N = 64, shard size 32")
    parser.add_argument("--contrast", action="store_true", help="also run the in-memory mode (cache_dir=None)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=256, help="items per shard (the memory bound)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the child (0: torch's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        sys.exit(0)
    if args.quick:
        args.n, args.shard_size = 64, 32

    sizes = [args.n, 10 * args.n]
    vc = BENCH_CONFIG["vision_cfg"]
    print(f"model: random CLIP, {vc['layers']} layers, width {vc['width']}, {vc['image_size']}px / patch "
          f"{vc['patch_size']}; sites: {SITES}, position='all'; batch {args.batch_size}, shard {args.shard_size}")
    disk = [run_child(n, args, to_disk=True) for n in sizes]
    ratio = report(f"extract to disk (threads={disk[0]['threads']}):", disk)
    print(f"  target ≤ {TARGET_RATIO}: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    if args.contrast:
        report("in memory, cache_dir=None (for contrast; grows with the dataset by design):",
               [run_child(n, args, to_disk=False) for n in sizes])
    return ratio, disk


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    """The suite's case: peak RSS of extraction to disk at N and 10·N images (CPU, float32 store)."""
    ratio, rows = measure(["--quick"] if quick else [])
    small, large = rows
    return [case(f"extraction to disk: peak memory at {large['n']:,} vs {small['n']:,} images",
                 figure=large["peak_rss_mib"], baseline=small["peak_rss_mib"], unit="MiB",
                 baseline_name=f"the same extraction of {small['n']:,} images", ratio=ratio,
                 ratio_means="figure / baseline", goal=f"≤ {TARGET_RATIO} (flat)", met=ratio <= TARGET_RATIO,
                 device="cpu", dtype="float32", growth_mib=[growth(r) for r in rows], runs=rows)]


if __name__ == "__main__":
    main()
