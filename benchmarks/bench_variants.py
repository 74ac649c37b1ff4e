"""K last-block variants from one cached pass (`CLSTail`) vs K full forward passes, on SynthSocial test_balanced.

The K variants are prototype replacements / zero ablations / damping of last-layer heads and MLP neurons at
the pooled token (all `cached_edit`s). Images are rendered and preprocessed once, up front, so both sides time
the model only. Cached = one capture pass (which also yields the baseline) + K tail re-runs; forward = one
clean pass + K passes under `intervene`. Prints the best of `--repeats` interleaved runs of each side, the
ratio, and the largest difference between the two sides' embeddings (fp32 tolerance: 1e-5 × scale).
`--end-to-end` also times `evaluate_variants(use_cache=True)` against `use_cache=False` (metrics included).

    python benchmarks/bench_variants.py [--k 8] [--repeats 3] [--threads N] [--end-to-end]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case  # noqa: E402


def variants(model, k: int):
    import torch

    from workbench.primitives import ablate_heads, ablate_neurons

    cfg = model.visual.cfg
    L, g = cfg.n_layers - 1, torch.Generator().manual_seed(0)
    out = {}
    for i in range(k):
        h = i % cfg.n_heads
        kind = i % 4
        if kind == 0:
            iv = ablate_heads([(L, h)], op="zero")
        elif kind == 1:
            value = torch.randn(cfg.d_model, generator=g)
            iv = ablate_heads([(L, h), (L, (h + 1) % cfg.n_heads)], op="replace", value=value)
        elif kind == 2:
            iv = ablate_neurons([(L, h, list(range(0, cfg.d_model, 7)))], op="scale", factor=0.1)
        else:
            iv = ablate_neurons([(L, None, list(range(i, cfg.d_mlp, 11)))], op="scale", factor=0.1)
        out[f"v{i}"] = iv
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--end-to-end", action="store_true")
    p.add_argument("--n", type=int, default=None, help="images of test_balanced (default: the whole split, 2,048)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from workbench.data import SynthSocial
    from workbench.evaluation import evaluate_variants
    from workbench.models import load_clip
    from workbench.models.cls_tail import CLSTail
    from workbench.primitives import edits_to_hooks, intervene

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_clip("synthsocial", device=args.device)
    dataset = SynthSocial("test_balanced", n=args.n)
    images, labels = dataset.tensors()
    x = model.preprocess(images).to(args.device)
    batches = [x[i:i + args.batch] for i in range(0, len(x), args.batch)]
    plan = variants(model, args.k)
    print(f"{len(x)} images, K={args.k} variants, {torch.get_num_threads()} torch threads")

    tail_times = []

    def cached():
        tail = CLSTail.capture(model, batches)
        t0 = time.perf_counter()
        out = [tail.image_embed] + [tail.encode(edits_to_hooks(model, iv.edits)) for iv in plan.values()]
        tail_times.append((time.perf_counter() - t0) / len(plan))
        return out

    def forward():
        out = [torch.cat([model.encode_image(b) for b in batches])]
        for iv in plan.values():
            with intervene(model, iv):
                out.append(torch.cat([model.encode_image(b) for b in batches]))
        return out

    times = {"cached": [], "forward": []}
    results = {}
    with torch.inference_mode():
        cached(), forward()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("cached", cached), ("forward", forward)):
                t0 = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - t0)
    err = max(float((a - b).abs().max() / max(1.0, float(b.abs().max())))
              for a, b in zip(results["cached"], results["forward"]))
    best = {k: min(v) for k, v in times.items()}
    print(f"cached : {best['cached']:.3f} s  (1 capture pass + {args.k} tail re-runs)  runs {times['cached']}")
    print(f"forward: {best['forward']:.3f} s  ({args.k + 1} full passes)                runs {times['forward']}")
    print(f"one tail re-run (compile the edits + {len(x)} images): {1000 * min(tail_times):.1f} ms; one full pass "
          f"≈ {1000 * best['forward'] / (args.k + 1):.0f} ms")
    print(f"ratio forward / cached: {best['forward'] / best['cached']:.1f}x;  max |Δ| / scale = {err:.2e}")
    result = {"cached_s": best["cached"], "forward_s": best["forward"], "ratio": best["forward"] / best["cached"],
              "k": args.k, "n_images": len(x), "tail_ms": 1000 * min(tail_times), "max_rel_diff": err,
              "runs": times}

    if args.end_to_end:
        e2e = {}
        for use_cache in (True, False):
            t0 = time.perf_counter()
            evaluate_variants(model, (images, labels), plan, use_cache=use_cache, progress=False)
            e2e[use_cache] = time.perf_counter() - t0
        print(f"evaluate_variants end to end (metrics, text, bootstrap included): cache {e2e[True]:.1f} s, "
              f"forward {e2e[False]:.1f} s, ratio {e2e[False] / e2e[True]:.2f}x")
    return result


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    """The suite's case (the embedded model in float32; best of interleaved repeats: the capture is part of
    the cached side, so a one-sided noise floor is the fair summary)."""
    r = main(["--repeats", "1" if quick else "3", "--device", device] + (["--n", "256"] if quick else []))
    return [case(f"{r['k']} last-block variants: one cached pass + tail re-runs vs {r['k'] + 1} full passes "
                 f"({r['n_images']} images)", figure=r["cached_s"], baseline=r["forward_s"], unit="s",
                 baseline_name=f"{r['k'] + 1} full forward passes", ratio=r["ratio"],
                 ratio_means="baseline / figure (speed-up)", goal=f"close to {r['k'] + 1}× (report)", met=None,
                 device=device, dtype="float32", **{k: v for k, v in r.items() if k != "ratio"})]


if __name__ == "__main__":
    main()
