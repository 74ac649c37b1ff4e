"""Hooked vs native open_clip `encode_image` on ViT-B-32 (random weights), batch 16.

Cases: HookedCLIP with no hooks (goal ≤ 1.05× native) and caching every `hook_cls_result` (goal ≤ 1.1×); the
baseline is native open_clip `encode_image` on the same inputs, runs interleaved (native, hooked, hooked+cache, …)
so background load affects all alike; medians.

    python -m benchmarks --only hooked_vs_native        (or: python benchmarks/bench_hooked_vs_native.py)
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, interleaved, median, random_clip  # noqa: E402

ARCH, BATCH = "ViT-B-32", 16


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    import torch

    batch, repeats = (4, 3) if quick else (BATCH, 15)
    native, hooked = random_clip(ARCH, device, dtype)
    x = torch.randn(batch, 3, *hooked.visual.cfg.image_size, generator=torch.Generator().manual_seed(0)).to(
        device=device, dtype=getattr(torch, dtype))
    names = [f"blocks.{l}.attn.hook_cls_result" for l in range(hooked.visual.cfg.n_layers)]
    with torch.inference_mode():
        times = interleaved({
            "native": lambda: native.encode_image(x),
            "hooked": lambda: hooked.encode_image(x),
            "cache": lambda: hooked.run_with_cache(x, names_filter=names),
        }, repeats, device)
        diff = float((hooked.encode_image(x).float() - native.encode_image(x).float()).abs().max())
    base = median(times["native"])
    common = dict(unit="ms", baseline_name="native open_clip encode_image", ratio_means="figure / baseline",
                  device=device, dtype=dtype, model=f"{ARCH} random weights", batch=batch, repeats=repeats,
                  native_ms=[1e3 * t for t in times["native"]], threads=torch.get_num_threads())
    out = []
    for key, label, goal in (("hooked", "hooked encode_image, no hooks", 1.05),
                             ("cache", "hooked, caching every hook_cls_result", 1.1)):
        ratio = median(times[key]) / base
        out.append(case(f"{label} ({ARCH}, batch {batch})", figure=1e3 * median(times[key]), baseline=1e3 * base,
                        ratio=ratio, goal=f"≤ {goal}×", met=ratio <= goal, runs_ms=[1e3 * t for t in times[key]],
                        max_abs_diff_vs_native=diff, **common))
    return out


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(row)
