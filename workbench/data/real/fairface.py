"""FairFace (Kärkkäinen & Joo, 2021) from a local folder: face crops labelled with gender, race and age bin."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base import LabeledImageDataset, SkipReport, read_csv_rows, require_path
from ..labels import (
    FAIRFACE_AGE_BINS, FAIRFACE_RACES, GENDERS, BINARY, UnknownLabelError, label_index, normalize_gender,
)

__all__ = ["FairFace"]

_COLUMNS = ("file", "age", "gender", "race")  # service_test is optional: older CSVs lack it


class FairFace(LabeledImageDataset):
    """FairFace ``train`` or ``val`` split: ``ds[i] -> (image, {gender, ethnicity, age[, service_test]})``.

    Labels: ``gender`` (:data:`~workbench.data.labels.GENDERS`), ``ethnicity`` (the 7
    :data:`~workbench.data.labels.FAIRFACE_RACES`), ``age`` (the 9
    :data:`~workbench.data.labels.FAIRFACE_AGE_BINS`) and, when the CSV has it, ``service_test``
    (0/1: FairFace's balanced service-test subset).

    Args:
        root: folder with ``fairface_label_{split}.csv``.
        split: ``"train"`` or ``"val"``.
        image_dir: folder the CSV's ``file`` paths are relative to (default ``root``; e.g.
            ``root / "fairface-img-margin125-trainval"`` for the 1.25-margin crops).
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    Rows with an unknown gender/race/age value or an empty file name are skipped and counted.
    """

    name = "FairFace"
    layout = """\
root/
├── fairface_label_train.csv    columns: file,age,gender,race,service_test
├── fairface_label_val.csv      e.g. train/1.jpg,50-59,Male,East Asian,True
├── train/1.jpg, 2.jpg, ...     paths in the `file` column, relative to root (or to image_dir)
└── val/1.jpg, ...
"""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        image_dir: str | os.PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"FairFace split must be 'train' or 'val', got {split!r}")
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        image_root = Path(image_dir) if image_dir else root
        require_path(image_root, self.name, "image", self.layout, folder=True)
        csv_path = root / f"fairface_label_{split}.csv"
        rows = read_csv_rows(csv_path, _COLUMNS, self.name, self.layout)
        has_service_test = bool(rows) and "service_test" in rows[0]

        skipped = SkipReport()
        paths: list[Path] = []
        labels: dict[str, list[int]] = {"gender": [], "ethnicity": [], "age": []}
        if has_service_test:
            labels["service_test"] = []
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            try:
                if not row["file"]:
                    raise UnknownLabelError("empty file name")
                parsed = {
                    "gender": normalize_gender(row["gender"]),
                    "ethnicity": label_index(row["race"], FAIRFACE_RACES, "race"),
                    "age": label_index(row["age"], FAIRFACE_AGE_BINS, "age"),
                }
                if has_service_test:
                    parsed["service_test"] = label_index(row["service_test"], ("false", "true"), "service_test")
            except UnknownLabelError as error:
                skipped.add("invalid CSV row", f"{csv_path.name}:{line} ({error})")
                continue
            paths.append(image_root / row["file"])
            for key, value in parsed.items():
                labels[key].append(value)

        label_names = {"gender": GENDERS, "ethnicity": FAIRFACE_RACES, "age": FAIRFACE_AGE_BINS}
        if has_service_test:
            label_names["service_test"] = BINARY
        self.split = split
        super().__init__(
            paths, labels, label_names, transform=transform, strict=strict, validate=validate,
            skipped=skipped, n_candidates=len(rows), progress=progress,
        )
