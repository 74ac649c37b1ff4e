"""`workbench experts`: find expert heads, build every intervention variant, evaluate them, write a report.

    run_experts("runs/experts")                                   # embedded model, SynthSocial
    run_experts("runs/ff", model_name="ViT-B-32", pretrained="openai", data="fairface:/data/fairface")

Steps (docs/methods.md, "Expert heads"): the reference set → `find_expert_heads` for the attribute (and for
the other protected attribute, for intersectional variants) → `expert_variants` → `evaluate_variants` on a
separate gallery (bootstrap intervals over queries, paired tests against the baseline) → DIR/summary.json,
table.csv, table.md, heads.csv, neurons.csv, figures/*.html, specs/NAME.json. The output folder is checked
before any work.

Data: "synthsocial" (reference: `test_balanced` seed+1, 1,024 images; gallery: `test_balanced` seed, 2,048
images) or "<loader>:DIR" for a local folder (fairface, utkface, sispi, celeba), split in two seeded halves:
reference and gallery (each at most `n_images`). Real galleries with an occupation label (SISPI) use it as the
retrieval target; the others use `prompt_sets("real")` occupation prompts with every image relevant to every
query.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional


from workbench.method_report import (UTILITY_BUDGET, add_model_args, halves, load_real, lowest_within_budget,
                                     model_ref, parse_data, thumbnail, write_figure, write_tables)

__all__ = ["run_experts", "parse_data", "pick_best", "DATA_KINDS"]

DATA_KINDS = ("synthsocial", "fairface", "utkface", "sispi", "celeba")
N_REFERENCE_SYNTH = 1024
SWEEP = (1, 2, 4, 6, 8)  # head counts of the neutral-prototype sweep (capped at the heads of the chosen layers)
GALLERY_TOP = 10  # images per row of the retrieval gallery figure


def _datasets(kind: str, folder: Optional[Path], seed: int, n_images: Optional[int]):
    """(reference, gallery, target or None, queries or None) for a data kind."""
    from workbench.data import SynthSocial

    if kind == "synthsocial":
        reference = SynthSocial("test_balanced", seed=seed + 1, n=n_images or N_REFERENCE_SYNTH)
        gallery = SynthSocial("test_balanced", seed=seed, n=n_images)
        return reference, gallery, "occupation", None
    reference, gallery = halves(load_real(kind, folder), n_images, seed, "the experts command")
    if "occupation" in reference.label_names:
        return reference, gallery, "occupation", None
    return reference, gallery, None, real_prompts()["occupations"]


def real_prompts() -> dict[str, list[str]]:
    """The prompt lists for real data (`prompt_sets("real")`): "occupations" ("a photo of an accountant", ...),
    the retrieval queries of galleries without an occupation label, and "adjectives"; both are also the So-B-IT
    word lists of the normalised-entropy metrics."""
    from workbench.data import prompt_sets

    sets = prompt_sets("real")
    return {"occupations": list(sets.occupations), "adjectives": list(sets.adjectives)}


def pick_best(baseline: dict, variants: dict, attribute: str) -> Optional[str]:
    """The variant with the lowest `{attribute}_ndkl` among those whose mAP drops ≤ 0.02 and zero-shot accuracy
    ≤ 2 points against the baseline (a metric the gallery does not have is not checked); None if none qualifies."""
    return lowest_within_budget(baseline, variants, f"{attribute}_ndkl",
                                {"map": UTILITY_BUDGET, "zero_shot_accuracy": UTILITY_BUDGET})


def _gallery_figure(result, gallery, attribute: str, names: dict, variant: str):
    from workbench.viz import plot_retrieval_gallery

    key = f"{attribute}_ndkl"
    per_query = result.per_query["baseline"].get(key)
    q = int(per_query.argmax()) if per_query is not None and len(per_query) == len(result.queries) else 0
    thumbs, captions = {}, {}
    for name in ("baseline", variant):
        sim = result.embeddings[name] @ result.text[q]
        top = sim.topk(min(GALLERY_TOP, len(sim))).indices.tolist()
        thumbs[name] = [thumbnail(gallery, i) for i in top]
        codes = result.labels[attribute][top].tolist()
        captions[name] = [names.get(c, str(c)) for c in codes]
    return plot_retrieval_gallery(thumbs, captions, result.queries[q],
                                  title=f"top {GALLERY_TOP} for {result.queries[q]!r}: baseline vs {variant}")


def _confirm(model, intervention, name: str, gallery, seed: int, target, groups, key: str, n_boot: int,
             batch_size: int, progress: bool) -> dict:
    """The best variant re-measured on a fresh SynthSocial gallery (test_balanced, seed + 2, same size): picking
    the lowest of ~50 noisy values on one gallery overstates the cut, a new sample does not."""
    from workbench.data import SynthSocial
    from workbench.evaluation import evaluate_variants

    fresh = SynthSocial("test_balanced", seed=seed + 2, n=len(gallery))
    result = evaluate_variants(model, fresh, {name: intervention}, target=target, groups=groups, n_boot=n_boot,
                               seed=seed, word_lists=None, captions=False, batch_size=batch_size, progress=progress)
    compare = result.compare(name, "baseline", key)
    metrics = ("zero_shot_accuracy", "map", key)
    return {"gallery": repr(fresh), "variant": name,
            "baseline": {m: result.value("baseline", m) for m in metrics},
            "best": {m: result.value(name, m) for m in metrics},
            "diff": compare["diff"], "diff_interval": [compare["lo"], compare["hi"]],
            "beyond_noise": compare["beyond_noise"], "chance": result.chance.get(key), **result.cut(name, key)}


def _selection_of(name: str) -> str:
    """Which selection a variant's heads come from, for its spec's provenance ("single_head" for head_L…H…). Every
    other variant name of `expert_variants` starts with its selection's tag: "ap_…" (probe AP: top k, above a
    threshold) or "attribution_…"; expert neurons live in the probe-AP experts; intersectional names hold "_ap_"."""
    if name.startswith("head_"):
        return "single_head"
    if name.startswith("intersectional_"):
        return "probe_ap" if "_ap_" in name else "bias_attribution"
    return "probe_ap" if name.startswith(("ap_", "neurons_")) else "bias_attribution"


def run_experts(out_dir, *, model=None, model_name: str = "synthsocial", pretrained: Optional[str] = None,
                checkpoint: Optional[str] = None, device: str = "cpu", data: str = "synthsocial",
                attribute: str = "gender", layers="last", select=None, n_images: Optional[int] = None,
                sweep=SWEEP, seed: int = 0, n_boot: int = 1000, batch_size: int = 128, progress: bool = True) -> dict:
    """Run the expert-heads method end to end and write the report into `out_dir` (see the module docstring).

    model: an already loaded HookedCLIP (otherwise `load_clip(model_name, pretrained, checkpoint, device)`).
    layers: "last", "all" or a list of layer indices; select: `top_k(k)`, `ap_above(t)` or "bias_attribution".
    n_images: cap on the reference and gallery sizes (default: SynthSocial 1,024 / 2,048; real data all).
    sweep: head counts k for the `{ap|attribution}_top{k}_neutral` variants (() for none).
    The best variant is picked on the gallery among ~50 variants, so its cut is optimistic; on SynthSocial it is
    re-measured on a fresh gallery (`test_balanced`, seed + 2), reported as "confirmation" in summary.json.
    Returns the summary dict (also written as summary.json).
    """
    from workbench.evaluation import evaluate_variants
    from workbench.files import check_writable_dir, write_json_atomic, write_text_atomic
    from workbench.methods.expert_heads import (expert_variants, extract_head_writes, find_expert_heads,
                                               variant_spec)
    from workbench.viz import plot_expert_heads, plot_head_sweep, plot_metric_bars, plot_neuron_ap

    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:  # seconds per phase, in summary.json
        timings[phase] = round(time.perf_counter() - start - sum(timings.values()), 2)

    out = check_writable_dir(out_dir, "experts output folder")  # before any work, so no result is lost
    kind, folder = parse_data(data, DATA_KINDS)
    if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 2):
        raise ValueError(f"n_images must be an integer ≥ 2, got {n_images!r}")
    if model is None:
        from workbench.models import load_clip

        model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    reference, gallery, target, queries = _datasets(kind, folder, seed, n_images)
    lap("load")
    keys = reference[0][1]
    if attribute not in keys:
        raise ValueError(f"the {kind} data has no label {attribute!r}; choose --attribute from {sorted(keys)}")
    others = [a for a in ("gender", "ethnicity") if a != attribute and a in keys]

    writes = extract_head_writes(model, reference, layers, batch_size=batch_size, progress=progress)  # one pass
    finding, *other_findings = [find_expert_heads(model, reference, a, layers=layers, select=select, queries=queries,
                                                  target=target, seed=seed, writes=writes)
                                for a in (attribute, *others)]
    variants = expert_variants(finding, intersect=other_findings, sweep=sweep)
    lap("find")
    groups = tuple(dict.fromkeys([attribute, *others]))
    eval_kwargs = {}
    if kind != "synthsocial":  # the same lists as the queries (real vocabulary), whatever the model's name
        words = real_prompts()
        eval_kwargs["word_lists"] = {"adjectives": words["adjectives"], "occupations": words["occupations"]}
    if queries is not None:
        eval_kwargs["queries"] = queries
    result = evaluate_variants(model, gallery, variants, target=target, groups=groups, n_boot=n_boot, seed=seed,
                               batch_size=batch_size, progress=progress, **eval_kwargs)
    lap("evaluate")

    specs = out / "specs"
    specs.mkdir(exist_ok=True)
    for name, iv in variants.items():
        variant_spec(model, name, iv, finding, selection=_selection_of(name)).save(specs / f"{name}.json")

    table = result.table
    metrics = {v: dict(zip(g["metric"], g["value"])) for v, g in table.groupby("variant", sort=False)}
    baseline = metrics["baseline"]
    names = [v for v in result.variants if v != "baseline"]
    best = pick_best(baseline, {v: metrics[v] for v in names}, attribute)
    metrics, intervals = write_tables(out, result, f"expert heads: {attribute} on {data}", note=f"Best: {best}.")
    key = f"{attribute}_ndkl"
    confirmation = None
    if best is not None and kind == "synthsocial":
        confirmation = _confirm(model, variants[best], best, gallery, seed, target, groups, key, n_boot, batch_size,
                                progress)
    lap("confirm")
    write_text_atomic(out / "heads.csv", finding.table.to_csv(index=False, float_format="%.6g"))
    write_text_atomic(out / "neurons.csv", finding.neurons.to_csv(index=False, float_format="%.6g"))

    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    write_figure(figures, "expert_heads", plot_expert_heads(
        finding.table, title=f"{attribute}: probe AP and bias attribution per head"))
    experts = finding.selections["probe_ap"]
    non_experts = finding.table[~finding.table["selected_ap"]].sort_values("ap").head(len(experts))
    write_figure(figures, "neuron_ap", plot_neuron_ap(
        finding.neurons, experts, [(int(l), int(h)) for l, h in zip(non_experts["layer"], non_experts["head"])],
        title=f"{attribute}: per-neuron AP in the probe-AP experts (top) and the lowest-AP heads"))
    shown = [m for m in (key, *(f"{a}_ndkl" for a in others), "map", "zero_shot_accuracy") if m in set(table["metric"])]
    write_figure(figures, "metrics", plot_metric_bars(table, shown))
    if sweep:
        write_figure(figures, "head_sweep", plot_head_sweep(
            table, key, chance=result.chance.get(key),
            title=f"{key} vs {attribute} heads replaced by the neutral prototype (95 % intervals)"))
    label_names = getattr(gallery, "label_names", {}) or {}
    names_of = dict(enumerate(label_names.get(attribute, ())))
    shown_variant = best or names[0]
    write_figure(figures, "gallery", _gallery_figure(result, gallery, attribute, names_of, shown_variant))

    lap("write")
    cut = result.cut(best, key) if best is not None and baseline.get(key) else {}
    summary = {
        "method": "expert_heads",
        "model": model_ref(model),
        "data": data, "attribute": attribute, "seconds": round(time.perf_counter() - start, 2), "timings": timings,
        "baseline": baseline,
        "variants": [{"name": v, "metrics": metrics[v], "intervals": intervals[v], "spec": f"specs/{v}.json",
                      "path": result.paths.get(v)} for v in names],
        "best": best,
        "best_cut": cut.get("relative"),
        "best_cut_of_excess": cut.get("of_excess"),
        "chance": result.chance,
        "confirmation": confirmation,
        "best_beyond_noise": None if best is None else bool(result.beyond_noise(best, "baseline", key)),
        "finding": finding.summary(),
        "intersect": [f.summary() for f in other_findings],
        "reference": repr(reference), "gallery": repr(gallery),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- command line
def _layers_arg(text: str):
    if text in ("last", "all"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers must be 'last', 'all' or comma-separated layer indices (e.g. 10,11), "
                         f"got {text!r}") from None


def _sweep_arg(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sweep must be comma-separated positive head counts (e.g. 1,2,4,6) or 'none', got {text!r}")
    return sizes


def _select_arg(args):
    from workbench.methods.expert_heads import ap_above, top_k

    if args.ap_above is not None:
        return ap_above(args.ap_above)
    return top_k(args.k, by="ap" if args.select == "ap" else "bias_attribution")


def cmd_experts(args) -> int:
    """`workbench experts`: run_experts with the parsed arguments; prints where the report is and the best variant."""
    summary = run_experts(args.out, model_name=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                          device=args.device, data=args.data, attribute=args.attribute,
                          layers=_layers_arg(args.layers), select=_select_arg(args), n_images=args.n_images,
                          sweep=_sweep_arg(args.sweep),
                          seed=args.seed, n_boot=args.n_boot, progress=not args.quiet)
    key = f"{args.attribute}_ndkl"
    best = summary["best"]
    line = f"best: {best}" if best is None else (
        f"best: {best} ({key} {summary['baseline'].get(key, float('nan')):.4f} → "
        f"{next(v['metrics'][key] for v in summary['variants'] if v['name'] == best):.4f}, "
        f"beyond noise: {summary['best_beyond_noise']})")
    confirmation = summary.get("confirmation")
    if confirmation:
        line += (f"; on a fresh gallery {confirmation['baseline'][key]:.4f} → {confirmation['best'][key]:.4f} "
                 f"(beyond noise: {confirmation['beyond_noise']})")
    print(f"wrote {Path(args.out) / 'summary.json'} ({len(summary['variants'])} variants, "
          f"{summary['seconds']:.0f} s); {line}")
    return 0


def add_parser(sub) -> None:
    """Register `workbench experts` on the console script's subparsers."""
    p = sub.add_parser("experts", help="expert heads: find, intervene, evaluate, report (docs/methods.md)")
    add_model_args(p)
    p.add_argument("--data", default="synthsocial", help="synthsocial | fairface:DIR | utkface:DIR | sispi:DIR | "
                   "celeba:DIR (a local folder, split in a reference and a gallery half)")
    p.add_argument("--attribute", default="gender", help="protected label: gender, ethnicity, age, or any label key")
    p.add_argument("--layers", default="last", help="last | all | comma-separated layer indices (default: last)")
    p.add_argument("--select", choices=("ap", "bias_attribution"), default="ap",
                   help="rank heads by held-out probe AP (the paper) or bias attribution; both are reported")
    p.add_argument("--k", type=int, default=3, help="number of expert heads (default 3)")
    p.add_argument("--ap-above", type=float, default=None, help="select every head with probe AP above this instead")
    p.add_argument("--sweep", default=",".join(map(str, SWEEP)),
                   help="head counts for the neutral-prototype sweep over both rankings (default %(default)s; "
                   "'none' for no sweep)")
    p.add_argument("--n-images", type=int, default=None, help="cap on reference and gallery sizes")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="report folder (checked to be writable before any work)")
    p.set_defaults(func=cmd_experts)
