"""What the benchmark modules share: timing with interleaved repeats, result rows, random-weight models.

Every module `benchmarks/bench_NAME.py` exposes `run(device: str, dtype: str, quick: bool) -> list[dict]`, one
dict per case made by `case(...)`: the figure, its baseline measured in the same run on the same inputs, their
ratio, the goal and whether it was met, and the device and dtype it ran on.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Callable, Mapping, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def check_device(device: str) -> str:
    import torch

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine (torch.cuda.is_available() "
                         "is False); run with --device cpu")
    return device


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int, device: str = "cpu",
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, repeats interleaved (a, b, c, a, b, c, …) so that background load
    touches every side alike; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def case(name: str, *, figure: float, baseline: float, unit: str, baseline_name: str, ratio: float, ratio_means: str,
         goal: str, met: Optional[bool], device: str, dtype: str, **details) -> dict:
    """One row of the table. `ratio_means` says how the ratio is formed (e.g. "figure / baseline" or
    "baseline / figure (speed-up)"); `met` is None when the case has no pass/fail goal (a report)."""
    return {"case": name, "figure": figure, "baseline": baseline, "unit": unit, "baseline_name": baseline_name,
            "ratio": ratio, "ratio_means": ratio_means, "goal": goal, "met": met, "device": str(device),
            "dtype": dtype, "details": details}


def random_clip(arch: str, device: str, dtype: str):
    """(native open_clip model, HookedCLIP converted from it) with the same random weights (seed 0), eval mode."""
    import open_clip
    import torch

    from workbench.models import HookedCLIP

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = open_clip.create_model(arch, pretrained=None).eval()
    hooked = HookedCLIP.from_open_clip(native).eval()
    dt = torch_dtype(dtype)
    return native.to(device=device, dtype=dt), hooked.to(device=device, dtype=dt)


def peak_memory_child(code: str, env: Optional[dict] = None) -> dict:
    """Run `code` (which prints one JSON line last) in a fresh Python process; returns that JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root), **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


PEAK_RSS_SNIPPET = '''
import gc, resource, sys
def peak_rss_mib():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
def _status_mib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
def peak_added_mib(fn):
    """Peak RSS added while fn() runs. On Linux the peak is reset first (/proc/self/clear_refs, "5"), so what the
    process allocated before (imports, building the model) does not hide it; elsewhere ru_maxrss before/after."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_mib("VmRSS")
        fn()
        return _status_mib("VmHWM") - before
    except OSError:
        before = peak_rss_mib()
        fn()
        return peak_rss_mib() - before
'''
