"""The demo's HTML report: one self-contained file (plotly bundled inline, images embedded) with the model card,
the comparison table of every method on the same model and data with intervals, the figures and a retrieval
gallery (`workbench.viz.html_report.HtmlReport`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from workbench.method_report import thumbnail

__all__ = ["write_report", "TABLE_METRICS", "FIGURE_METRICS"]

TABLE_METRICS = ("gender_maxskew_occupations", "gender_maxskew_stereotypes", "gender_kl_occupations",
                 "gender_kl_stereotypes", "gender_ndkl", "ethnicity_maxskew_occupations", "zero_shot_accuracy", "map",
                 "worst_group_accuracy")
FIGURE_METRICS = ("gender_maxskew_occupations", "gender_maxskew_stereotypes", "zero_shot_accuracy",
                  "worst_group_accuracy")
GALLERY_TOP = 10


def _card(model) -> Optional[dict]:
    """The embedded model's stored card (measured when it was trained), else None."""
    from workbench.models.loading import PRETRAINED_DIR

    path = Path(PRETRAINED_DIR) / f"{model.name}.card.json"
    if model.name != "synthsocial" or not path.is_file():
        return None
    return json.loads(path.read_text())


@torch.no_grad()
def _gallery(report, model, comparison, gallery, variant: str, attribute: str) -> None:
    """Top images of the occupation prompt with the largest skew, baseline vs `variant`, with the demographic mix
    (the best variant is chosen on occupation prompts)."""
    from workbench.viz.compare import plot_retrieval_mix

    result = comparison.result
    key = f"{attribute}_maxskew_occupations"
    if key not in result.per_query["baseline"]:
        return
    q = int(result.per_query["baseline"][key].argmax())
    prompt = comparison.bias_queries["occupations"][q]
    names = list(gallery.label_names[attribute])
    groups, thumbs = {}, {}
    for name in ("baseline", variant):
        text = result.prompt_embeddings.get(name, {})  # a variant that edits the text has its own embeddings
        t = text["bias:occupations"][q] if "bias:occupations" in text else \
            model.encode_text([prompt], normalize=True)[0].float().cpu()
        top = (result.embeddings[name] @ t).topk(GALLERY_TOP).indices.tolist()
        groups[name] = [names[c] for c in result.labels[attribute][top].tolist()]
        thumbs[name] = [thumbnail(gallery, i) for i in top]
    report.figure(plot_retrieval_mix(groups, names, prompt, thumbnails=thumbs,
                                     title=f"top {GALLERY_TOP} for {prompt!r}: baseline vs {variant}"),
                  caption=f"The occupation prompt with the largest {attribute} skew before any edit.", height=420)


def _findings(result, attribute: str) -> str:
    """One sentence per bias metric: which variants moved it beyond noise, down and up (read off the paired tests)."""
    parts = []
    for metric in (f"{attribute}_maxskew_occupations", f"{attribute}_maxskew_stereotypes", f"{attribute}_ndkl"):
        if metric not in result.metrics:
            continue
        rows = result.comparisons[(result.comparisons["metric"] == metric) & result.comparisons["beyond_noise"]]
        down = [f"{r.variant} ({r.diff:+.3f})" for r in rows.itertuples() if r.diff < 0]
        up = [f"{r.variant} ({r.diff:+.3f})" for r in rows.itertuples() if r.diff > 0]
        parts.append(f"{metric}: lower beyond noise: {', '.join(down) or 'none'}; higher beyond noise: "
                     f"{', '.join(up) or 'none'}.")
    return "What the paired tests say. " + " ".join(parts)


def write_report(path, *, model, summary: dict, comparison, gallery, reference=None, ntide: Optional[dict] = None,
                 attribute: str = "gender"):
    """Write the report to `path` and return it."""
    import pandas as pd

    from workbench.viz import plot_expert_heads
    from workbench.viz.compare import plot_method_comparison
    from workbench.viz.html_report import HtmlReport

    report = HtmlReport(f"workbench demo — {model.name}")
    report.paragraph(f"Every method on the same model, data and metrics. Model: {model.name} "
                     f"(fingerprint {model.fingerprint()[:12]}…); gallery: {summary['evaluation']}; searches ran on "
                     f"{summary['reference']}. Numbers are means with 95 % bootstrap intervals over prompts "
                     "(worst-group accuracy: over images); * marks a paired difference to the baseline beyond noise.")
    report.heading("Model card")
    card = _card(model)
    if card is not None:
        report.table(pd.DataFrame([card["card"]]).T.rename(columns={0: "value"}),
                     caption="Measured on SynthSocial test_balanced when the embedded model was trained.")
    report.code(model.summary())

    report.heading("All methods side by side")
    result = comparison.result
    md = comparison.table([m for m in TABLE_METRICS if m in result.metrics], intervals=True)
    noisy = result.comparisons
    for m in md.columns[1:]:
        beyond = set(noisy[(noisy["metric"] == m) & noisy["beyond_noise"]]["variant"])
        md[m] = [f"{v} *" if name in beyond else v for name, v in zip(md.index, md[m])]
    caption = ("maxskew / kl: over the top 100 of the gallery for occupation or stereotype prompts, uniform target; "
               "ndkl: SISPI protocol over occupation queries.")
    if result.chance:
        caption += (" A random ranking scores NDKL " + ", ".join(f"{m} {v:.4f}" for m, v in result.chance.items())
                    + " on this gallery (chance level): no ranking that ignores the groups goes below it.")
    if "worst_group_accuracy" in result.metrics:
        caption += " worst_group_accuracy: zero-shot on test_spurious, the worst (chef/farmer × kitchen/field) group."
    report.table(md, caption=caption)
    report.paragraph(_findings(result, attribute))
    tidy = result.table.assign(method=[comparison.method_of.get(v, "vanilla") for v in result.table["variant"]])
    report.figure(plot_method_comparison(tidy, [m for m in FIGURE_METRICS if m in result.metrics],
                                         title="bias (lower is better) and utility, with 95 % intervals"),
                  height=520)
    best = summary.get("comparison", {}).get("best")
    if best:
        report.paragraph(f"Lowest {attribute} MaxSkew on occupation prompts with zero-shot accuracy down ≤ 2 "
                         f"points: `{best}`.")
        _gallery(report, model, comparison, gallery, best, attribute)

    finding = comparison.findings.get("expert_heads")
    neurons = comparison.findings.get("debiaslens")
    if finding is not None:
        report.heading("Expert heads")
        report.figure(plot_expert_heads(finding.table, title=f"{attribute}: probe AP and bias attribution per head"))
    if neurons is not None and neurons.get("image") is not None:
        from workbench.viz.debiaslens import plot_social_neurons

        found = neurons["image"]
        report.heading("DebiasLens social neurons (image side)")
        top = found.top_items(6)
        examples = {int(j): [thumbnail(reference, int(i)) for i in g["index"]]
                    for j, g in top.groupby("latent")} if reference is not None else {}
        report.figure(plot_social_neurons(found, examples), height=120 + 110 * max(1, len(found.latents())))
        report.paragraph(repr(found))
    if ntide is not None:
        report.heading("N-TIDE (trained student vs baselines)")
        report.table(pd.DataFrame(ntide["rows"]).set_index("name"), caption=ntide.get("caption", ""))

    report.heading("Files")
    report.paragraph("summary.json, specs/*.json (one InterventionSpec per exportable variant; API-only variants such "
                     "as sem_i have none), gender_heads.json, head_probe_ap.html.")
    return report.save(path)
