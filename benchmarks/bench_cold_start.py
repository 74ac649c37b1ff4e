"""Cold start: a new Python process to a loaded embedded model (`from workbench import load_clip;
load_clip("synthsocial")`), split into the time spent importing torch, open_clip (with timm, which it imports)
and transformer_lens (with transformers), and the workbench's own time (`from workbench import load_clip` once
those are imported, plus `load_clip` itself), timed phase by phase inside the new process.

The baseline is a process importing the three libraries and nothing else (`import torch, open_clip,
transformer_lens`): the part of a cold start the workbench cannot remove. Also reported: `import workbench` alone
(nothing heavy: submodules load on first use; checked with `python -X importtime`, whose per-module self times
are attributed to the outermost heavy package that imported them). Medians of interleaved runs.

    python -m benchmarks --only cold_start
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, median  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "transformer_lens")
# imported by the heavy ones (and charged to them when they import it first)
BUNDLED = {"timm": "open_clip", "transformers": "transformer_lens"}
# phases timed inside the new process: the three libraries first, then what the workbench adds
LOAD = ("import time; t = [time.perf_counter()]; import torch; t.append(time.perf_counter()); import open_clip; "
        "t.append(time.perf_counter()); import transformer_lens; t.append(time.perf_counter()); "
        "from workbench import load_clip; t.append(time.perf_counter()); load_clip('synthsocial', device={device!r}); "
        "t.append(time.perf_counter()); print('PHASES', *[b - a for a, b in zip(t, t[1:])], t[-1] - t[0])")
PHASES = ("torch", "open_clip", "transformer_lens", "workbench_import", "load_clip")
LIBS = "import torch, open_clip, transformer_lens"


def _python(code: str, importtime: bool = False) -> tuple[float, str, str]:
    cmd = [sys.executable] + (["-X", "importtime"] if importtime else []) + ["-c", code]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{code!r} failed:\n{out.stderr[-2000:]}")
    return wall, out.stdout, out.stderr


def split_importtime(stderr: str) -> dict[str, float]:
    """Seconds of import per bucket (torch, open_clip, transformer_lens, other, workbench) from -X importtime:
    a module's self time goes to the outermost heavy package on its import chain, else to the workbench if it
    is a workbench module, else to "other"."""
    buckets = {k: 0.0 for k in (*HEAVY, "other", "workbench")}
    lines = []  # (depth, root package, self µs), in the order printed: a module after the modules it imported
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line.split(":", 1)[1].split("|")
        root = name.strip().split(".")[0]
        lines.append(((len(name) - len(name.lstrip(" ")) - 1) // 2, BUNDLED.get(root, root), int(self_us)))
    chain: list[tuple[int, str]] = []  # reversed, each line comes after its importer: the chain is its ancestors
    for depth, root, self_us in reversed(lines):
        while chain and chain[-1][0] >= depth:
            chain.pop()
        chain.append((depth, root))
        owner = next((r for _, r in chain if r in HEAVY), None)  # the outermost heavy package
        buckets[owner or ("workbench" if root == "workbench" else "other")] += self_us / 1e6
    return buckets


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    repeats = 1 if quick else 3
    load = LOAD.format(device=device)
    walls: dict[str, list[float]] = {"load": [], "libs": [], "bare": []}
    phases: dict[str, list[float]] = {k: [] for k in (*PHASES, "startup")}
    for _ in range(repeats):  # interleaved
        wall, out, _ = _python(load)
        values = [float(v) for v in out.split("PHASES")[1].split()]
        for name, v in zip(PHASES, values):
            phases[name].append(v)
        phases["startup"].append(wall - values[-1])  # interpreter start and exit, outside the timed phases
        walls["load"].append(wall)
        walls["libs"].append(_python(LIBS)[0])
        walls["bare"].append(_python("import workbench")[0])
    split = {k: median(v) for k, v in phases.items()}
    own = split["workbench_import"] + split["load_clip"]
    total, libs = median(walls["load"]), median(walls["libs"])
    _, _, bare_err = _python("import workbench", importtime=True)
    bare = split_importtime(bare_err)
    bare_heavy = sorted(m for m in HEAVY if bare[m] > 0)
    _, _, load_err = _python(load, importtime=True)  # which modules the cold start imports, by package
    common = dict(device=device, dtype="float32 (the shipped weights)", repeats=repeats)
    return [
        case("cold start: new process → loaded embedded model", figure=total, baseline=libs, unit="s",
             baseline_name="a process importing torch + open_clip + transformer_lens only",
             ratio=total / libs, ratio_means="figure / baseline", goal="report", met=None,
             phases_s=split, importtime_self_s=split_importtime(load_err), load_runs_s=walls["load"],
             libs_runs_s=walls["libs"], **common),
        case("workbench's own time in the cold start (its imports + load_clip)", figure=own, baseline=total, unit="s",
             baseline_name="the whole cold start", ratio=own / total, ratio_means="figure / baseline (share)",
             goal="≤ 0.1 of the cold start", met=own / total <= 0.1, torch_s=split["torch"],
             open_clip_s=split["open_clip"], transformer_lens_s=split["transformer_lens"],
             workbench_import_s=split["workbench_import"], load_clip_s=split["load_clip"],
             startup_s=split["startup"], **common),
        case("import workbench (nothing heavy until used)", figure=median(walls["bare"]), baseline=libs, unit="s",
             baseline_name="import torch + open_clip + transformer_lens", ratio=median(walls["bare"]) / libs,
             ratio_means="figure / baseline", goal="imports none of torch/open_clip/transformer_lens",
             met=not bare_heavy, heavy_imported=bare_heavy, runs_s=walls["bare"], **common),
    ]


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
