"""Loaders for real datasets in local folders (never downloaded): each yields ``(image, labels)``.

All accept ``transform`` (e.g. the model's preprocess), ``strict`` and ``validate``; see
:class:`workbench.data.base.LabeledImageDataset` for how bad files are handled.
"""
from .captions import CaptionDataset
from .celeba import CelebA
from .fairface import FairFace
from .sispi import SISPI
from .utkface import UTKFace
from .waterbirds import Waterbirds

__all__ = ["FairFace", "UTKFace", "CelebA", "Waterbirds", "SISPI", "CaptionDataset"]
