"""Image preprocessing that accepts PIL images and float tensors alike."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class Preprocess:
    """Model preprocessing.

    - PIL image → open_clip's eval transform (resize, centre crop, to tensor, normalise) → [3, H, W].
    - float tensor in [0, 1], [3, h, w] or [b, 3, h, w] → resized (bicubic, antialiased) to the model's
      size if needed, then normalised with the model's mean/std. Synthetic datasets yield such tensors.
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

    def __call__(self, image) -> Tensor:
        if not isinstance(image, Tensor):
            return self._pil()(image)
        if image.ndim not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"expected an image tensor [3, H, W] or [b, 3, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"expected a float image tensor with values in [0, 1], got dtype {image.dtype}")
        x = image if image.ndim == 4 else image[None]
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
        return x if image.ndim == 4 else x[0]

    def __repr__(self) -> str:
        return f"Preprocess(size={self.image_size}, mean={self.mean}, std={self.std})"
