"""Load time of the embedded model: `load_clip("synthsocial")` vs building the same open_clip architecture
with random weights (the baseline, same run). Imports are done before timing. Target: load < 2 s.

    python benchmarks/bench_embedded_load.py [--repeats 5]
"""
import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    import open_clip

    from workbench.models import load_clip
    from workbench.models.loading import embedded_config

    embedded_config("synthsocial")
    warnings.filterwarnings("ignore")
    load, build = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        open_clip.create_model("synthsocial", pretrained=None)
        build.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        load_clip("synthsocial")
        load.append(time.perf_counter() - t0)
    b, l = statistics.median(build), statistics.median(load)
    print(f"open_clip.create_model (random init): {b:.3f} s")
    print(f"load_clip('synthsocial'):             {l:.3f} s   ratio {l / b:.2f}×   target < 2 s: {'ok' if l < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
