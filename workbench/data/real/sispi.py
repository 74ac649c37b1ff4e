"""SISPI (Gomez, SIGIR 2025) from a local folder: synthetic professionals balanced over gender × ethnicity."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..base import IMAGE_SUFFIXES, LabeledImageDataset, SkipReport, format_error, require_path
from ..labels import GENDERS, SISPI_ETHNICITIES, UnknownLabelError, label_index, normalize_gender

__all__ = ["SISPI", "parse_sispi_name"]

MALFORMED_NAME = "malformed file name"
# Spellings seen for the fourth ethnicity: the file names and official evaluation use "latin".
_ETHNICITY_ALIASES = {"latinx": "latin", "latino": "latin", "latina": "latin", "hispanic": "latin"}


def parse_sispi_name(file_name: str) -> tuple[str, int, int] | None:
    """``'computer programmer_102_female_black.jpg' -> ('computer programmer', gender 1, ethnicity 1)``.

    Parsed from the right: the last field is the ethnicity, then the gender, then a numeric id; all that
    precedes is the profession, so a profession may itself contain underscores. ``None`` if malformed.
    """
    fields = Path(file_name).stem.rsplit("_", 3)
    if len(fields) != 4 or not fields[0] or not fields[1].isdigit():
        return None
    profession, _, gender, ethnicity = fields
    try:
        ethnicity_index = label_index(ethnicity, SISPI_ETHNICITIES, "ethnicity", _ETHNICITY_ALIASES)
        return profession, normalize_gender(gender), ethnicity_index
    except UnknownLabelError:
        return None


class SISPI(LabeledImageDataset):
    """SISPI: ``ds[i] -> (image, {occupation, gender, ethnicity})``.

    File names are ``{profession}_{id}_{gender}_{ethnicity}.jpg`` (e.g. ``doctor_102_female_black.jpg``):
    194 professions × 256 images, 2 genders × 4 ethnicities (:data:`~workbench.data.labels.SISPI_ETHNICITIES`).
    ``occupation`` indexes ``label_names["occupation"]`` (= ``ds.professions``): the sorted professions
    found on disk, or the ``professions`` you pass, spelt as in the file names. Names that do not parse
    are skipped and counted (``strict=True`` raises).

    Args:
        root: folder with the images (searched recursively: the archive unpacks into subfolders).
        professions: the occupation vocabulary, in label order. Files of other professions are left out
            (counted in ``ds.excluded``, not a warning: you asked for a subset); a listed profession
            with no image is an error, which catches typos.
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    """

    name = "SISPI"
    layout = """\
root/                                   (subfolders are searched too)
├── doctor_102_female_black.jpg         {profession}_{id}_{gender}_{ethnicity}.jpg
├── doctor_103_male_latin.jpg           gender male/female; ethnicity asian/black/latin/white
└── ...                                 194 professions × 256 images
"""

    def __init__(
        self,
        root: str | os.PathLike,
        professions: Sequence[str] | None = None,
        *,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise format_error(self.name, f"no image files under {str(root)!r}", self.layout)

        skipped = SkipReport()
        parsed: list[tuple[Path, str, int, int]] = []
        for path in files:
            fields = parse_sispi_name(path.name)
            if fields is None:
                skipped.add(MALFORMED_NAME, path.name)
            else:
                parsed.append((path, *fields))

        found = sorted({profession for _, profession, _, _ in parsed})
        vocabulary = tuple(found if professions is None else professions)
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"professions contains duplicates: {sorted(vocabulary)}")
        absent = [name for name in vocabulary if name not in found]
        if absent:
            problem = f"no images for profession(s) {absent}; found e.g. {found[:5]}"
            raise format_error(self.name, problem, self.layout)
        index = {name: i for i, name in enumerate(vocabulary)}
        kept = [item for item in parsed if item[1] in index]
        self.excluded = len(parsed) - len(kept)

        labels = {
            "occupation": [index[profession] for _, profession, _, _ in kept],
            "gender": [gender for *_, gender, _ in kept],
            "ethnicity": [ethnicity for *_, ethnicity in kept],
        }
        self.professions = vocabulary
        super().__init__(
            [path for path, *_ in kept], labels,
            {"occupation": vocabulary, "gender": GENDERS, "ethnicity": SISPI_ETHNICITIES},
            transform=transform, strict=strict, validate=validate, skipped=skipped,
            n_candidates=len(kept) + skipped.total, progress=progress,
        )
