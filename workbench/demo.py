"""`workbench demo`: an end-to-end tour on the embedded default, offline.

1. load the shipped SynthSocial CLIP and check the CLS decomposition against encode_image;
2. measure zero-shot accuracy and the planted gender bias in occupation retrieval (`workbench.evaluation`);
3. find expert heads (`workbench.methods.expert_heads`): every head's direct contribution on a held-out
   reference set, a gender probe per head, and each head's share of the retrieval bias;
4. replace the top heads' CLS writes with the gender-neutral prototype and measure again;
5. export the intervention as a JSON spec, reload it and check it reproduces the embeddings bit for bit;
6. all methods side by side (`workbench.methods.comparison`): expert heads, SEM (i, b, bi), the projection
   baselines and DebiasLens on the shipped SAEs, evaluated together on the same gallery (bias-query MaxSkew / KL,
   NDKL, zero-shot accuracy, mAP, worst-group accuracy on test_spurious), every exportable variant as a spec;
7. (`--with-ntide`) N-TIDE: train the teacher, the student and the baselines, and score them;
8. one self-contained HTML report (plotly bundled, no CDN) with the card, the table, the figures and a gallery.
"""
from __future__ import annotations

from typing import Optional

import torch

TOP_HEADS = 3
GROUPS = ("gender", "ethnicity")
SAE_STEPS = 300  # SEM's SAE, trained here for a model without shipped SAEs (steps × 256 prompts)


def _print_metrics(columns: dict) -> None:
    names = list(columns)
    print(f"   {'metric':28s}" + "".join(f"{n:>10s}" for n in names))
    for key in next(iter(columns.values())):
        print(f"   {key:28s}" + "".join(f"{columns[n][key]:10.4f}" for n in names))


def _best(result, attribute: str = "gender") -> Optional[str]:
    """Lowest `{attribute}_maxskew_occupations` among variants whose zero-shot accuracy (where the gallery has a
    target label) drops ≤ 2 points."""
    from workbench.method_report import UTILITY_BUDGET, lowest_within_budget

    metrics = {v: {m: result.value(v, m) for m in result.metrics} for v in result.variants}
    return lowest_within_budget(metrics.pop("baseline"), metrics, f"{attribute}_maxskew_occupations",
                                {"zero_shot_accuracy": UTILITY_BUDGET})


def _save_specs(out, comparison) -> dict:
    """specs/NAME.json for every exportable variant (a variant made of several specs: NAME.TOWER.json)."""
    folder = out / "specs"
    folder.mkdir(exist_ok=True)
    written = {}
    for name, spec in comparison.specs.items():
        if spec is None:
            written[name] = None
        elif isinstance(spec, list):
            paths = []
            for part in spec:
                tower = part.edits[0].tower if part.edits else "spec"
                paths.append(str(part.save(folder / f"{name}.{tower}.json").relative_to(out)))
            written[name] = paths
        else:
            written[name] = str(spec.save(folder / f"{name}.json").relative_to(out))
    return written


def run_demo(out_dir="runs/demo", quick: bool = False, seed: int = 0, with_ntide: bool = False,
             progress: bool = True, model_name: str = "synthsocial", pretrained: Optional[str] = None,
             checkpoint: Optional[str] = None, device: str = "cpu", data: str = "synthsocial") -> dict:
    """Run the demo (module docstring) into `out_dir`; returns the summary (also written as summary.json).

    model_name / pretrained / checkpoint / device: the model (`load_clip`); data: "synthsocial" or "KIND:DIR" (a
    local folder, e.g. fairface:/data/fairface, split in a reference and a gallery half). Steps 2–5 need
    SynthSocial's labels; on a folder the demo goes from step 1 to the comparison. A model other than the embedded
    one has no shipped SAEs: SEM's and DebiasLens's are trained here (seeded, seconds to minutes) into out/saes/.
    """
    from workbench.files import check_writable_dir, write_json_atomic
    from workbench.method_report import halves, load_real, parse_data
    from workbench.methods.comparison import compare_methods
    from workbench.models import load_clip

    out = check_writable_dir(out_dir, "demo output folder")  # before the work, so no result is lost
    kind, folder = parse_data(data)
    torch.manual_seed(seed)
    n = 512 if quick else 1024

    print(f"1. Load the model ({model_name})")
    model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    print(model.summary())
    if kind == "synthsocial":
        from workbench.data import SynthSocial

        evaluation = SynthSocial("test_balanced", seed=seed, n=n)
        reference = SynthSocial("test_balanced", seed=seed + 1, n=n, transform=model.preprocess)
        spurious = SynthSocial("test_spurious", seed=seed, n=512 if quick else 1024)
    else:
        reference, evaluation = halves(load_real(kind, folder), n, seed, what="the demo")
        spurious = None
    from workbench.evaluation import input_batches

    x, _ = next(iter(input_batches(model, evaluation, 16)))  # preprocessed, whatever the dataset's format
    decomposition = model.visual.decompose(x.to(model.device))
    err = (decomposition.sum() - model.encode_image(x.to(model.device))).abs().max().item()
    print(f"   {decomposition}\n   max |Σ components − encode_image| = {err:.1e}")

    summary = {"method": "demo", "model": model.name, "data": data, "evaluation": repr(evaluation),
               "reference": repr(reference)}
    if kind == "synthsocial":
        def reload():
            return load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)

        summary.update(_expert_heads_tour(model, evaluation, reference, out, seed, reload))
    else:
        print("\n2.–5. The expert-heads tour needs SynthSocial's occupation labels: skipped for a folder")
    write_json_atomic(out / "summary.json", summary)  # the first half is saved before the longer second half

    print("\n6. All methods side by side: expert heads, SEM, projection baselines, DebiasLens (α = 0.6)")
    saes = _saes(model, kind, reference, out, seed, progress)
    from workbench.sem_command import vocabulary_prompts

    # expert heads from every layer on the embedded model: its gender skew enters the CLS token early (docs/methods.md)
    comparison = compare_methods(model, reference, evaluation, spurious=spurious, prompts=vocabulary_prompts(model),
                                 expert_layers="all" if kind == "synthsocial" and model.name == "synthsocial" else
                                 "last", n_boot=500 if quick else 1000, seed=seed, progress=progress, **saes)
    shown = [m for m in ("gender_maxskew_occupations", "gender_maxskew_stereotypes", "gender_ndkl",
                         "zero_shot_accuracy", "worst_group_accuracy") if m in comparison.result.metrics]
    print(comparison.table(shown, intervals=False).to_string(float_format=lambda v: f"{v:.4f}"))
    result = comparison.result
    best = _best(result)
    specs = _save_specs(out, comparison)
    summary["comparison"] = {
        "gallery": repr(evaluation), "spurious": repr(spurious), "seconds": comparison.seconds, "best": best,
        "saes": {k: str(v) for k, v in saes.items() if k.endswith("_sae")},
        "best_beyond_noise": None if best is None else result.beyond_noise(best, "baseline",
                                                                           "gender_maxskew_occupations"),
        "baseline": {m: result.value("baseline", m) for m in result.metrics},
        "chance": result.chance,
        "variants": [{"name": v, "method": comparison.method_of[v],
                      "metrics": {m: result.value(v, m) for m in result.metrics},
                      "intervals": {r.metric: [r.lo, r.hi]
                                    for r in result.table[result.table.variant == v].itertuples()},
                      "difference_to_baseline": {r.metric: {"value": r.diff, "interval": [r.lo, r.hi],
                                                            "beyond_noise": bool(r.beyond_noise)}
                                                 for r in result.comparisons[result.comparisons.variant == v]
                                                 .itertuples()},
                      "spec": specs[v]} for v in result.variants if v != "baseline"],
    }
    print(f"   best (lowest gender MaxSkew on occupation prompts, zero-shot down ≤ 2 points): {best}")

    ntide = None
    if with_ntide:
        print("\n7. N-TIDE: teacher, student and baselines (trained here)")
        ntide = _run_ntide(out / "ntide", model, data, seed, quick, progress)
        summary["ntide"] = ntide

    print("\n8. Report")
    from workbench.demo_report import write_report

    report = write_report(out / "report.html", model=model, summary=summary, comparison=comparison,
                          gallery=evaluation, reference=reference, ntide=ntide)
    summary["report"] = str(report)
    write_json_atomic(out / "summary.json", summary)
    print(f"   report: {report}\n   summary: {out / 'summary.json'}")
    return summary


def _saes(model, kind: str, reference, out, seed: int, progress: bool) -> dict:
    """compare_methods' SAE arguments: the shipped SAEs of the embedded model (its text-side DebiasLens SAE is
    trained here: none is shipped, see saes/README.md), or, for another model, all of them trained here."""
    from workbench.debiaslens_command import image_side_sae, text_search_data, text_side_sae

    print("   training DebiasLens's text-side SAE at the last text block (seeded, one thread)")
    text, _ = text_side_sae(model, None, kind, out, SAE_STEPS, seed, progress)
    if model.name == "synthsocial":
        return {"sem_sae": "synthsocial/text-embed", "image_sae": "synthsocial/image-resid-last", "text_sae": text}
    from workbench.sem_command import text_sae, vocabulary_prompts

    print("   no shipped SAEs for this model: training SEM's (text embedding) and DebiasLens's image-side one")
    _, sem, _ = text_sae(model, None, out, vocabulary_prompts(model), seed, SAE_STEPS, progress)
    image, _ = image_side_sae(model, None, reference, out, SAE_STEPS, seed, progress)
    attributes = [a for a in ("gender", "ethnicity", "age") if a in reference.label_names]
    return {"sem_sae": sem, "image_sae": image, "text_sae": text,
            "text_search": text_search_data(kind, reference, attributes)}


def _expert_heads_tour(model, evaluation, reference, out, seed: int, reload) -> dict:
    """Steps 2–5: baseline metrics, expert heads, the neutral-prototype intervention, the spec round trip."""
    from workbench.data import vocab
    from workbench.evaluation import embed_images, retrieval_report
    from workbench.files import write_text_atomic
    from workbench.methods import get_method
    from workbench.primitives import InterventionSpec, apply, intervene
    from workbench.viz import plot_head_scores

    queries = {o: f"a photo of a {o}" for o in vocab.OCCUPATIONS}
    images, labels = evaluation.tensors()

    def measure() -> tuple[torch.Tensor, dict]:
        emb = embed_images(model, images)
        return emb, retrieval_report(model, emb, labels, queries, target="occupation", groups=GROUPS,
                                     label_names=evaluation.label_names)

    print(f"\n2. Baseline on {evaluation!r}")
    _, before = measure()
    _print_metrics({"before": before})

    print(f"\n3. Find expert heads on {reference!r}: each head's direct contribution, a gender probe per head,\n"
          "   and its share of the female−male similarity gap of occupation queries (signed by the planted skew)")
    skew = torch.sign(torch.as_tensor(reference.config.female_probs()) - 0.5).float()
    found = get_method("expert_heads")(model, reference, list(queries.values()), attribute="gender",
                                       target="occupation", skew=skew, k=TOP_HEADS, seed=seed)
    table = found.table()
    print(table.head(6).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    figure = plot_head_scores(found.probes.table, value="ap", title="gender probe AP per head")
    write_text_atomic(out / "head_probe_ap.html", figure.to_html())
    print(f"   selected (top {TOP_HEADS} by bias attribution): {', '.join(f'L{l}H{h}' for l, h in found.heads)}")

    print("\n4. Replace their CLS writes with the gender-neutral prototype")
    with intervene(model, found.intervention):
        after_emb, after = measure()
    _print_metrics({"before": before, "after": after})
    drop = before["gender_ndkl"] - after["gender_ndkl"]
    print(f"   gender NDKL {before['gender_ndkl']:.4f} → {after['gender_ndkl']:.4f} "
          f"({-100 * drop / before['gender_ndkl']:+.0f} %)")

    print("\n5. Export the intervention as a JSON spec and re-apply it to a fresh copy of the model")
    path = found.to_spec(model).save(out / "gender_heads.json")
    with apply(reload(), InterventionSpec.load(path)) as reloaded:
        reproduced = embed_images(reloaded, images)
    same = torch.equal(reproduced, after_emb)
    print(f"   wrote {path}; the reloaded spec reproduces the embeddings bit for bit: {same}")
    return {"heads": [list(h) for h in found.heads], "attribution": found.attribution.tolist(),
            "before": before, "after": after, "spec": str(path), "bit_exact": same}


def _run_ntide(folder, model, data: str, seed: int, quick: bool, progress: bool) -> dict:
    """`workbench ntide` into folder (its own report and checkpoints); the rows the HTML report shows."""
    from workbench.ntide_command import run_ntide_command

    kw = {"n_train": 2000, "n_test": 512} if quick else {}
    summary = run_ntide_command(folder, model=model, data=data, seed=seed, progress=progress, **kw)
    shown = ("accuracy", "eo_diff", "eop_diff", "dp_diff", "rbd")
    rows = [{"name": "student (baseline)", **{m: summary["baseline"].get(m) for m in shown}}]
    rows += [{"name": v["name"], **{m: v["metrics"].get(m) for m in shown}} for v in summary["variants"]]
    print(f"   {summary['finding']}")
    return {"folder": str(folder), "seconds": summary["seconds"], "best": summary["best"],
            "finding": summary["finding"], "target": summary["target"], "group": summary["attribute"], "rows": rows,
            "caption": f"{summary['target']} classifiers, {summary['attribute']} as the protected group; trained on "
                       f"{summary['train']}, scored on {summary['test']}. Full report: ntide/table.md."}
