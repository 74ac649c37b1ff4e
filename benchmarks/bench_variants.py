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
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--end-to-end", action="store_true")
    args = p.parse_args()

    import torch

    from workbench.data import SynthSocial
    from workbench.evaluation import evaluate_variants
    from workbench.models import load_clip
    from workbench.models.cls_tail import CLSTail
    from workbench.primitives import edits_to_hooks, intervene

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_clip("synthsocial")
    dataset = SynthSocial("test_balanced")
    images, labels = dataset.tensors()
    x = model.preprocess(images)
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

    if args.end_to_end:
        e2e = {}
        for use_cache in (True, False):
            t0 = time.perf_counter()
            evaluate_variants(model, (images, labels), plan, use_cache=use_cache, progress=False)
            e2e[use_cache] = time.perf_counter() - t0
        print(f"evaluate_variants end to end (metrics, text, bootstrap included): cache {e2e[True]:.1f} s, "
              f"forward {e2e[False]:.1f} s, ratio {e2e[False] / e2e[True]:.2f}x")


if __name__ == "__main__":
    main()
