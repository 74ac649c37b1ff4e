"""Evaluation: embed a gallery, then report zero-shot accuracy and retrieval fairness for any prompts.

    emb = embed_images(model, images)                       # [n, d_embed], L2-normalised
    report = retrieval_report(model, emb, labels,
                              queries={o: f"a photo of a {o}" for o in OCCUPATIONS},
                              target="occupation", groups=("gender", "ethnicity"))
    # {"zero_shot_accuracy": ..., "gender_ndkl": ..., "gender_maxskew_at_100": ..., "ethnicity_ndkl": ...}

Both run under whatever hooks are active on the model, so they measure an intervened model as well
(`with intervene(model, edits): ...`). Metric keys are snake_case and stable across the package
(docs/metrics.md).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["embed_images", "input_batches", "retrieval_report", "query_prompts"]

Queries = Union[Mapping[Union[str, int], str], Sequence[str]]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@torch.no_grad()
def embed_images(model, images, batch_size: int = 256) -> Tensor:
    """Gallery → L2-normalised image embeddings float32 [n, d_embed] on the CPU.

    images: raw images as a tensor [n, 3, H, W] (float in [0, 1] or uint8), which `model.preprocess`
    checks and normalises here; or a dataset yielding `(image, labels)`, read by the same rule as
    `extract` (raw images are preprocessed, a dataset with `transform=model.preprocess` is used as it is;
    docs/inputs.md).
    """
    batch_size = _check_batch_size(batch_size)
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be a tensor [n, 3, H, W], got shape {tuple(images.shape)}")
        batches = (model.preprocess(images[i:i + batch_size]) for i in range(0, len(images), batch_size))
    elif hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        if len(images) == 0:
            raise ValueError("no images to embed: the dataset is empty")
        batches = (x for x, _ in input_batches(model, images, batch_size))
    else:
        raise TypeError(f"embed_images needs an image tensor [n, 3, H, W] or a dataset, got {type(images).__name__}")
    out = [model.encode_image(x.to(model.device), normalize=True).float().cpu() for x in batches]
    if not out:
        raise ValueError("no images to embed: the gallery is empty")
    return torch.cat(out)


def input_batches(model, dataset, batch_size: int = 256) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """A dataset → batches of model inputs `(images [b, 3, H, W], {label: LongTensor [b]})`, in order.

    The same image rule as `extract` (docs/inputs.md): raw images (PIL, uint8, float in [0, 1] from a
    dataset without a transform) go through `model.preprocess`; a dataset whose transform is
    `model.preprocess` is used as it is; anything else is checked as model input."""
    from workbench.activations.sources import ImageSource

    batch_size = _check_batch_size(batch_size)
    source = ImageSource(model, dataset)
    plan = [(a, min(a + batch_size, source.n)) for a in range(0, source.n, batch_size)]
    return source.batches(plan)  # checked above, before the first batch is read


def query_prompts(queries: Queries, classes: Sequence[str], target: str) -> tuple[list[str], list[int]]:
    """(prompts, class codes) from a {class name or code: prompt} mapping or a list (one prompt per class)."""
    if isinstance(queries, (str, bytes)):
        raise TypeError("queries must be a {class: prompt} mapping or a list of prompts, not a single string")
    if isinstance(queries, Mapping):
        prompts, codes = [], []
        for key, prompt in queries.items():
            if isinstance(key, str):
                if key not in classes:
                    raise ValueError(f"query class {key!r} is not a {target!r} class; classes: {list(classes)}")
                key = classes.index(key)
            elif isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(classes):
                raise ValueError(f"query key {key!r} must be a {target!r} class name or a code in "
                                 f"0..{len(classes) - 1}")
            codes.append(key)
            prompts.append(prompt)
    else:
        prompts = list(queries)
        if len(prompts) != len(classes):
            raise ValueError(f"a list of queries needs one prompt per {target!r} class ({len(classes)}: "
                             f"{list(classes)}), got {len(prompts)}; pass a {{class: prompt}} mapping for a subset")
        codes = list(range(len(classes)))
    if not prompts:
        raise ValueError("queries is empty")
    if len(set(codes)) != len(codes):
        raise ValueError(f"two queries for the same {target!r} class: {[classes[c] for c in codes]}")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"every query must be a prompt string, got {type(bad[0]).__name__}")
    return prompts, codes


def _label_tensor(labels: Mapping, key: str, n: int, role: str) -> Tensor:
    if key not in labels:
        raise ValueError(f"labels have no key {key!r} (the {role}); they have {sorted(labels)}")
    values = torch.as_tensor(labels[key])
    if tuple(values.shape) != (n,):
        raise ValueError(f"labels[{key!r}] has shape {tuple(values.shape)}, expected ({n},): one per image")
    return values.long()


@torch.no_grad()
def retrieval_report(model, image_embeddings: Tensor, labels: Mapping, queries: Queries, target: str = "occupation",
                     groups: Sequence[str] = ("gender",), top_k: int = 100,
                     label_names: Optional[Mapping[str, Sequence[str]]] = None) -> dict[str, float]:
    """Zero-shot accuracy and retrieval fairness of text queries over an image gallery.

    image_embeddings: [n, d_embed] L2-normalised (`embed_images`); labels: {key: int [n]}.
    queries: {class name or code of `target`: prompt} or a list with one prompt per `target` class.
    groups: protected label keys; label_names: {key: class names} (default: the SynthSocial vocabulary,
    `workbench.data.vocab.LABEL_NAMES`; pass `dataset.label_names` for other datasets). The number of
    classes of each group key comes from there, so a gallery missing a group is not reported as fair.

    Returns {metric: float}:
      zero_shot_accuracy: argmax over the queries' similarities, on the images whose `target` class has a query;
      {g}_ndkl: NDKL per query over the images of that query's class in ranking order (the SISPI protocol),
        target distribution uniform over g's classes, averaged over queries;
      {g}_maxskew_at_{top_k}: MaxSkew@top_k over the whole gallery, averaged over queries.
    """
    from workbench.metrics import max_skew_at_k, ndkl, zero_shot_accuracy

    if label_names is None:
        from workbench.data.vocab import LABEL_NAMES as label_names
    if not isinstance(image_embeddings, Tensor) or image_embeddings.ndim != 2:
        raise ValueError("image_embeddings must be a tensor [n, d_embed] (from embed_images), got "
                         f"{getattr(image_embeddings, 'shape', type(image_embeddings).__name__)}")
    norms = image_embeddings.float().norm(dim=-1)
    if not torch.isfinite(norms).all() or (norms - 1).abs().max() > 1e-3:
        raise ValueError("image_embeddings must be L2-normalised (embed_images returns them so; or use "
                         "model.encode_image(x, normalize=True)); got norms in "
                         f"[{norms.min().item():.3g}, {norms.max().item():.3g}]")
    if isinstance(groups, str):
        groups = (groups,)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(image_embeddings):
        raise ValueError(f"top_k must be an integer in 1..{len(image_embeddings)} (the gallery size), got {top_k!r}")
    n = len(image_embeddings)
    for key in (target, *groups):
        if key not in label_names:
            raise ValueError(f"no class names for label {key!r}: pass label_names={{{key!r}: [...], ...}} "
                             "(e.g. dataset.label_names)")
    prompts, codes = query_prompts(queries, tuple(label_names[target]), target)
    y = _label_tensor(labels, target, n, "target")

    text = model.encode_text(prompts, normalize=True).float().cpu()
    sim = text @ image_embeddings.float().cpu().T  # [n_queries, n_images]
    codes_t = torch.tensor(codes)
    relevant = y[None, :] == codes_t[:, None]  # [n_queries, n_images]
    queried = relevant.any(0)
    if not queried.any():
        raise ValueError(f"no image has a {target!r} class that one of the queries asks for")
    # Zero-shot: the predicted class is the code of the best query; scored on images of queried classes.
    position = {c: i for i, c in enumerate(codes)}
    y_query = torch.tensor([position.get(int(v), -1) for v in y[queried]])
    report = {"zero_shot_accuracy": zero_shot_accuracy(sim.T[queried], y_query)}
    for g in groups:
        g_labels = _label_tensor(labels, g, n, "group")
        n_groups = len(label_names[g])
        report[f"{g}_ndkl"] = ndkl(sim, g_labels, n_groups=n_groups, relevant_mask=relevant)
        report[f"{g}_maxskew_at_{top_k}"] = max_skew_at_k(sim, g_labels, k=top_k, n_groups=n_groups)
    return {k: float(v) for k, v in report.items()}
