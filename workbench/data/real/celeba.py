"""CelebA (Liu et al., 2015) from a local folder: 40 binary attributes per face."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base import LabeledImageDataset, SkippedFilesWarning, SkipReport, format_error, read_text_file, require_path
from ..labels import BINARY, CELEBA_AGES, GENDERS

__all__ = ["CelebA"]

ATTRIBUTES_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
SPLITS = {"train": "0", "val": "1", "test": "2"}
_VALUES = {"1": 1, "-1": 0, "0": 0}  # the release uses ±1; some re-exports write 0 for "absent"


class CelebA(LabeledImageDataset):
    """CelebA: ``ds[i] -> (image, {gender, age, attr_<Name> for all 40 attributes})``.

    Labels: ``gender`` from ``Male`` (+1 -> 0 'male', -1 -> 1 'female'), ``age`` from ``Young``
    (+1 -> 0 'young', -1 -> 1 'old', :data:`~workbench.data.labels.CELEBA_AGES`) and every attribute as
    ``attr_<Name>`` (1 if present, names :data:`~workbench.data.labels.BINARY`).

    Args:
        root: folder with ``list_attr_celeba.txt`` (and ``list_eval_partition.txt`` when ``split`` is set).
        split: ``None`` (all images), ``"train"``, ``"val"`` or ``"test"`` (from ``list_eval_partition.txt``).
        image_dir: image folder (default ``root / "img_align_celeba"``).
        transform, strict, validate, progress: see :class:`~workbench.data.base.LabeledImageDataset`.
    Rows with a wrong number of fields or values other than ±1 are skipped and counted; a first-line
    image count that disagrees with the rows gives a warning (an error when ``strict``). With ``split``,
    images that ``list_eval_partition.txt`` does not assign to a split (absent, or on a malformed line)
    belong to none: a warning gives their count and a few names (an error when ``strict``).
    Both files may carry a UTF-8 byte-order mark; binary content raises a DatasetFormatError.
    """

    name = "CelebA"
    layout = """\
root/
├── list_attr_celeba.txt       line 1: image count; line 2: the 40 attribute names;
│                              then `000001.jpg -1  1  1 -1 ...` (one ±1 per attribute)
├── list_eval_partition.txt    optional, needed for split=: `000001.jpg 0` (0 train, 1 val, 2 test)
└── img_align_celeba/
    ├── 000001.jpg
    └── ...
"""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        image_dir: str | os.PathLike | None = None,
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
        validate: str = "header",
        progress: bool | None = None,
    ) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"CelebA split must be None or one of {list(SPLITS)}, got {split!r}")
        root = require_path(Path(root), self.name, "root", self.layout, folder=True)
        images = require_path(Path(image_dir) if image_dir else root / "img_align_celeba",
                              self.name, "image", self.layout, folder=True)
        skipped = SkipReport()
        attribute_names, rows = self._read_attributes(root / ATTRIBUTES_FILE, skipped, strict)
        if split is not None:
            partition = self._read_partition(root / PARTITION_FILE)
            self._report_unassigned([file for file, _ in rows if file not in partition], len(rows), split, strict)
            rows = [(file, values) for file, values in rows if partition.get(file) == SPLITS[split]]

        paths = [images / file for file, _ in rows]
        labels = {f"attr_{name}": [values[j] for _, values in rows] for j, name in enumerate(attribute_names)}
        labels = {
            "gender": [1 - male for male in labels["attr_Male"]],
            "age": [1 - young for young in labels["attr_Young"]],
            **labels,
        }
        label_names = {"gender": GENDERS, "age": CELEBA_AGES}
        label_names.update({key: BINARY for key in labels if key.startswith("attr_")})
        self.split = split
        self.attribute_names = attribute_names
        super().__init__(
            paths, labels, label_names, transform=transform, strict=strict, validate=validate,
            skipped=skipped, n_candidates=len(rows) + skipped.total, progress=progress,
        )

    def _read_attributes(
        self, path: Path, skipped: SkipReport, strict: bool
    ) -> tuple[tuple[str, ...], list[tuple[str, list[int]]]]:
        """``(attribute names, [(file, [0/1 per attribute]), ...])``; bad rows go to ``skipped``."""
        require_path(path, self.name, "attribute", self.layout)
        lines = read_text_file(path, self.name, "attribute", self.layout).splitlines()
        if len(lines) < 2 or not lines[0].strip().isdigit():
            problem = f"{path.name} must start with the image count, then the attribute names"
            raise format_error(self.name, problem, self.layout)
        names = tuple(lines[1].split())
        missing = [name for name in ("Male", "Young") if name not in names]
        if missing:
            problem = f"{path.name} lacks attribute column(s) {missing}; it has {list(names)}"
            raise format_error(self.name, problem, self.layout)

        rows = []
        for line_number, line in enumerate(lines[2:], start=3):
            fields = line.split()
            if not fields:
                continue
            values = [_VALUES.get(value) for value in fields[1:]]
            if len(values) != len(names) or None in values:
                skipped.add("malformed attribute row", f"{path.name}:{line_number}")
                continue
            rows.append((fields[0], values))
        declared, found = int(lines[0]), sum(1 for line in lines[2:] if line.strip())
        if declared != found:  # a truncated download, or a hand-made subset
            message = f"{path.name} line 1 says {declared} images but {found} rows follow"
            if strict:
                raise format_error(self.name, message + " (strict=True)", self.layout)
            warnings.warn(f"{self.name}: {message}", UserWarning, stacklevel=4)
        return names, rows

    def _read_partition(self, path: Path) -> dict[str, str]:
        """``{file: split code}`` from the well-formed lines (``file code``, code 0/1/2)."""
        require_path(path, self.name, "partition (needed for split=)", self.layout)
        rows = (line.split() for line in read_text_file(path, self.name, "partition", self.layout).splitlines())
        return {fields[0]: fields[1] for fields in rows if len(fields) == 2 and fields[1] in SPLITS.values()}

    def _report_unassigned(self, unassigned: list[str], n_rows: int, split: str, strict: bool) -> None:
        """Images in no split would silently vanish from every split: say so (strict: raise)."""
        if not unassigned:
            return
        examples = ", ".join(unassigned[:3]) + (", ..." if len(unassigned) > 3 else "")
        message = (f"{len(unassigned)} of {n_rows} images of {ATTRIBUTES_FILE} are not assigned a split by "
                   f"{PARTITION_FILE} (absent, or on a malformed line), so they are left out of split {split!r} "
                   f"(e.g. {examples})")
        fix = f"add them to {PARTITION_FILE} (`<file> 0|1|2`), or pass split=None to use every image"
        if strict:
            raise format_error(self.name, f"{message} (strict=True); {fix}", self.layout)
        warnings.warn(f"{self.name}: {message}; {fix}", SkippedFilesWarning, stacklevel=3)
