"""COCO / Flickr30K captions from Karpathy-split JSON files, for text <-> image retrieval."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..base import LabeledImageDataset, SkipReport, format_error, read_text_file, require_path

__all__ = ["CaptionDataset"]

KARPATHY_SPLITS = ("train", "restval", "val", "test")
_FLICKR_IMAGE_DIR = "flickr30k-images"  # where the Flickr30K archive unpacks


class CaptionDataset(LabeledImageDataset):
    """Images of a Karpathy split with their captions: ``ds[i] -> (image, {"image_id": int})``.

    ``image_id`` is the JSON's ``cocoid`` when present (COCO), else its ``imgid``; it is an identifier,
    not a class, so ``label_names`` is empty. Per image, ``ds.captions[i]`` lists its captions
    (``sentences[].raw``); ``ds.text_to_image`` flattens them into ``(caption, image index)`` pairs in
    that order, the ground truth of text -> image retrieval.

    Image paths are ``image_dir / filepath / filename`` (``filepath`` exists in the COCO file only).
    ``image_dir`` defaults to ``root``, or to ``root / "flickr30k-images"`` when the JSON has no
    ``filepath`` and that folder exists.

    Args:
        root: folder holding the annotation file and (by default) the images.
        annotations: the Karpathy JSON, relative to ``root`` or absolute.
        split: a Karpathy split (``"train"``, ``"restval"``, ``"val"``, ``"test"``), a collection of them
            (the usual full COCO training set is ``("train", "restval")``), or ``None`` for all.
        image_dir: override the image folder (see above).
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    Entries lacking ``filename`` / ``sentences`` / ``split`` are skipped and counted, like unreadable images.
    """

    name = "CaptionDataset"
    layout = """\
root/
├── dataset_coco.json        {"images": [{"filepath": "val2014",
│                                         "filename": "COCO_val2014_000000391895.jpg",
│                                         "split": "test", "cocoid": 391895,
│                                         "sentences": [{"raw": "A man ..."}, ...]}, ...]}
├── val2014/COCO_val2014_000000391895.jpg, ...          (COCO: image_dir / filepath / filename)
│   -- or, for Flickr30K --
├── dataset_flickr30k.json   same shape, no "filepath"
└── flickr30k-images/1000092795.jpg, ...                 (Flickr30K: image_dir / filename)
"""

    def __init__(
        self,
        root: str | os.PathLike,
        annotations: str | os.PathLike = "dataset_coco.json",
        split: str | Iterable[str] | None = "test",
        image_dir: str | os.PathLike | None = None,
        *,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        annotation_path = require_path(root / annotations, self.name, "annotation", self.layout)
        entries = self._read_entries(annotation_path)
        splits = self._splits(split, entries)
        image_root = self._image_root(root, image_dir, entries)

        skipped = SkipReport()
        paths: list[Path] = []
        image_ids: list[int] = []
        captions: list[list[str]] = []
        n_candidates = 0
        for position, entry in enumerate(entries):
            if not self._entry_is_valid(entry):
                skipped.add("malformed annotation entry", f"{annotation_path.name} images[{position}]")
                n_candidates += 1
                continue
            if splits is not None and entry["split"] not in splits:
                continue
            n_candidates += 1
            paths.append(image_root / entry.get("filepath", "") / entry["filename"])
            image_ids.append(int(entry.get("cocoid", entry.get("imgid", position))))
            captions.append([sentence["raw"].strip() for sentence in entry["sentences"]])

        self.split = split
        self.annotations = annotation_path
        super().__init__(
            paths, {"image_id": image_ids}, {}, transform=transform, strict=strict, validate=validate,
            skipped=skipped, n_candidates=n_candidates, progress=progress,
        )
        # Keep captions aligned with the images that passed validation.
        self.captions: list[list[str]] = [captions[i] for i in self.kept_indices]
        self.text_to_image: list[tuple[str, int]] = [
            (caption, index) for index, image_captions in enumerate(self.captions) for caption in image_captions
        ]

    def _read_entries(self, path: Path) -> list[Any]:
        text = read_text_file(path, self.name, "JSON", self.layout)  # BOM dropped, binary content refused
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise format_error(self.name, f"{path.name} is not valid JSON ({error})", self.layout) from error
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            problem = f"{path.name} must be a JSON object with an \"images\" list"
            raise format_error(self.name, problem, self.layout)
        return data["images"]

    def _splits(self, split: str | Iterable[str] | None, entries: list[Any]) -> set[str] | None:
        if split is None:
            return None
        wanted = {split} if isinstance(split, str) else set(split)
        present = {entry.get("split") for entry in entries if isinstance(entry, dict)}
        if not wanted & present:
            problem = f"no image has split {sorted(wanted)}; splits present: {sorted(map(str, present))}"
            raise format_error(self.name, problem, self.layout)
        return wanted

    def _image_root(self, root: Path, image_dir: str | os.PathLike | None, entries: list[Any]) -> Path:
        if image_dir is not None:
            return require_path(Path(image_dir), self.name, "image", self.layout, folder=True)
        has_filepath = any(isinstance(entry, dict) and "filepath" in entry for entry in entries)
        flickr = root / _FLICKR_IMAGE_DIR
        return flickr if not has_filepath and flickr.is_dir() else root

    @staticmethod
    def _entry_is_valid(entry: Any) -> bool:
        return (
            isinstance(entry, dict)
            and isinstance(entry.get("filename"), str) and bool(entry["filename"])
            and isinstance(entry.get("split"), str)
            and isinstance(entry.get("sentences"), list) and bool(entry["sentences"])
            and all(isinstance(s, dict) and isinstance(s.get("raw"), str) for s in entry["sentences"])
        )
