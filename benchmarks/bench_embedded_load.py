"""Load time of the embedded model: `load_clip("synthsocial")` vs building the same open_clip architecture with
random weights (the baseline, same run, interleaved). Imports are done before timing. Goal: load < 2 s.

    python -m benchmarks --only embedded_load
"""
from __future__ import annotations

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, median  # noqa: E402


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    import open_clip

    from workbench.models import load_clip
    from workbench.models.loading import embedded_config

    repeats = 2 if quick else 5
    embedded_config("synthsocial")  # registers the architecture with open_clip
    load, build = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_clip.create_model("synthsocial", pretrained=None, device=device)  # warm-up (first-call costs:
        load_clip("synthsocial", device=device)                                # the cold start case has those)
        for _ in range(repeats):
            t0 = time.perf_counter()
            open_clip.create_model("synthsocial", pretrained=None, device=device)
            build.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_clip("synthsocial", device=device)
            load.append(time.perf_counter() - t0)
    l, b = median(load), median(build)
    return [case("load_clip('synthsocial') after imports", figure=l, baseline=b, unit="s",
                 baseline_name="open_clip.create_model, random init", ratio=l / b, ratio_means="figure / baseline",
                 goal="< 2 s", met=l < 2, device=device, dtype="float32 (the shipped weights)",
                 load_runs_s=load, build_runs_s=build)]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
