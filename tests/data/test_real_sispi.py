import pytest

from workbench.data.base import DatasetFormatError, SkippedFilesWarning
from workbench.data.real import SISPI
from workbench.data.real.sispi import parse_sispi_name


@pytest.mark.parametrize("name, expected", [
    ("doctor_102_female_black.jpg", ("doctor", 1, 1)),
    ("computer_programmer_3_male_Latinx.jpg", ("computer_programmer", 0, 2)),
    ("doctor_x_female_black.jpg", None),
    ("nurse_4_female_martian.jpg", None),
    ("nurse_female_black.jpg", None),
])
def test_parse_names_from_the_right(name, expected):
    assert parse_sispi_name(name) == expected


def test_labels_vocabulary_and_skips(sispi_root):
    with pytest.warns(SkippedFilesWarning, match=r"SISPI: skipped 2 of 6 items: 2 × malformed file name"):
        ds = SISPI(sispi_root)
    assert ds.professions == ("computer_programmer", "doctor", "nurse") == ds.label_names["occupation"]
    labels = {p.split("/")[-1]: ds[i][1] for i, p in enumerate(ds.paths)}
    assert labels == {
        "doctor_102_female_black.jpg": {"occupation": 1, "gender": 1, "ethnicity": 1},
        "doctor_7_male_latin.jpg": {"occupation": 1, "gender": 0, "ethnicity": 2},
        "nurse_1_male_asian.jpg": {"occupation": 2, "gender": 0, "ethnicity": 0},
        "computer_programmer_3_female_white.jpg": {"occupation": 0, "gender": 1, "ethnicity": 3},
    }


def test_given_professions_order_and_subset(sispi_root):
    with pytest.warns(SkippedFilesWarning):
        ds = SISPI(sispi_root, professions=["nurse", "doctor"])
    assert ds.excluded == 1
    assert sorted(ds.labels["occupation"].tolist()) == [0, 1, 1]
    with pytest.raises(DatasetFormatError, match=r"no images for profession\(s\) \['doctr'\]"):
        SISPI(sispi_root, professions=["doctr"])


def test_strict(sispi_root):
    with pytest.raises(DatasetFormatError, match="doctor_x_female_black.jpg"):
        SISPI(sispi_root, strict=True)
