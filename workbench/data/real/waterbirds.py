"""Waterbirds (Sagawa et al., 2020) from a local folder: bird type vs. background place."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base import LabeledImageDataset, SkipReport, read_csv_rows, require_path
from ..labels import WATERBIRDS_PLACES, WATERBIRDS_TARGETS

__all__ = ["Waterbirds"]

SPLITS = {"train": "0", "val": "1", "test": "2"}
_COLUMNS = ("img_id", "img_filename", "y", "split", "place", "place_filename")


class Waterbirds(LabeledImageDataset):
    """Waterbirds: ``ds[i] -> (image, {target, spurious})``.

    Labels: ``target`` = ``y`` (:data:`~workbench.data.labels.WATERBIRDS_TARGETS`: 0 landbird,
    1 waterbird) and ``spurious`` = ``place`` (:data:`~workbench.data.labels.WATERBIRDS_PLACES`:
    0 land, 1 water). Worst-group accuracy groups by (target, spurious).

    Args:
        root: folder with ``metadata.csv``; ``img_filename`` paths are relative to it.
        split: ``"train"``, ``"val"``, ``"test"`` (``split`` column 0/1/2) or ``None`` for all.
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    Rows whose ``y``/``place`` is not 0/1 or whose ``split`` is not 0/1/2 are skipped and counted.
    """

    name = "Waterbirds"
    layout = """\
root/
├── metadata.csv     columns: img_id,img_filename,y,split,place,place_filename
│                    y 0 landbird / 1 waterbird; split 0 train / 1 val / 2 test; place 0 land / 1 water
├── 001.Black_footed_Albatross/
│   └── Black_Footed_Albatross_0046_18.jpg    (img_filename, relative to root)
└── ...
"""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = "train",
        *,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"Waterbirds split must be None or one of {list(SPLITS)}, got {split!r}")
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        rows = read_csv_rows(root / "metadata.csv", _COLUMNS, self.name, self.layout)

        skipped = SkipReport()
        paths: list[Path] = []
        labels: dict[str, list[int]] = {"target": [], "spurious": []}
        n_candidates = 0
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            valid = row["split"] in SPLITS.values() and row["y"] in ("0", "1") and row["place"] in ("0", "1")
            if not valid or not row["img_filename"]:
                skipped.add("invalid CSV row", f"metadata.csv:{line}")
                n_candidates += 1
                continue
            if split is not None and row["split"] != SPLITS[split]:
                continue
            n_candidates += 1
            paths.append(root / row["img_filename"])
            labels["target"].append(int(row["y"]))
            labels["spurious"].append(int(row["place"]))

        self.split = split
        super().__init__(
            paths, labels, {"target": WATERBIRDS_TARGETS, "spurious": WATERBIRDS_PLACES},
            transform=transform, strict=strict, validate=validate, skipped=skipped,
            n_candidates=n_candidates, progress=progress,
        )
