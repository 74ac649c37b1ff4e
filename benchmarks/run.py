"""Run the benchmark suite and write the table.

    python -m benchmarks                          # every case, CPU fp32; writes benchmarks/README.md + results.json
    python -m benchmarks --quick                  # small sizes (smoke test); writes benchmarks/results-quick.json
    python -m benchmarks --only head_contributions,cold_start
    python -m benchmarks --device cuda --dtype bfloat16

Every `benchmarks/bench_NAME.py` with a `run(device, dtype, quick) -> list[dict]` function is a benchmark
(NAME is what --only takes). Each row holds the figure, its baseline measured in the same run on the same
inputs (medians of interleaved repeats unless the case says otherwise), their ratio, the goal, whether it was
met, and the device and dtype. A benchmark that fails is a row saying why; the others still run.
The machine's load average is recorded before and after: figures on a shared machine move with it.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def discover() -> dict[str, str]:
    """{NAME: module} for every benchmarks/bench_NAME.py (whether it has `run` is checked on import)."""
    return {p.stem.removeprefix("bench_"): f"benchmarks.{p.stem}" for p in sorted(HERE.glob("bench_*.py"))}


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        text = f"{x:,.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    else:
        text = str(x)
    return f"{text} {unit}".strip()


def cell(text) -> str:
    return str(text).replace("|", "\\|")  # a bare | would end the table cell


def markdown(report: dict) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"CPU ({m['cpus']} cores, {m['torch_threads']} torch threads)"
    lines = [
        "# Benchmarks",
        "",
        f"Latest full run of `python -m benchmarks{' --quick' if report['quick'] else ''} --device {report['device']} "
        f"--dtype {report['dtype']}` ({report['finished'][:16].replace('T', ' ')} UTC, {report['seconds']:.0f} s): "
        f"{where}, torch {m['torch']}, Python {m['python']}. Load average (1, 5, 15 min) before "
        f"{report['load_before']}, after {report['load_after']}; the `load` column is the 1-minute load average as "
        f"each benchmark started (on {m['cpus']} cores, a load above {m['cpus']} means processes waited for a core). "
        "Absolute figures move with the load; each ratio compares two sides measured in the same run on the same "
        "inputs, interleaved.",
        "",
        "Each case's `details` in results.json hold the raw repeats and the settings. Re-run: `python -m benchmarks`"
        " (all), `--only NAME` (one module), `--quick` (smoke sizes), `--device cuda --dtype bfloat16`.",
        "",
        "| benchmark | case | figure | baseline | ratio | goal | met | device | dtype | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['benchmark']} | failed: {row['error'].splitlines()[-1][:120]} | | | | | ✗ | "
                         f"{report['device']} | {report['dtype']} | {fmt(row.get('load'))} |")
            continue
        met = {True: "✓", False: "✗", None: "report"}[row["met"]]
        lines.append("| " + " | ".join(cell(c) for c in (
            row["benchmark"], row["case"], fmt(row["figure"], row["unit"]),
            f"{fmt(row['baseline'], row['unit'])} ({row['baseline_name']})",
            f"{fmt(row['ratio'])} ({row['ratio_means']})", row["goal"], met, row["device"], row["dtype"],
            fmt(row.get("load")))) + " |")
    if report.get("note"):
        lines += ["", report["note"]]
    return "\n".join(lines) + "\n"


def run_suite(names, device: str, dtype: str, quick: bool, progress=print) -> dict:
    from benchmarks.common import check_device, torch_dtype

    check_device(device)
    torch_dtype(dtype)
    modules = discover()
    unknown = [n for n in names if n not in modules]
    if unknown:
        import difflib

        hints = [f"{n!r} (did you mean {difflib.get_close_matches(n, modules, n=1)[0]!r}?)"
                 if difflib.get_close_matches(n, modules, n=1) else repr(n) for n in unknown]
        raise ValueError(f"--only: no benchmark {', '.join(hints)}; the benchmarks are {', '.join(modules)}")
    rows = []
    started, t0, load_before = datetime.now(timezone.utc), time.perf_counter(), load_average()
    for name in names or list(modules):
        load = load_average()[:1]  # the 1-minute load average as this benchmark starts
        progress(f"[{name}] running … (load average {load})", flush=True)
        t = time.perf_counter()
        try:
            module = importlib.import_module(modules[name])
            if not callable(getattr(module, "run", None)):
                progress(f"[{name}] skipped: no run(device, dtype, quick) function")
                continue
            result = module.run(device=device, dtype=dtype, quick=quick)
            for row in result:
                rows.append({"benchmark": name, "load": load[0] if load else None, **row})
                met = {True: "met", False: "MISSED", None: "report"}[row["met"]]
                progress(f"[{name}] {row['case']}: {fmt(row['figure'], row['unit'])} vs "
                         f"{fmt(row['baseline'], row['unit'])} → ratio {fmt(row['ratio'])} ({row['ratio_means']}); "
                         f"goal {row['goal']}: {met}", flush=True)
        except Exception:  # noqa: BLE001 (one failing benchmark must not lose the others' figures)
            rows.append({"benchmark": name, "load": load[0] if load else None, "error": traceback.format_exc()})
            progress(f"[{name}] FAILED:\n{traceback.format_exc()}", flush=True)
        progress(f"[{name}] {time.perf_counter() - t:.0f} s", flush=True)
    return {"device": device, "dtype": dtype, "quick": quick, "only": list(names), "started": started.isoformat(),
            "finished": datetime.now(timezone.utc).isoformat(), "seconds": time.perf_counter() - t0,
            "load_before": load_before, "load_after": load_average(), "machine": machine(device), "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (cases that cannot use it "
                        "say which dtype they ran in)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (bench_NAME.py), e.g. "
                        "head_contributions,cold_start")
    parser.add_argument("--out", default=str(HERE),
                        help="folder for README.md and results*.json (default: benchmarks/)")
    parser.add_argument("--note", default="", help="a line added under the table")
    parser.add_argument("--update", action="store_true", help="with --only: replace those benchmarks' rows in the "
                        "latest full results (results.json, README.md), keeping the others and their load figures")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(discover()))
        return 0
    names = [n.strip().removeprefix("bench_").removesuffix(".py") for n in args.only.split(",") if n.strip()]
    sys.path.insert(0, str(ROOT))
    from workbench.files import check_writable_dir, write_json_atomic, write_text_atomic

    out = check_writable_dir(Path(args.out), "benchmark output folder")
    try:
        report = run_suite(names, args.device, args.dtype, args.quick)
    except ValueError as e:
        print(f"python -m benchmarks: error: {e}", file=sys.stderr)
        return 2
    report["note"] = args.note
    if args.update and names and not args.quick and (out / "results.json").is_file():
        import json

        latest = json.loads((out / "results.json").read_text(encoding="utf-8"))
        if (latest["device"], latest["dtype"]) == (args.device, args.dtype):
            rerun = set(names)
            latest["rows"] = [r for r in latest["rows"] if r["benchmark"] not in rerun] + report["rows"]
            latest["rows"].sort(key=lambda r: r["benchmark"])
            latest.setdefault("updates", []).append({k: report[k] for k in ("only", "finished", "load_before",
                                                                             "load_after")})
            latest["note"] = "\n\n".join(x for x in (latest.get("note"), args.note) if x)
            report, names = latest, []
    full = not names and not args.quick
    stem = "results" if full else ("results-quick" if args.quick else "results-partial")
    if args.device != "cpu" and full:
        stem = f"results-{args.device.replace(':', '')}-{args.dtype}"
    write_json_atomic(out / f"{stem}.json", report)
    table = markdown(report)
    if full and args.device == "cpu" and args.dtype == "float32":
        write_text_atomic(out / "README.md", table)
    elif full:
        write_text_atomic(out / f"README-{args.device.replace(':', '')}-{args.dtype}.md", table)
    print(table)
    print(f"wrote {out / (stem + '.json')}" + (" and README.md" if full else ""))
    return 1 if any("error" in r for r in report["rows"]) else 0
