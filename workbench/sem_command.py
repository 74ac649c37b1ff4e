"""`workbench sem`: SEM (SEMi / SEMb / SEMbi) against the projection baselines, evaluated side by side, with
the disentanglement score of dense embeddings vs SAE latents (docs/sem.md).

    run_sem("runs/sem")                                                     # embedded model, SynthSocial
    run_sem("runs/ff", model_name="ViT-B-32", pretrained="openai", data="fairface:/data/fairface")

Steps: the SAE at `text.hook_text_embed` (`--sae PATH`; the shipped "synthsocial/text-embed" for the embedded
model; otherwise one trained here on the model's text embeddings of the prompt sets, seeded, saved under
DIR/saes/text-embed) → `sem_variants` + `projection_variants` for `--attribute` → `evaluate_variants` on the
gallery (KL and MaxSkew against the uniform and the prior target on the occupation and stereotype queries,
zero-shot accuracy, NDKL, 95 % intervals) → on SynthSocial also `test_spurious` with the variants refitted for
the scene (kitchen vs field: SEM's bias prompts and the projections' spurious prompts), joined in as
worst-group accuracy → the disentanglement score (gender, ethnicity) → DIR/summary.json, table.csv, table.md,
figures/*.html, specs/NAME.json (sem_b, sem_bi, orth_proj, orth_cali; SEMi is an API call, no spec).

Data: "synthsocial" (gallery: `test_balanced` seed, 2,048 images; `test_spurious` seed, 1,024) or
"<loader>:DIR" (a local folder; the gallery is the second seeded half, as in `workbench experts`). The prompt
vocabulary is `prompt_sets("synthsocial")` for the embedded model and `prompt_sets("real")` otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

__all__ = ["run_sem", "pick_best", "vocabulary_prompts", "text_sae", "SPURIOUS_CLASSES"]

SPURIOUS_CLASSES = ("kitchen", "field")  # SynthSocial test_spurious: the label "spurious" names these scenes
SAE_NAME = "synthsocial/text-embed"


def vocabulary_prompts(model):
    """The prompt sets the model can read: `prompt_sets("synthsocial")` for the embedded model, else "real"."""
    from workbench.data import prompt_sets

    return prompt_sets("synthsocial" if getattr(model, "name", None) == "synthsocial" else "real")


def pick_best(baseline: dict, variants: dict, key: str) -> Optional[str]:
    """The variant with the lowest `key` among those whose zero-shot accuracy drops ≤ 2 points (not checked where
    the gallery has none); None if none qualifies or none has `key`."""
    from workbench.method_report import UTILITY_BUDGET, lowest_within_budget

    return lowest_within_budget(baseline, variants, key, {"zero_shot_accuracy": UTILITY_BUDGET})


def text_sae(model, sae_arg, out: Path, prompts, seed: int, steps: int, progress: bool):
    """(SAE object, folder, how) for SEM at `text.hook_text_embed`: `sae_arg` (a folder or shipped name), the
    shipped SAE of the embedded model, or one trained here on the prompt sets (seeded) and saved in out/saes/."""
    from workbench.saes import load_sae, resolve_sae_path, save_sae, train_sae

    if sae_arg is not None:
        return load_sae(sae_arg, model), str(resolve_sae_path(sae_arg)), "given"
    if getattr(model, "name", None) == "synthsocial":
        return load_sae(SAE_NAME, model), str(resolve_sae_path(SAE_NAME)), "shipped"
    texts = list(dict.fromkeys([*prompts.diverse, *prompts.queries,
                                *(p for ps in prompts.paraphrases.values() for p in ps),
                                *(p for classes in prompts.bias.values() for ps in classes.values() for p in ps)]))
    sae = train_sae(model, texts, "text.hook_text_embed", preset="sem", expansion=4, steps=steps,
                    batch_size=min(256, len(texts)), seed=seed, progress=progress)
    folder = save_sae(sae, out / "saes" / "text-embed", model=model)
    return sae, str(folder), "trained"


def _unparaphrased(prompts, lists) -> list[str]:
    return sorted({p for ps in lists for p in ps if p not in prompts.paraphrases})


def run_sem(out_dir, *, model=None, model_name: str = "synthsocial", pretrained: Optional[str] = None,
            checkpoint: Optional[str] = None, device: str = "cpu", data: str = "synthsocial",
            attribute: str = "gender", sae: Optional[str] = None, encode: str = "sae", n_images: Optional[int] = None,
            sae_steps: int = 300, disentanglement: tuple = ("gender", "ethnicity"), seed: int = 0,
            n_boot: int = 1000, batch_size: int = 128, progress: bool = True) -> dict:
    """Run SEM and the projection baselines end to end and write the report into `out_dir` (module docstring).

    model: an already loaded HookedCLIP (otherwise `load_clip(model_name, pretrained, checkpoint, device)`).
    sae: a saved SAE folder at `text.hook_text_embed` (default: shipped for the embedded model, else trained with
    `sae_steps` steps). encode: SEM's latent encoding ("sae" or "relu", `SEM.fit`). n_images: cap on the
    gallery sizes. disentanglement: the attributes whose disentanglement score is computed (a tuple or a
    comma-separated string; () or "none" to skip).
    Returns the summary dict (also written as summary.json).
    """
    from workbench.data import SynthSocial
    from workbench.evaluation import evaluate_variants
    from workbench.files import check_writable_dir, write_json_atomic
    from workbench.method_report import halves, load_real, model_ref, parse_data, write_figure, write_tables
    from workbench.methods.baselines import projection_variants
    from workbench.methods.disentanglement import compare_features
    from workbench.methods.sem import ENCODINGS, SEM
    from workbench.primitives import InterventionSpec
    from workbench.viz import plot_metric_bars
    from workbench.viz.sem import plot_modulation_histogram, plot_sem_scores

    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:
        timings[phase] = round(time.perf_counter() - start - sum(timings.values()), 2)

    out = check_writable_dir(out_dir, "sem output folder")  # before any work, so no result is lost
    kind, folder = parse_data(data)
    if encode not in ENCODINGS:
        raise ValueError(f"--encode must be one of {list(ENCODINGS)}, got {encode!r}")
    if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 8):
        raise ValueError(f"n_images must be an integer ≥ 8, got {n_images!r}")
    if isinstance(sae_steps, bool) or not isinstance(sae_steps, int) or sae_steps < 1:
        raise ValueError(f"sae_steps must be a positive integer, got {sae_steps!r}")
    if isinstance(disentanglement, str):
        disentanglement = tuple(a for a in disentanglement.split(",") if a and a != "none")
    if sae is not None and not Path(sae).expanduser().is_dir():
        raise FileNotFoundError(f"--sae {sae!r}: no SAE folder there (a sae_lens folder with cfg.json, e.g. from "
                                "workbench.saes.save_sae)")
    if model is None:
        from workbench.models import load_clip

        model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    prompts = vocabulary_prompts(model)
    if kind == "synthsocial":
        gallery = SynthSocial("test_balanced", seed=seed, n=n_images)
    else:
        gallery = halves(load_real(kind, folder), n_images, seed, what="the sem command")[1]
    keys = gallery[0][1]
    if attribute not in keys:
        raise ValueError(f"the {kind} data has no label {attribute!r}; choose --attribute from {sorted(keys)}")
    unknown = [a for a in disentanglement if a not in prompts.bias]
    if unknown:
        raise ValueError(f"--disentanglement: no bias prompts for {unknown} in the {prompts.vocabulary} prompt sets "
                         f"(they have {sorted(prompts.bias)}); give a comma-separated subset, or 'none'")
    if attribute not in prompts.bias:
        raise ValueError(f"SEMb and the projections need bias prompts for --attribute {attribute!r}; the "
                         f"{prompts.vocabulary} prompt sets have them for {sorted(prompts.bias)}")
    lap("load")
    sae_obj, sae_path, sae_how = text_sae(model, sae, out, prompts, seed, sae_steps, progress)
    lap("sae")

    def variants_for(attr, classes=None):
        fitted = SEM.fit(model, sae_path, prompts, attr, classes=classes, encode=encode)
        found = {"sem_i": fitted.text_override("sem_i", missing="query"),
                 "sem_b": fitted.to_spec("sem_b") if encode == "sae" else fitted.text_override("sem_b"),
                 "sem_bi": fitted.text_override("sem_bi", missing="query")}
        found.update(projection_variants(model, prompts, attr, classes=classes))
        return fitted, found

    fitted, variants = variants_for(attribute)
    lap("fit")
    label_names = getattr(gallery, "label_names", None) or {}
    groups = tuple(dict.fromkeys([attribute, *(g for g in ("gender", "ethnicity") if g in keys)]))
    bias_queries = {"occupations": list(prompts.occupations), "stereotypes": list(prompts.stereotypes)}
    by_subject = {q.split(" ", 4)[-1]: q for q in prompts.occupations}  # "engineer" → "a photo of an engineer"
    if "occupation" in keys:
        target = "occupation"
        names = label_names.get("occupation", ())
        queries = {c: by_subject.get(c, f"a photo of a {c}") for c in names} or None
    else:
        target, queries = None, list(prompts.occupations)
    common = dict(word_lists={}, captions=False, n_boot=n_boot, seed=seed, batch_size=batch_size, progress=progress)
    result = evaluate_variants(model, gallery, variants, queries=queries, target=target, groups=groups,
                               bias_queries=bias_queries, **common)
    evaluated = [bias_queries["occupations"], bias_queries["stereotypes"],
                 list(queries.values()) if isinstance(queries, dict) else list(queries or [])]
    spurious_summary = None
    if kind == "synthsocial":
        spurious = SynthSocial("test_spurious", seed=seed, n=None if n_images is None else max(4, n_images // 4 * 4))
        _, scene_variants = variants_for("scene", SPURIOUS_CLASSES)
        target_queries = {c: by_subject[c] for c in spurious.label_names["target"]}
        other = evaluate_variants(model, spurious, scene_variants, queries=target_queries, target="target",
                                  groups=(), worst_group="spurious", **common)
        result = result.join(other, metrics=["worst_group_accuracy"]).join(
            other, metrics=["zero_shot_accuracy"], suffix="_spurious")
        evaluated.append(list(target_queries.values()))
        spurious_summary = {"gallery": repr(spurious), "bias_attribute": "scene", "classes": list(SPURIOUS_CLASSES)}
    lap("evaluate")

    attrs = list(disentanglement)
    dis = compare_features(model, sae_obj, prompts, attrs, encodings=(encode,), progress=progress) if attrs else None
    lap("disentanglement")

    specs = out / "specs"
    specs.mkdir(exist_ok=True)
    spec_of = {"sem_i": None}
    for name in ("sem_b", "sem_bi"):
        if encode == "sae":
            fitted.to_spec(name, dataset=data).save(specs / f"{name}.json")
            spec_of[name] = f"specs/{name}.json"
        else:
            spec_of[name] = None
    for name in ("orth_proj", "orth_cali"):
        InterventionSpec.from_edits(model, variants[name], method=name, dataset=data, attribute=attribute,
                                    variant=name).save(specs / f"{name}.json")
        spec_of[name] = f"specs/{name}.json"
    note = (f"SEM on {prompts.vocabulary} prompts, SAE {sae_how} ({encode} encode); KL / MaxSkew over the top "
            f"{min(100, len(gallery))} of the whole gallery (prior: the gallery's group mix).")
    if spurious_summary:
        note += (" worst_group_accuracy and zero_shot_accuracy_spurious: SynthSocial test_spurious (chef vs farmer), "
                 "the variants refitted with the scene (kitchen vs field) as the bias attribute.")
    metrics, intervals = write_tables(out, result, f"SEM and projection baselines: {attribute} on {data}", note)
    baseline = metrics["baseline"]
    names = [v for v in result.variants if v != "baseline"]
    key = f"{attribute}_maxskew_prior_occupations"
    best = pick_best(baseline, {v: metrics[v] for v in names}, key)

    figures = out / "figures"
    shown = [m for m in (f"{attribute}_kl_prior_occupations", key, f"{attribute}_kl_prior_stereotypes",
                         "zero_shot_accuracy", "worst_group_accuracy") if m in set(result.table["metric"])]
    write_figure(figures, "metrics", plot_metric_bars(result.table, shown))
    shown_queries = list(prompts.occupations)
    tables = {v: fitted.query_table(shown_queries, v, missing="query") for v in ("sem_i", "sem_b", "sem_bi")}
    write_figure(figures, "modulation", plot_modulation_histogram(tables))
    write_figure(figures, "scores", plot_sem_scores(tables["sem_bi"], shown_queries[0]))

    lap("write")
    summary = {
        "method": "sem",
        "model": model_ref(model),
        "data": data, "attribute": attribute, "seconds": round(time.perf_counter() - start, 2), "timings": timings,
        "baseline": baseline,
        "variants": [{"name": v, "metrics": metrics[v], "intervals": intervals[v], "spec": spec_of.get(v),
                      "evaluated_as": "api" if v in ("sem_i", "sem_bi") or (v == "sem_b" and encode != "sae")
                      else "spec"} for v in names],
        "best": best,
        "best_metric": key,
        "sae": {"path": sae_path, "source": sae_how, "encode": encode, "d_sae": int(sae_obj.cfg.d_sae)},
        "prompts": {"vocabulary": prompts.vocabulary, "diverse": len(prompts.diverse),
                    "bias_classes": fitted.classes, "without_paraphrases": _unparaphrased(prompts, evaluated)},
        "spurious": spurious_summary,
        "disentanglement": [] if dis is None else dis.to_dict(orient="records"),
        "gallery": repr(gallery),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- command line
def cmd_sem(args) -> int:
    """`workbench sem`: run_sem with the parsed arguments; prints where the report is and the headline numbers."""
    summary = run_sem(args.out, model_name=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                      device=args.device, data=args.data, attribute=args.attribute, sae=args.sae, encode=args.encode,
                      n_images=args.n_images, sae_steps=args.sae_steps, disentanglement=args.disentanglement,
                      seed=args.seed, n_boot=args.n_boot,
                      progress=not args.quiet)
    wga = {v["name"]: v["metrics"].get("worst_group_accuracy") for v in summary["variants"]}
    line = ""
    if summary["baseline"].get("worst_group_accuracy") is not None:
        line = (f"; worst-group accuracy baseline {summary['baseline']['worst_group_accuracy']:.3f}, "
                f"sem_bi {wga.get('sem_bi', float('nan')):.3f}")
    print(f"wrote {Path(args.out) / 'summary.json'} ({len(summary['variants'])} variants, {summary['seconds']:.0f} s); "
          f"best by {summary['best_metric']}: {summary['best']}{line}")
    return 0


def add_parser(sub) -> None:
    """Register `workbench sem` on the console script's subparsers."""
    from workbench.method_report import add_model_args

    p = sub.add_parser("sem", help="SEM (sparse embedding modulation) vs projection baselines: evaluate, report "
                                   "(docs/sem.md)")
    add_model_args(p)
    p.add_argument("--data", default="synthsocial", help="synthsocial | fairface:DIR | utkface:DIR | sispi:DIR | "
                   "celeba:DIR | waterbirds:DIR (a local folder; the gallery is its second seeded half)")
    p.add_argument("--attribute", default="gender", help="protected label with bias prompts: gender, ethnicity, age")
    p.add_argument("--sae", default=None, help="SAE folder at text.hook_text_embed (default: the shipped one for the "
                   "embedded model, else one trained into DIR/saes)")
    p.add_argument("--encode", choices=("sae", "relu"), default="sae",
                   help="SEM latents: the SAE's own encode (exportable) or ReLU of its pre-activations (the paper's)")
    p.add_argument("--sae-steps", type=int, default=300, help="training steps when an SAE is trained here")
    p.add_argument("--disentanglement", default="gender,ethnicity",
                   help="attributes for the disentanglement score (comma-separated, or 'none')")
    p.add_argument("--n-images", type=int, default=None, help="cap on the gallery sizes")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="report folder (checked to be writable before any work)")
    p.set_defaults(func=cmd_sem)
