import pytest

from workbench.data.labels import (
    FAIRFACE_AGE_BINS, FAIRFACE_RACES, GENDERS, LABEL_KEYS, UnknownLabelError, bin_age, canonical, label_index,
    normalize_gender,
)


def test_shared_vocabulary():
    assert GENDERS == ("male", "female")
    assert set(LABEL_KEYS) == {"gender", "ethnicity", "age", "occupation", "scene", "target", "spurious"}
    assert len(FAIRFACE_RACES) == 7 and len(FAIRFACE_AGE_BINS) == 9


@pytest.mark.parametrize("raw, expected", [("Male", 0), ("male", 0), ("M", 0), (" man ", 0), ("Female", 1), ("f", 1), ("WOMAN", 1)])
def test_normalize_gender(raw, expected):
    assert normalize_gender(raw) == expected


def test_unknown_values_name_the_key_and_the_choices():
    with pytest.raises(UnknownLabelError, match=r"unknown gender value 'x'"):
        normalize_gender("x")
    with pytest.raises(UnknownLabelError, match=r"unknown race value 'Martian'; expected one of \['White'"):
        label_index("Martian", FAIRFACE_RACES, "race")


def test_label_index_ignores_case_spaces_underscores_and_hyphens():
    assert canonical("  East_Asian ") == "east asian"
    assert label_index("east-asian", FAIRFACE_RACES, "race") == 3
    assert label_index("Latino Hispanic", FAIRFACE_RACES, "race") == 2
    assert label_index("latinx", ("asian", "latin"), "ethnicity", aliases={"latinx": "latin"}) == 1


@pytest.mark.parametrize("age, expected", [(0, 0), (2, 0), (3, 1), (9, 1), (10, 2), (23, 3), (69, 7), (70, 8), (101, 8)])
def test_bin_age_uses_inclusive_lower_bounds(age, expected):
    assert bin_age(age) == expected


def test_bin_age_custom_bins_and_out_of_range():
    assert [bin_age(a, (18, 40)) for a in (18, 39, 40)] == [0, 0, 1]
    with pytest.raises(UnknownLabelError, match="below the first bin"):
        bin_age(5, (18, 40))
