"""Hooked vs native open_clip `encode_image` on ViT-B-32 (random weights), batch 16.

Prints, from one run, the median wall time of native open_clip, HookedCLIP with no hooks, and HookedCLIP
caching every `hook_cls_result`, and the ratios against native. Goal: ≤ 1.05× with no hooks.
Runs are interleaved (native, hooked, hooked+cache, native, …) so background load affects all alike.

    python benchmarks/bench_hooked_vs_native.py [--model ViT-B-32] [--batch 16] [--repeats 15] [--threads N]
"""
import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import open_clip
    import torch

    from workbench.models import HookedCLIP

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = open_clip.create_model(args.model, pretrained=None).eval().to(args.device)
    hooked = HookedCLIP.from_open_clip(native).eval().to(args.device)
    size = hooked.visual.cfg.image_size
    x = torch.randn(args.batch, 3, *size, device=args.device)
    names = [f"blocks.{l}.attn.hook_cls_result" for l in range(hooked.visual.cfg.n_layers)]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = {
        "native open_clip": lambda: native.encode_image(x),
        "hooked, no hooks": lambda: hooked.encode_image(x),
        "hooked, cache hook_cls_result": lambda: hooked.run_with_cache(x, names_filter=names),
    }
    times = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn(), fn()
        for _ in range(args.repeats):
            for k, fn in runs.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[k].append(time.perf_counter() - t0)
        diff = (hooked.encode_image(x) - native.encode_image(x)).abs().max().item()

    base = statistics.median(times["native open_clip"])
    print(f"{args.model}, batch {args.batch}, {args.device}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} interleaved repeats (median)")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:32s} {med * 1e3:8.1f} ms   ratio vs native {med / base:5.3f}")
    print(f"  max |hooked − native| = {diff:.2e}")


if __name__ == "__main__":
    main()
