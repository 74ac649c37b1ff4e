"""Datasets and prompt sets: the SynthSocial benchmark, real-dataset loaders, prompt sets.

Every dataset yields ``(image [3, H, W], {label_key: int})`` and exposes ``label_names``.
"""

from . import vocab
from .captions import CaptionTemplate, TEMPLATES, all_captions, mention_rates, sample_captions
from .prompts import PromptSets, prompt_sets
from .render import NoiseBank, RenderStyle, contact_sheet, render_batch
from .synthsocial import SPLITS, SynthBatch, SynthConfig, SynthSocial

from .base import DatasetFormatError, LabeledImageDataset, SkippedFilesWarning, collate_labeled, dataset_labels
from .prompt_files import PromptFileError, load_debiaslens_prompts, load_sem_prompts, load_sobit
from .real import SISPI, CaptionDataset, CelebA, FairFace, UTKFace, Waterbirds

__all__ = [
    "vocab",
    "dataset_labels",
    "CaptionTemplate",
    "TEMPLATES",
    "all_captions",
    "mention_rates",
    "sample_captions",
    "PromptSets",
    "prompt_sets",
    "NoiseBank",
    "RenderStyle",
    "contact_sheet",
    "render_batch",
    "SPLITS",
    "SynthBatch",
    "SynthConfig",
    "SynthSocial",
    "LabeledImageDataset", "collate_labeled", "DatasetFormatError", "SkippedFilesWarning",
    "FairFace", "UTKFace", "CelebA", "Waterbirds", "SISPI", "CaptionDataset",
    "load_sobit", "load_sem_prompts", "load_debiaslens_prompts", "PromptFileError",
]
