"""N-TIDE data: images for the student, frozen CLIP image features for the teacher, labels, and the checks that
must pass before any training starts.

    split = prepare_split(model, dataset, ("occupation", "gender"), image_size=64)
    split.images    # uint8 [n, 3, s, s]: what the student sees
    split.clip      # float32 [n, d_embed]: normalize(encode_image(x)), computed once (the teacher's tower is frozen)
    split.labels    # {key: int64 [n]}

The CLIP features come from `workbench.activations.extract` at `hook_image_embed` (one forward pass per batch),
so the teacher's image tower runs once per image, not once per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Split", "prepare_split", "check_task"]


@dataclass
class Split:
    """One split in memory: student images uint8 [n, 3, s, s], CLIP features [n, d_embed] (L2-normalised),
    labels {key: int64 [n]}, label_names {key: tuple of class names}."""

    images: Tensor
    clip: Tensor
    labels: dict
    label_names: dict
    description: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"Split(n={len(self)}, images={tuple(self.images.shape)} uint8, clip={tuple(self.clip.shape)}, "
                f"labels={sorted(self.labels)}, {self.description})")


class _Images(torch.utils.data.Dataset):
    """uint8 images [n, 3, H, W] and labels as a dataset, so `extract` preprocesses them like any raw image."""

    def __init__(self, images: Tensor, labels: dict, label_names: dict):
        self.images, self.labels, self.label_names = images, labels, label_names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], {k: int(v[i]) for k, v in self.labels.items()}


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _resize(x: Tensor, size: int) -> Tensor:
    """float [b, 3, H, W] in [0, 1] → [b, 3, size, size] (antialiased bilinear; identity when already that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _student_images(dataset, size: int, keys, progress: bool):
    """Every item of a dataset → (uint8 [n, 3, size, size], {key: int64 [n]})."""
    from tqdm.auto import tqdm

    from workbench.data.base import pil_to_tensor

    images = torch.empty(len(dataset), 3, size, size, dtype=torch.uint8)
    labels = {k: torch.empty(len(dataset), dtype=torch.long) for k in keys}
    for i in tqdm(range(len(dataset)), desc="student images", disable=not progress, leave=False):
        image, item_labels = dataset[i]
        x = image if isinstance(image, Tensor) else pil_to_tensor(image)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"item {i} of the dataset is not an RGB image [3, H, W] (got shape {tuple(x.shape)})")
        images[i] = _to_uint8(_resize(x[None], size)[0])
        for k in keys:
            labels[k][i] = int(item_labels[k])
    return images, labels


def prepare_split(model, dataset, keys, *, image_size: int = 64, batch_size: int = 128, progress: bool = True,
                  description: str = "") -> Split:
    """Student images, CLIP features and the `keys` labels of every item of `dataset` (see module docstring).

    SynthSocial is rendered once in memory and fed to `extract` from there; other datasets are read twice
    (once by `extract` at the model's resolution, once resized to `image_size` for the student)."""
    from workbench.activations import extract
    from workbench.data import SynthSocial

    if len(dataset) == 0:
        raise ValueError(f"the {description or 'dataset'} is empty")
    names = dict(getattr(dataset, "label_names", {}) or {})
    keys = tuple(keys)
    if isinstance(dataset, SynthSocial):
        x, all_labels = dataset.tensors()
        native = _to_uint8(x)
        del x
        labels = {k: all_labels[k].long() for k in keys}
        source = _Images(native, labels, names)
        images = _to_uint8(_resize(native.float() / 255, image_size)) if native.shape[-1] != image_size else native
    else:
        images, labels = _student_images(dataset, image_size, keys, progress)
        source = dataset
    store = extract(model, source, "hook_image_embed", batch_size=batch_size, progress=progress)
    for k in keys:
        if not torch.equal(store.labels[k].long().cpu(), labels[k]):
            raise RuntimeError(f"the dataset returned different {k!r} labels on two reads; N-TIDE needs a dataset "
                               "whose items do not change between reads")
    clip = F.normalize(store["hook_image_embed"].float().cpu(), dim=-1)
    return Split(images, clip, labels, names, description)


def check_task(train: Split, test: Split, target: str, group: str, undefined: str = "raise") -> dict:
    """Refuse, before any training, a task that cannot be trained or scored; returns the task:
    {n_classes, classes (target codes present in test), class_names, groups (group codes in test), group_names}.

    Checks: target ≠ group; class codes inside the class list; every class of the test split seen in training;
    at least two groups in the test split; every (class, group) cell of the test split non-empty unless
    `undefined` is "skip" or "zero" (the fairness gaps need a TPR per class and group)."""
    if target == group:
        raise ValueError(f"--target and --group are both {target!r}; the protected group must be another label")
    names = train.label_names or test.label_names
    class_names = tuple(names.get(target, ()))
    group_names = tuple(names.get(group, ()))
    y_train, y_test = train.labels[target], test.labels[target]
    n_classes = len(class_names) or int(max(y_train.max(), y_test.max())) + 1
    for what, y in (("training", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"the {what} labels of {target!r} hold class code {int(y.max())}, outside the "
                             f"{n_classes} classes {list(class_names)}; the class list and the labels disagree")
    seen = set(y_train.tolist())
    classes = sorted(set(y_test.tolist()))
    unseen = [c for c in classes if c not in seen]
    if unseen:
        shown = [class_names[c] if c < len(class_names) else c for c in unseen]
        raise ValueError(f"class(es) {shown} of {target!r} occur in the test split but have no training image; "
                         "the classifier could never predict them. Use more training images or another --target")
    if len(seen) < 2:
        raise ValueError(f"the training split holds a single class of {target!r}; a classifier needs at least two")
    g_test = test.labels[group]
    groups = sorted(set(g_test.tolist()))
    if len(groups) < 2:
        raise ValueError(f"the test split holds a single {group!r} group ({_name(group_names, groups[0])}); the "
                         "fairness gaps compare at least two groups: use a test split with both/all groups")
    empty = [(c, g) for c in classes for g in groups if not bool(((y_test == c) & (g_test == g)).any())]
    if empty and undefined == "raise":
        cells = ", ".join(f"{_name(class_names, c)} × {_name(group_names, g)}" for c, g in empty[:5])
        raise ValueError(f"{len(empty)} (class × group) cell(s) of the test split are empty, e.g. {cells}: the "
                         "true-positive rate of a class within a group without any of its images is undefined. "
                         "Use a test split with every cell, or pass undefined='skip' (leave such groups out of "
                         "that class's gap) or undefined='zero' (count the rate as 0, the reference code)")
    if undefined not in ("raise", "skip", "zero"):
        raise ValueError(f"undefined must be 'raise', 'skip' or 'zero', got {undefined!r}")
    return {"n_classes": n_classes, "classes": classes, "class_names": list(class_names), "groups": groups,
            "group_names": list(group_names)}


def _name(names, code: int) -> str:
    return repr(names[code]) if code < len(names) else str(code)
