"""`workbench demo`: an end-to-end tour on the embedded default, offline.

1. load the shipped SynthSocial CLIP and check the CLS decomposition against encode_image;
2. measure zero-shot accuracy and the planted gender bias in occupation retrieval;
3. extract every head's direct contribution on a held-out reference set and probe each for gender;
4. attribute the retrieval bias to heads (direct contribution to the occupation-prompt similarity,
   female minus male, signed by the occupation's planted skew) and pick the top heads;
5. replace their CLS writes with the gender-neutral prototype and measure again;
6. export the intervention as a JSON spec, reload it and check it reproduces the embeddings bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TOP_HEADS = 3


def bias_attribution(heads: torch.Tensor, image_embed: torch.Tensor, text: torch.Tensor, labels: dict,
                     skew: torch.Tensor) -> torch.Tensor:
    """How much each head's direct contribution pushes occupation retrieval towards the planted skew.

    heads [n, L, H, d_embed] (direct contributions), image_embed [n, d_embed] (unnormalised), text
    [n_occupations, d_embed] (normalised prompts), skew [n_occupations] (+1 female-skewed, −1 male-skewed).
    Returns [L, H]: Σ_o skew_o · (mean over female − mean over male images of occupation o) of the head's
    share of the cosine similarity to prompt o.
    """
    share = torch.einsum("nlhd,od->nolh", heads, text) / image_embed.norm(dim=-1)[:, None, None, None]
    score = torch.zeros(heads.shape[1:3])
    for o in range(len(text)):
        mine = labels["occupation"] == o
        female, male = mine & (labels["gender"] == 1), mine & (labels["gender"] == 0)
        score += skew[o] * (share[female, o].mean(0) - share[male, o].mean(0))
    return score


def run_demo(out_dir="runs/demo", quick: bool = False, seed: int = 0) -> dict:
    from workbench.activations import extract
    from workbench.data import SynthSocial, collate_labeled, vocab
    from workbench.embedded.card import embed_images, retrieval_report
    from workbench.models import load_clip
    from workbench.primitives import InterventionSpec, ablate_heads, apply, class_prototypes, intervene
    from workbench.probes import probe
    from workbench.viz import plot_head_scores

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 512 if quick else 1024

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

    print(f"\n2. Baseline on {evaluation!r}")
    before = retrieval_report(model, embed_images(model, images), labels)
    for k, v in before.items():
        print(f"   {k:32s} {v:.4f}")

    print(f"\n3. Every head's direct contribution on {reference!r}, probed for gender")
    store = extract(model, reference, ["head_contributions", "hook_image_embed"], batch_size=128)
    heads = store["head_contributions"]  # [n, layers, heads, d_embed]
    probes = probe(heads, store.labels["gender"], unit_index=["layer", "head"], seed=seed)
    print(probes.table.sort_values("ap", ascending=False).head(5).to_string(index=False))
    plot_head_scores(probes.table, value="ap", title="gender probe AP per head").write_html(out / "head_probe_ap.html")

    print("\n4. Attribute the retrieval bias to heads")
    text = model.encode_text([f"a photo of a {o}" for o in vocab.OCCUPATIONS], normalize=True).detach()
    skew = torch.sign(torch.as_tensor(reference.config.female_probs()) - 0.5).float()
    score = bias_attribution(heads, store["hook_image_embed"], text, store.labels, skew)
    order = score.flatten().argsort(descending=True)[:TOP_HEADS]
    experts = [(int(i) // score.shape[1], int(i) % score.shape[1]) for i in order]
    ap = probes.table.set_index(["layer", "head"])["ap"]
    for l, h in experts:
        print(f"   L{l}H{h}: bias attribution {score[l, h]:+.4f}, gender probe AP {ap[(l, h)]:.3f}")

    print("\n5. Replace their CLS writes with the gender-neutral prototype")
    loader = torch.utils.data.DataLoader(reference, batch_size=128, collate_fn=collate_labeled)
    protos = class_prototypes(model, loader, "gender", heads=experts)
    intervention = ablate_heads(experts, op="replace", value=protos["neutral"])
    with intervene(model, intervention):
        after_emb = embed_images(model, images)
        after = retrieval_report(model, after_emb, labels)
    print(f"   {'metric':32s} {'before':>8s} {'after':>8s}")
    for k in before:
        print(f"   {k:32s} {before[k]:8.4f} {after[k]:8.4f}")

    print("\n6. Export the intervention as a JSON spec and re-apply it to a fresh model")
    spec = InterventionSpec.from_edits(model, intervention, method="demo: bias-attributed heads, neutral prototype",
                                       dataset=repr(reference), attribute="gender")
    path = spec.save(out / "gender_heads.json")
    with apply(load_clip("synthsocial"), InterventionSpec.load(path)) as reloaded:
        reproduced = embed_images(reloaded, images)
    same = torch.equal(reproduced, after_emb)
    print(f"   wrote {path}; the reloaded spec reproduces the embeddings bit for bit: {same}")
    summary = {"heads": experts, "before": before, "after": after, "spec": str(path), "bit_exact": same}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
