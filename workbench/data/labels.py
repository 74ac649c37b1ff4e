"""The shared label vocabulary of ``workbench.data`` and helpers that map raw strings onto it.

Every dataset yields ``labels: dict[str, int]`` whose keys come from :data:`LABEL_KEYS` (plus
dataset-specific extras such as CelebA's ``attr_<Name>``); ``ds.label_names[key]`` names the classes.
Class names of ``gender`` are the same everywhere (:data:`GENDERS`); those of ``ethnicity`` and ``age``
depend on how each dataset was annotated, so they live here under the dataset's name.
"""
from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

__all__ = [
    "LABEL_KEYS",
    "GENDERS",
    "FAIRFACE_RACES",
    "FAIRFACE_AGE_BINS",
    "FAIRFACE_AGE_BIN_STARTS",
    "UTKFACE_RACES",
    "SISPI_ETHNICITIES",
    "CELEBA_AGES",
    "WATERBIRDS_TARGETS",
    "WATERBIRDS_PLACES",
    "BINARY",
    "UnknownLabelError",
    "canonical",
    "label_index",
    "normalize_gender",
    "bin_age",
]

LABEL_KEYS: dict[str, str] = {
    "gender": "perceived gender; names always GENDERS = ('male', 'female'), index 0 is male",
    "ethnicity": "race / ethnicity; class names are dataset-specific (e.g. FAIRFACE_RACES, UTKFACE_RACES)",
    "age": "binned age; names are dataset-specific (FAIRFACE_AGE_BINS, or CELEBA_AGES = ('young', 'old'))",
    "occupation": "profession depicted (SISPI; the synthetic benchmark)",
    "scene": "scene or background category (the synthetic benchmark)",
    "target": "the class a classifier should predict (Waterbirds: WATERBIRDS_TARGETS)",
    "spurious": "a nuisance attribute correlated with target (Waterbirds: WATERBIRDS_PLACES)",
}

GENDERS: tuple[str, ...] = ("male", "female")

# FairFace's own spellings, so CSV values map one to one.
FAIRFACE_RACES: tuple[str, ...] = (
    "White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern",
)
FAIRFACE_AGE_BINS: tuple[str, ...] = (
    "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70",
)
# Lower bound (years, inclusive) of each FAIRFACE_AGE_BINS entry; used to bin integer ages (UTKFace).
FAIRFACE_AGE_BIN_STARTS: tuple[int, ...] = (0, 3, 10, 20, 30, 40, 50, 60, 70)

UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
# SISPI file names spell these in lower case; the official evaluation uses "latin" (the site says Latinx).
SISPI_ETHNICITIES: tuple[str, ...] = ("asian", "black", "latin", "white")
CELEBA_AGES: tuple[str, ...] = ("young", "old")
WATERBIRDS_TARGETS: tuple[str, ...] = ("landbird", "waterbird")
WATERBIRDS_PLACES: tuple[str, ...] = ("land", "water")
BINARY: tuple[str, ...] = ("no", "yes")  # names of 0/1 attributes such as CelebA's attr_<Name>

_GENDER_ALIASES = {
    "male": 0, "m": 0, "man": 0, "men": 0, "boy": 0,
    "female": 1, "f": 1, "woman": 1, "women": 1, "girl": 1,
}


class UnknownLabelError(ValueError):
    """A raw label value is not in the expected vocabulary."""


def canonical(raw: str) -> str:
    """Case-, space-, underscore- and hyphen-insensitive form: ``'East_Asian' -> 'east asian'``."""
    return " ".join(str(raw).replace("_", " ").replace("-", " ").split()).casefold()


def label_index(raw: str, names: Sequence[str], key: str, aliases: Mapping[str, str] | None = None) -> int:
    """Index of ``raw`` in ``names``, matching :func:`canonical` forms; ``aliases`` maps extra spellings to a name.

    >>> label_index("east_asian", FAIRFACE_RACES, "ethnicity")
    3
    """
    lookup = {canonical(name): i for i, name in enumerate(names)}
    for alias, name in (aliases or {}).items():
        lookup[canonical(alias)] = lookup[canonical(name)]
    try:
        return lookup[canonical(raw)]
    except KeyError:
        raise UnknownLabelError(f"unknown {key} value {raw!r}; expected one of {list(names)}") from None


def normalize_gender(raw: str) -> int:
    """``'Male' / 'male' / 'M' / 'man' -> 0``, ``'Female' / 'F' / 'woman' -> 1`` (index into :data:`GENDERS`)."""
    try:
        return _GENDER_ALIASES[canonical(raw)]
    except KeyError:
        raise UnknownLabelError(
            f"unknown gender value {raw!r}; expected one of {sorted(_GENDER_ALIASES)} (any case)"
        ) from None


def bin_age(age: int, starts: Sequence[int] = FAIRFACE_AGE_BIN_STARTS) -> int:
    """Index of the bin holding ``age`` years, bins given by their inclusive lower bounds ``starts``.

    >>> bin_age(23)  # FairFace bins: '20-29'
    3
    """
    if age < starts[0]:
        raise UnknownLabelError(f"age {age} is below the first bin, which starts at {starts[0]}")
    return bisect.bisect_right(starts, age) - 1
