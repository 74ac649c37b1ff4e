import pytest

from workbench.data.base import DatasetFormatError, SkippedFilesWarning
from workbench.data.real import UTKFace
from workbench.data.real.utkface import parse_utkface_name


@pytest.mark.parametrize("name, expected", [
    ("23_1_2_20170116174525125.jpg.chip.jpg", (23, 1, 2)),
    ("1_0_0_20161219140623097.jpg", (1, 0, 0)),
    ("39_1_20170116174525125.jpg.chip.jpg", None),  # lacks the race field (as in the release)
    ("23_2_0_20170116174525125.jpg", None),  # gender must be 0/1
    ("23_1_5_20170116174525125.jpg", None),  # race must be 0-4
    ("portrait.jpg", None),
])
def test_parse_names(name, expected):
    assert parse_utkface_name(name) == expected


def test_labels_from_file_names_and_skips_counted(utkface_root):
    with pytest.warns(SkippedFilesWarning, match=r"UTKFace: skipped 3 of 6 items: 2 × malformed file name .*39_1_2017.*1 × unreadable"):
        ds = UTKFace(utkface_root)
    by_age = sorted((labels["age_years"], labels) for _, labels in (ds[i] for i in range(len(ds))))
    assert [labels for _, labels in by_age] == [
        {"gender": 0, "ethnicity": 0, "age": 0, "age_years": 1},
        {"gender": 1, "ethnicity": 2, "age": 3, "age_years": 23},  # 20-29
        {"gender": 0, "ethnicity": 4, "age": 8, "age_years": 75},  # more than 70
    ]
    assert ds.label_names["ethnicity"] == ("White", "Black", "Asian", "Indian", "Others")
    assert "age_years" not in ds.label_names


def test_custom_age_bins(utkface_root):
    with pytest.warns(SkippedFilesWarning):
        ds = UTKFace(utkface_root, age_bins=[("young", 0), ("old", 40)])
    assert ds.label_names["age"] == ("young", "old")
    assert dict(zip(ds.labels["age_years"].tolist(), ds.labels["age"].tolist())) == {1: 0, 23: 0, 75: 1}
    with pytest.raises(ValueError, match="strictly increasing"):
        UTKFace(utkface_root, age_bins=[("old", 40), ("young", 0)])


def test_strict_raises_on_malformed_names(utkface_root):
    with pytest.raises(DatasetFormatError, match="malformed file name.*strict=True"):
        UTKFace(utkface_root, strict=True)


def test_empty_folder_explains_the_layout(tmp_path, files):
    files.jpeg(tmp_path / "part1" / "1_0_0_20161219140623097.jpg")
    with pytest.raises(DatasetFormatError, match=r"no image files .*recursive=True(.|\n)*\{age\}_\{gender\}_\{race\}"):
        UTKFace(tmp_path)
    assert len(UTKFace(tmp_path, recursive=True)) == 1
