"""UTKFace (Zhang et al., 2017) from a local folder: labels are encoded in the file names."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..base import IMAGE_SUFFIXES, LabeledImageDataset, SkipReport, format_error, require_path
from ..labels import FAIRFACE_AGE_BINS, FAIRFACE_AGE_BIN_STARTS, GENDERS, UTKFACE_RACES, bin_age

__all__ = ["UTKFace", "parse_utkface_name"]

MALFORMED_NAME = "malformed file name"
_MAX_AGE = 130  # ages are 0-116 in the release; anything above is a parse accident


def parse_utkface_name(file_name: str) -> tuple[int, int, int] | None:
    """``'23_1_2_20170116174525125.jpg.chip.jpg' -> (age 23, gender 1, race 2)``; ``None`` if malformed.

    The name must have four ``_``-separated integer fields before the first dot (the aligned-and-cropped
    release appends ``.jpg.chip.jpg``), with gender in {0, 1} and race in 0..4.
    """
    fields = file_name.split(".", 1)[0].split("_")
    if len(fields) != 4 or not all(field.isdigit() for field in fields):
        return None
    age, gender, race = (int(field) for field in fields[:3])
    if gender > 1 or race >= len(UTKFACE_RACES) or age > _MAX_AGE:
        return None
    return age, gender, race


class UTKFace(LabeledImageDataset):
    """UTKFace: ``ds[i] -> (image, {gender, ethnicity, age, age_years})``.

    File names are ``{age}_{gender}_{race}_{datetime}.jpg`` (gender 0 male, 1 female; race 0-4 =
    :data:`~workbench.data.labels.UTKFACE_RACES`). A few names in the release lack a field (e.g.
    ``39_1_20170116174525125.jpg.chip.jpg``): they are skipped and counted in the warning
    (``strict=True`` raises). Labels: ``gender``, ``ethnicity``, ``age`` (bin index) and ``age_years``
    (the raw integer age, no ``label_names`` entry).

    Args:
        root: folder holding the images.
        age_bins: ``(name, first year)`` pairs in increasing order defining the ``age`` bins; default
            FairFace's nine bins (``'0-2'`` ... ``'more than 70'``) so ages compare across datasets.
            E.g. ``(("young", 0), ("old", 40))``.
        recursive: also look in subfolders (the in-the-wild release splits images into part1..part3).
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    """

    name = "UTKFace"
    layout = """\
root/
├── 1_0_0_20161219140623097.jpg.chip.jpg    {age}_{gender}_{race}_{datetime}.jpg[.chip.jpg]
├── 23_1_2_20170116174525125.jpg.chip.jpg   gender 0 male / 1 female;
│                                           race 0-4 White, Black, Asian, Indian, Others
└── ...
"""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        age_bins: Sequence[tuple[str, int]] | None = None,
        recursive: bool = False,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        bin_names, bin_starts = self._age_bins(age_bins)
        files = sorted(
            path for path in (root.rglob("*") if recursive else root.iterdir())
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            hint = "" if recursive else " (pass recursive=True if they sit in subfolders)"
            raise format_error(self.name, f"no image files in {str(root)!r}{hint}", self.layout)

        skipped = SkipReport()
        paths: list[Path] = []
        labels: dict[str, list[int]] = {"gender": [], "ethnicity": [], "age": [], "age_years": []}
        for path in files:
            parsed = parse_utkface_name(path.name)
            if parsed is None:
                skipped.add(MALFORMED_NAME, path.name)
                continue
            if parsed[0] < bin_starts[0]:
                skipped.add(f"age below the first age bin ({bin_starts[0]})", path.name)
                continue
            age, gender, race = parsed
            paths.append(path)
            labels["gender"].append(gender)
            labels["ethnicity"].append(race)
            labels["age"].append(bin_age(age, bin_starts))
            labels["age_years"].append(age)

        super().__init__(
            paths, labels, {"gender": GENDERS, "ethnicity": UTKFACE_RACES, "age": bin_names},
            transform=transform, strict=strict, validate=validate, skipped=skipped,
            n_candidates=len(files), progress=progress,
        )

    @staticmethod
    def _age_bins(age_bins: Sequence[tuple[str, int]] | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
        if age_bins is None:
            return FAIRFACE_AGE_BINS, FAIRFACE_AGE_BIN_STARTS
        names = tuple(str(name) for name, _ in age_bins)
        starts = tuple(int(start) for _, start in age_bins)
        if not starts or list(starts) != sorted(set(starts)):
            raise ValueError(
                f"age_bins must be (name, first year) pairs with strictly increasing years, got {age_bins!r}"
            )
        return names, starts
