"""Cost of the image tower's input check (finite values) against one forward pass, ViT-B-32, batch 16.

Figure: `check_finite` alone; baseline: `encode_image` (which runs the check); interleaved, medians (the check's
time is the best of 5 calls per repeat). Goal: the check costs < 1 % of the forward pass.

    python -m benchmarks --only input_checks
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, median, random_clip, timed  # noqa: E402

ARCH, BATCH = "ViT-B-32", 16


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    import torch

    from workbench.models.preprocess import check_finite

    batch, repeats = (4, 3) if quick else (BATCH, 15)
    native, model = random_clip(ARCH, device, dtype)
    del native
    x = torch.randn(batch, 3, *model.visual.cfg.image_size, generator=torch.Generator().manual_seed(0)).to(
        device=device, dtype=getattr(torch, dtype))
    forward, check = [], []
    with torch.no_grad():
        model.encode_image(x)  # warm-up
        for _ in range(repeats):
            forward.append(timed(lambda: model.encode_image(x), device))
            check.append(min(timed(lambda: check_finite(x), device) for _ in range(5)))
    f, c = median(forward), median(check)
    return [case(f"finite-input check vs encode_image ({ARCH}, batch {batch})", figure=1e3 * c, baseline=1e3 * f,
                 unit="ms", baseline_name="encode_image (includes the check)", ratio=c / f,
                 ratio_means="figure / baseline", goal="< 0.01", met=c / f < 0.01, device=device, dtype=dtype,
                 batch=batch, repeats=repeats, forward_ms=[1e3 * t for t in forward],
                 check_ms=[1e3 * t for t in check], threads=torch.get_num_threads())]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
