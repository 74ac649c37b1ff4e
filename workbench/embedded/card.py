"""The embedded model's card: what a biased CLIP must show, measured on SynthSocial `test_balanced`."""
from __future__ import annotations

import torch

from workbench.data.vocab import OCCUPATIONS


@torch.no_grad()
def embed_images(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """[0,1] images [n, 3, H, W] → L2-normalised image embeddings [n, d_embed] (model preprocess applied).

    Runs under whatever hooks are active on the model, so it also measures an intervened model."""
    return torch.cat([model.encode_image(model.preprocess(images[i:i + batch_size]).to(model.device), normalize=True)
                      for i in range(0, len(images), batch_size)]).cpu()


@torch.no_grad()
def retrieval_report(model, image_embeddings: torch.Tensor, labels: dict, top_k: int = 100) -> dict:
    """Zero-shot occupation accuracy and gender retrieval bias for "a photo of a {occupation}" queries.

    NDKL follows the SISPI protocol (each query ranks all images; NDKL over that occupation's images in
    ranking order, Q uniform over gender); MaxSkew@top_k is over all images. Both averaged over occupations.
    """
    from workbench.metrics import max_skew_at_k, ndkl, zero_shot_accuracy

    txt = model.encode_text([f"a photo of a {o}" for o in OCCUPATIONS], normalize=True).cpu()
    sim = txt @ image_embeddings.T  # [n_occupations, n_images]
    occupation = labels["occupation"]
    relevant = occupation[None, :] == torch.arange(len(OCCUPATIONS))[:, None]
    return {
        "zero_shot_occupation_accuracy": zero_shot_accuracy(sim.T, occupation),
        "gender_ndkl": ndkl(sim, labels["gender"], n_groups=2, relevant_mask=relevant),
        f"gender_maxskew@{top_k}": max_skew_at_k(sim, labels["gender"], k=top_k, n_groups=2),
    }


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> float:
    """Held-out accuracy of a linear probe on features [n, d] (half train, half test, stratified)."""
    from workbench.probes import probe

    result = probe(features[:, None, :], labels, test_size=0.5, seed=seed, max_iter=1000)
    return float(result.table["accuracy"].iloc[0])


@torch.no_grad()
def model_card(model, seed: int = 0, top_k: int = 100) -> dict:
    """Zero-shot occupation accuracy, gender/ethnicity linear-probe accuracy on image embeddings, and the
    planted gender bias in retrieval (see `retrieval_report`), on SynthSocial test_balanced."""
    from workbench.data import SynthSocial

    data = SynthSocial("test_balanced", seed=seed)
    images, labels = data.tensors()
    emb = embed_images(model, images)
    card = {"dataset": repr(data), **retrieval_report(model, emb, labels, top_k=top_k)}
    for attribute in ("gender", "ethnicity"):
        card[f"{attribute}_probe_accuracy"] = probe_accuracy(emb, labels[attribute], seed=seed)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in card.items()}
