"""`workbench demo`: an end-to-end tour on the embedded default, offline.

1. load the shipped SynthSocial CLIP and check the CLS decomposition against encode_image;
2. measure zero-shot accuracy and the planted gender bias in occupation retrieval (`workbench.evaluation`);
3. find expert heads (`workbench.methods.expert_heads`): every head's direct contribution on a held-out
   reference set, a gender probe per head, and each head's share of the retrieval bias;
4. replace the top heads' CLS writes with the gender-neutral prototype and measure again;
5. export the intervention as a JSON spec, reload it and check it reproduces the embeddings bit for bit.
"""
from __future__ import annotations

import torch

TOP_HEADS = 3
GROUPS = ("gender", "ethnicity")


def _print_metrics(columns: dict) -> None:
    names = list(columns)
    print(f"   {'metric':28s}" + "".join(f"{n:>10s}" for n in names))
    for key in next(iter(columns.values())):
        print(f"   {key:28s}" + "".join(f"{columns[n][key]:10.4f}" for n in names))


def run_demo(out_dir="runs/demo", quick: bool = False, seed: int = 0) -> dict:
    from workbench.data import SynthSocial, vocab
    from workbench.evaluation import embed_images, retrieval_report
    from workbench.files import check_writable_dir, write_json_atomic, write_text_atomic
    from workbench.methods import get_method
    from workbench.models import load_clip
    from workbench.primitives import InterventionSpec, apply, intervene
    from workbench.viz import plot_head_scores

    out = check_writable_dir(out_dir, "demo output folder")  # before the work, so no result is lost
    torch.manual_seed(seed)
    n = 512 if quick else 1024
    queries = {o: f"a photo of a {o}" for o in vocab.OCCUPATIONS}

    print("1. Load the embedded model")
    model = load_clip("synthsocial")
    print(model.summary())
    evaluation = SynthSocial("test_balanced", seed=seed, n=n)
    reference = SynthSocial("test_balanced", seed=seed + 1, n=n, transform=model.preprocess)
    images, labels = evaluation.tensors()
    x = model.preprocess(images[:16])
    decomposition = model.visual.decompose(x)
    err = (decomposition.sum() - model.encode_image(x)).abs().max().item()
    print(f"   {decomposition}\n   max |Σ components − encode_image| = {err:.1e}")

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

    print("\n5. Export the intervention as a JSON spec and re-apply it to a fresh model")
    path = found.to_spec(model).save(out / "gender_heads.json")
    with apply(load_clip("synthsocial"), InterventionSpec.load(path)) as reloaded:
        reproduced = embed_images(reloaded, images)
    same = torch.equal(reproduced, after_emb)
    print(f"   wrote {path}; the reloaded spec reproduces the embeddings bit for bit: {same}")
    summary = {"method": "expert_heads", "evaluation": repr(evaluation), "reference": repr(reference),
               "heads": [list(h) for h in found.heads], "attribution": found.attribution.tolist(),
               "before": before, "after": after, "spec": str(path), "bit_exact": same}
    write_json_atomic(out / "summary.json", summary)
    print(f"   summary: {out / 'summary.json'}")
    return summary
