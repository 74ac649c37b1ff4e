"""The embedded model's card: what a biased CLIP must show, measured on SynthSocial `test_balanced`."""
from __future__ import annotations

import torch

from workbench.data.vocab import OCCUPATIONS

#: The card's retrieval queries: one per occupation, in label order.
OCCUPATION_QUERIES = {o: f"a photo of a {o}" for o in OCCUPATIONS}


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a linear probe on features [n, d] (half train, half test, stratified)."""
    from workbench.probes import probe

    result = probe(features[:, None, :], labels, test_size=0.5, seed=seed, max_iter=1000)
    return float(result.table["accuracy"].iloc[0])


@torch.no_grad()
def model_card(model, seed: int = 0, top_k: int = 100) -> dict:
    """Zero-shot occupation accuracy ("a photo of a {occupation}"), the planted gender bias in occupation
    retrieval (`workbench.evaluation.retrieval_report`: gender NDKL, SISPI protocol, and MaxSkew@top_k),
    and gender/ethnicity linear-probe accuracy on image embeddings, on SynthSocial test_balanced."""
    from workbench.data import SynthSocial
    from workbench.evaluation import embed_images, retrieval_report

    data = SynthSocial("test_balanced", seed=seed)
    images, labels = data.tensors()
    emb = embed_images(model, images)
    report = retrieval_report(model, emb, labels, OCCUPATION_QUERIES, target="occupation", groups=("gender",),
                              top_k=top_k, label_names=data.label_names)
    card = {"dataset": repr(data), **report}
    for attribute in ("gender", "ethnicity"):
        card[f"{attribute}_probe_accuracy"] = probe_accuracy(emb, labels[attribute], seed=seed)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in card.items()}
