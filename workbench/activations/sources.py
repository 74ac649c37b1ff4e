"""What `extract` / `extract_text` read: datasets of images and lists of prompts, checked before the forward.

The image rule (docs/inputs.md): the image tower takes the output of the model's preprocess. A dataset
either yields that (its transform is `model.preprocess`), or raw images that `extract` preprocesses itself:
PIL images, uint8 tensors, or float tensors in [0, 1] from a dataset whose `transform` is None (the
`workbench.data` convention). Anything else is taken as model inputs and checked batch by batch: the model's
input size, finite values, and values that do not look like raw [0, 1] or 0–255 pixels.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from workbench.models.preprocess import Preprocess, check_finite
from workbench.models.tokenize import check_lengths, prompt_list, unknown_words, warn_unknown_words

HASH_SAMPLES = 8  # dataset items hashed to identify a dataset's content
RAW_RANGE_FACTOR = 10  # model inputs this far beyond the preprocess's output range look like 0–255 pixels
_NO_ATTRIBUTE = object()


def _is_pil(image) -> bool:
    from PIL import Image

    return isinstance(image, Image.Image)


def _is_raw_image(image) -> bool:
    """PIL images and uint8 tensors are never model inputs: they always need the preprocess."""
    return _is_pil(image) or isinstance(image, Tensor) and image.dtype == torch.uint8


def _split_item(item, index: int) -> tuple:
    """A dataset item → (image, {key: int}); the image is a tensor [3, H, W] or a PIL image; a bare image
    item has no labels."""
    if isinstance(item, Tensor) or _is_pil(item):
        return item, {}
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and (isinstance(item[0], Tensor) or _is_pil(item[0]))
            and isinstance(item[1], Mapping)):
        raise TypeError(f"dataset item {index} should be (image, {{label: int}}) with the image a tensor [3, H, W] "
                        f"or a PIL image, got {type(item).__name__}"
                        + (f" of ({', '.join(type(x).__name__ for x in item)})" if isinstance(item, (tuple, list)) else ""))
    labels = {}
    for key, value in item[1].items():
        if isinstance(value, Tensor):
            value = value.item()
        if not hasattr(value, "__index__"):  # ints, bools, numpy integers; not floats or strings
            raise TypeError(f"label {key!r} of dataset item {index} is {value!r}; labels must be ints (class indices)")
        labels[str(key)] = int(value)
    return item[0], labels


def collate_items(items: Sequence) -> tuple[Tensor, dict[str, Tensor]]:
    """Batch dataset items: (images [b, 3, H, W], {key: LongTensor [b]})."""
    pairs = [_split_item(item, i) for i, item in enumerate(items)]
    if not all(isinstance(image, Tensor) for image, _ in pairs):
        raise TypeError("cannot batch PIL images; let extract preprocess them (the default, preprocess=None) or "
                        "give the dataset transform=model.preprocess")
    shapes = {tuple(image.shape) for image, _ in pairs}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch images of different shapes {sorted(shapes)}; give the dataset a transform "
                         "that resizes to one size (the model's preprocess)")
    keys = list(pairs[0][1])
    if any(set(labels) != set(keys) for _, labels in pairs):
        raise ValueError(f"dataset items have different label keys (e.g. {sorted(keys)}); "
                         "every item needs the same keys")
    labels = {k: torch.tensor([lab[k] for _, lab in pairs], dtype=torch.long) for k in keys}
    return torch.stack([image for image, _ in pairs]), labels


def sample_indices(n: int, k: int = HASH_SAMPLES) -> list[int]:
    """k evenly spaced indices in [0, n) (all of them when n ≤ k): the items hashed to identify a dataset."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _image_bytes(image) -> tuple[str, bytes]:
    if _is_pil(image):
        array = np.asarray(image)
        return f"PIL:{image.mode}:{array.shape}", array.tobytes()
    t = image.detach().cpu().contiguous()
    return f"{tuple(t.shape)}:{t.dtype}", t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def dataset_content_hash(dataset, k: int = HASH_SAMPLES) -> str:
    """sha256 over the length and a few evenly spaced items (image bytes + labels) of a dataset."""
    h = hashlib.sha256(f"{len(dataset)}".encode())
    for i in sample_indices(len(dataset), k):
        image, labels = _split_item(dataset[i], i)
        kind, data = _image_bytes(image)
        h.update(f"{i}:{kind}:{json.dumps(labels, sort_keys=True)}".encode())
        h.update(data)
    return "sha256:" + h.hexdigest()


class _Batches:
    """A DataLoader batch_sampler over precomputed (start, stop) row ranges."""

    def __init__(self, plan: Sequence[tuple[int, int]]):
        self.plan = plan

    def __iter__(self):
        return (list(range(a, b)) for a, b in self.plan)

    def __len__(self):
        return len(self.plan)


class _Preprocessed(Dataset):
    """`dataset` with `preprocess` applied to every image (in the DataLoader's workers); errors name the item."""

    def __init__(self, dataset, preprocess):
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, labels = _split_item(self.dataset[i], i)
        try:
            return self.preprocess(image), labels
        except (TypeError, ValueError) as e:
            raise type(e)(f"dataset item {i}: {e} (extract applies the model's preprocess to this dataset's raw "
                          "images; pass preprocess=False if its items are model inputs already)") from None


def transform_of(dataset):
    """The dataset's `transform` attribute, looking through `torch.utils.data.Subset` wrappers."""
    while isinstance(dataset, Subset) and not hasattr(dataset, "transform"):
        dataset = dataset.dataset
    return getattr(dataset, "transform", _NO_ATTRIBUTE)


def _is_models_preprocess(model, transform) -> bool:
    return transform is model.preprocess or (isinstance(model.preprocess, Preprocess)
                                             and model.preprocess.same_as(transform))


def decide_preprocess(model, dataset, image, preprocess: Optional[bool]) -> bool:
    """Whether extract applies `model.preprocess` to the dataset's items (see the module docstring).

    `image` is the dataset's first image; `preprocess` the caller's choice (None: decide)."""
    if preprocess not in (None, True, False):
        raise ValueError(f"preprocess must be None (decide from the dataset), True or False, got {preprocess!r}")
    transform = transform_of(dataset)
    if isinstance(transform, Preprocess) and not _is_models_preprocess(model, transform):
        raise ValueError(f"the dataset's transform is another model's preprocess ({transform!r}); this model needs "
                         f"{model.preprocess!r}: give the dataset transform=model.preprocess")
    if preprocess is False:
        if _is_raw_image(image):
            kind = "PIL images" if _is_pil(image) else "uint8 tensors"
            raise TypeError(f"preprocess=False says the dataset yields model inputs, but its items are {kind}; "
                            "leave preprocess=None so extract applies the model's preprocess")
        return False
    if preprocess is True:
        if _is_models_preprocess(model, transform):
            raise ValueError("preprocess=True would apply the model's preprocess twice: the dataset's transform "
                             "is model.preprocess already; leave preprocess=None")
        return True
    return _is_raw_image(image) or transform is None  # workbench.data datasets without a transform yield [0, 1]


def check_model_inputs(model, images: Tensor, start: int, trusted: bool) -> None:
    """Check a batch of dataset rows [start, start + b) that goes to the image tower as it is.

    Always: the model's input shape and finite values. Unless `trusted` (the dataset's transform is the
    model's preprocess, or preprocess=False): values that look like raw [0, 1] or 0–255 pixels."""
    fix = ("give the dataset transform=model.preprocess, or pass preprocess=True to let extract apply it "
           "(to raw images: PIL, uint8, or float in [0, 1])")
    rows = f"dataset items [{start}, {start + images.shape[0]})"
    expected = [3, *model.visual.cfg.image_size]
    if not images.is_floating_point() or list(images.shape[1:]) != expected:
        raise ValueError(f"{rows} are {images.dtype} images of shape {list(images.shape[1:])} but the model takes "
                         f"preprocessed float images {expected}: {fix}")
    try:
        check_finite(images, rows)
    except ValueError as e:
        bad = (~torch.isfinite(images.reshape(images.shape[0], -1))).any(1).nonzero().flatten()
        raise ValueError(f"{e} NaN/inf at dataset item(s) {(bad + start).tolist()[:10]}.") from None
    if trusted:
        return
    lo, hi = (float(v) for v in torch.aminmax(images))
    if 0 <= lo and hi <= 1:
        raise ValueError(f"{rows} look like raw images in [0, 1] that never went through the model's preprocess "
                         f"(values in [{lo:.3g}, {hi:.3g}]): {fix}. If they are model inputs already, pass "
                         "preprocess=False")
    if isinstance(model.preprocess, Preprocess):
        out_lo, out_hi = model.preprocess.output_range()
        if hi > RAW_RANGE_FACTOR * out_hi or lo < RAW_RANGE_FACTOR * out_lo:
            raise ValueError(f"{rows} hold values in [{lo:.3g}, {hi:.3g}], far outside what the model's preprocess "
                             f"produces ([{out_lo:.2f}, {out_hi:.2f}]); 0–255 pixel values? {fix}. If they are "
                             "model inputs already, pass preprocess=False")


class ImageSource:
    """A dataset of (image, {key: int}) items, read through a DataLoader, preprocessed or checked (see module)."""

    tower, unit = "image", "img"

    def __init__(self, model, dataset, num_workers: int = 0, dataset_id: Optional[str] = None,
                 preprocess: Optional[bool] = None):
        try:
            self.n = len(dataset)
        except TypeError:
            raise TypeError(f"dataset must be a sized, indexable dataset (ds[i] -> (image, labels)); "
                            f"got {type(dataset).__name__} without len()") from None
        if self.n == 0:
            raise ValueError("the dataset is empty; nothing to extract")
        self.model, self.dataset, self.num_workers, self.dataset_id = model, dataset, num_workers, dataset_id
        image, _ = _split_item(dataset[0], 0)
        self.apply_preprocess = decide_preprocess(model, dataset, image, preprocess)
        self.trusted = preprocess is False or _is_models_preprocess(model, transform_of(dataset))
        self._loaded = _Preprocessed(dataset, model.preprocess) if self.apply_preprocess else dataset

    def describe(self) -> dict:
        names = getattr(self.dataset, "label_names", None) or {}
        out = {"class": type(self.dataset).__name__, "len": self.n,
               "id": self.dataset_id or dataset_content_hash(self.dataset),
               "label_names": {str(k): [str(c) for c in v] for k, v in names.items()}}
        if self.apply_preprocess:  # the activations depend on it: part of the cache's identity
            out["preprocessed_by_extract"] = repr(self.model.preprocess)
        return out

    def _checked(self, images: Tensor, labels: dict, start: int) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.apply_preprocess:
            check_model_inputs(self.model, images, start, self.trusted)
        return images, labels

    def first(self) -> tuple[Tensor, dict[str, Tensor]]:
        return self._checked(*collate_items([self._loaded[0]]), 0)

    def batches(self, plan: Sequence[tuple[int, int]]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        from torch.utils.data import DataLoader

        loader = DataLoader(self._loaded, batch_sampler=_Batches(plan), num_workers=self.num_workers,
                            collate_fn=collate_items)
        for (start, _), (images, labels) in zip(plan, loader):
            yield self._checked(images, labels, start)


class TextSource:
    """A list of prompts, checked once (types, length, unknown words), then tokenized batch by batch."""

    tower, unit = "text", "prompt"

    def __init__(self, model, prompts: Sequence[str], dataset_id: Optional[str] = None, truncate: bool = False):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer; extract_text needs one to tokenize the prompts")
        self.prompts = prompt_list(prompts, "prompts")
        self.model, self.n, self.dataset_id, self.truncate = model, len(self.prompts), dataset_id, truncate
        self.n_ctx = model.text.cfg.n_ctx
        # Check every prompt now, so an overlong one fails before any forward pass and warnings come once.
        check_lengths(model.tokenizer, self.prompts, self.n_ctx, truncate=truncate)
        warn_unknown_words(unknown_words(model.tokenizer, self.prompts, model.text.unknown_token_mask()),
                           self.n)

    def describe(self) -> dict:
        digest = "sha256:" + hashlib.sha256(json.dumps(self.prompts).encode()).hexdigest()
        return {"class": "prompts", "len": self.n, "id": self.dataset_id or digest, "label_names": {}}

    def _tokens(self, a: int, b: int) -> Tensor:
        tokens = self.model.tokenizer(self.prompts[a:b], context_length=self.n_ctx)
        return torch.as_tensor(tokens, dtype=torch.long).to(self.model.device)

    def first(self) -> tuple[Tensor, dict[str, Tensor]]:
        return self._tokens(0, 1), {}

    def batches(self, plan: Sequence[tuple[int, int]]) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for a, b in plan:
            yield self._tokens(a, b), {}

