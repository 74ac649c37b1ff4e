"""Image preprocessing: raw images (PIL, uint8, float in [0, 1]) → the model's normalised input.

One rule for images (docs/inputs.md): the image tower takes the output of `model.preprocess`; raw images
go through `model.preprocess` first. It refuses what would give meaningless activations without a word:
NaN/inf pixels, float values outside [0, 1] (0–255 images, or images normalised already).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RANGE_TOLERANCE = 1e-4  # float rounding in a user's own conversion to [0, 1] (e.g. x / 255 in fp16)


def check_finite(x: Tensor, what: str = "images") -> None:
    """Raise a ValueError if `x` holds NaN or inf.

    One sum decides (NaN and inf propagate through it): on CPU it is ~100× cheaper than
    `torch.isfinite(x).all()`, which builds a bool tensor first (benchmarks/bench_input_checks.py).
    Only a non-finite sum — NaN/inf present, or an overflow of huge finite values — pays for the exact check.
    """
    if not x.is_floating_point():
        return
    total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    if not bool(torch.isfinite(total)) and not bool(torch.isfinite(x).all()):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        bad_items = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum()) if x.ndim == 4 else 1
        raise ValueError(
            f"{what} contain {nan} NaN and {inf} inf values ({bad_items} of {x.shape[0] if x.ndim == 4 else 1} "
            "images); they would make every activation NaN. Fix or drop those images before running the model."
        )


def _is_pil(image) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with open_clip
        return False
    return isinstance(image, Image.Image)


def _describe(obj) -> str:
    if isinstance(obj, Tensor):
        return f"a {obj.dtype} tensor of shape {list(obj.shape)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


class Preprocess:
    """The model's preprocessing: raw images → normalised input for the image tower.

    Accepts
      - a PIL image → open_clip's eval transform (resize shortest side, centre crop, normalise) → [3, H, W];
      - a list/tuple of PIL images (any sizes) and/or image tensors → each preprocessed, stacked → [b, 3, H, W];
      - a uint8 tensor [3, h, w] or [b, 3, h, w] (0–255) → divided by 255, then as a float tensor;
      - a float tensor [3, h, w] or [b, 3, h, w] with values in [0, 1] → resized (bicubic, antialiased) to
        the model's size when needed, then normalised with the model's mean/std.
    Raises ValueError for NaN/inf pixels and float values outside [0, 1] (the message says whether they
    look like 0–255 values or an image normalised already), TypeError for anything else.
    """

    def __init__(self, image_size: Sequence[int], mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, pil_transform: Optional[Callable] = None):
        self.image_size = tuple(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self._pil_transform = pil_transform

    def _pil(self):
        if self._pil_transform is None:
            from open_clip.transform import image_transform

            self._pil_transform = image_transform(self.image_size, is_train=False, mean=self.mean, std=self.std)
        return self._pil_transform

    def output_range(self) -> tuple[float, float]:
        """(lowest, highest) value a preprocessed image can hold: a [0, 1] pixel after (x − mean) / std."""
        return (min(-m / s for m, s in zip(self.mean, self.std)),
                max((1 - m) / s for m, s in zip(self.mean, self.std)))

    def same_as(self, other) -> bool:
        """Whether `other` is a Preprocess producing the same inputs (size, mean, std)."""
        return isinstance(other, Preprocess) and (other.image_size, other.mean, other.std) == (
            self.image_size, self.mean, self.std)

    def __call__(self, image) -> Tensor:
        if _is_pil(image):
            return self._pil()(image)
        if isinstance(image, (list, tuple)):
            return self._many(image)
        if not isinstance(image, Tensor):
            raise TypeError(
                f"preprocess takes a PIL image, a list of PIL images, or an image tensor [3, H, W] / "
                f"[b, 3, H, W] (uint8 0–255 or float in [0, 1]); got {_describe(image)}. A numpy array "
                "[H, W, 3]: wrap it with PIL.Image.fromarray(array)"
            )
        return self._tensor(image)

    def _many(self, images: Sequence) -> Tensor:
        if not images:
            raise ValueError("preprocess got an empty list of images")
        out = []
        for i, image in enumerate(images):
            if not (_is_pil(image) or isinstance(image, Tensor) and image.ndim == 3):
                raise TypeError(f"preprocess got a list whose item {i} is {_describe(image)}; a list must hold "
                                "PIL images or image tensors [3, H, W]")
            try:
                out.append(self(image))
            except ValueError as e:
                raise ValueError(f"image {i} of the list: {e}") from None
        return torch.stack(out)

    def _tensor(self, image: Tensor) -> Tensor:
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"expected an RGB image tensor [3, H, W] or [b, 3, H, W], got shape {list(image.shape)}"
                             + ("; channels last? use image.permute(2, 0, 1)" if image.shape[-1] == 3 else ""))
        if image.dtype == torch.uint8:
            image = image.float() / 255
        elif not image.is_floating_point():
            raise ValueError(f"expected a uint8 (0–255) or float ([0, 1]) image tensor, got dtype {image.dtype}")
        check_finite(image, "the images given to preprocess")
        lo, hi = torch.aminmax(image) if image.numel() else (torch.tensor(0.0), torch.tensor(0.0))
        lo, hi = float(lo), float(hi)
        if lo < -RANGE_TOLERANCE:
            raise ValueError(
                f"preprocess takes float images with values in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: negative "
                "values look like an image that was normalised already; pass the raw image, or give an already "
                "preprocessed batch to the model directly"
            )
        if hi > 1 + RANGE_TOLERANCE:
            hint = ("looks like 0–255 pixel values: divide by 255 or pass a uint8 tensor" if hi <= 255
                    else "values above 255 are no pixel values")
            raise ValueError(f"preprocess takes float images with values in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: "
                             f"{hint}")
        x = image if image.ndim == 4 else image[None]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
        return x if image.ndim == 4 else x[0]

    def __repr__(self) -> str:
        return f"Preprocess(size={self.image_size}, mean={self.mean}, std={self.std})"
