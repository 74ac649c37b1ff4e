import pytest
import torch
from torch.utils.data import DataLoader

from workbench.data.base import DatasetFormatError, MissingPathError, SkippedFilesWarning, collate_labeled
from workbench.data.real import FairFace


def load(root, **kwargs):
    with pytest.warns(SkippedFilesWarning, match=r"FairFace: skipped 3 of 6 items"):
        return FairFace(root, "train", **kwargs)


def test_labels_are_parsed_from_the_csv(fairface_root):
    ds = load(fairface_root)
    assert len(ds) == 3
    # rows: 50-59/Male/East Asian/True, more than 70/Female/Southeast Asian/False, 0-2/Female/Latino_Hispanic/True
    assert [ds[i][1] for i in range(3)] == [
        {"gender": 0, "ethnicity": 3, "age": 6, "service_test": 1},
        {"gender": 1, "ethnicity": 4, "age": 8, "service_test": 0},
        {"gender": 1, "ethnicity": 2, "age": 0, "service_test": 1},
    ]
    assert ds.label_names["ethnicity"][3] == "East Asian"
    assert ds.label_names["age"][8] == "more than 70"
    assert ds[1][0][:, 0, 0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=0.02)  # train/2.jpg is green


def test_warning_names_each_kind_of_bad_item(fairface_root):
    with pytest.warns(SkippedFilesWarning) as record:
        FairFace(fairface_root)
    message = str(record[0].message)
    assert "1 × invalid CSV row (e.g. fairface_label_train.csv:7 (unknown race value 'Martian'" in message
    assert "2 × unreadable image" in message and "4.jpg" in message and "5.jpg" in message


def test_strict_raises(fairface_root):
    with pytest.raises(DatasetFormatError, match="strict=True"):
        FairFace(fairface_root, strict=True)


def test_val_split_and_image_dir(fairface_root, tmp_path_factory):
    assert FairFace(fairface_root, "val")[0][1] == {"gender": 0, "ethnicity": 5, "age": 4, "service_test": 0}
    elsewhere = tmp_path_factory.mktemp("csv_only")
    (elsewhere / "fairface_label_val.csv").write_text((fairface_root / "fairface_label_val.csv").read_text())
    assert len(FairFace(elsewhere, "val", image_dir=fairface_root)) == 1


def test_missing_csv_names_the_file_and_shows_the_layout(tmp_path):
    with pytest.raises(MissingPathError, match=r"missing metadata file .*fairface_label_train\.csv(.|\n)*Expected layout:(.|\n)*train/1\.jpg"):
        FairFace(tmp_path)


def test_missing_column_is_named(tmp_path):
    (tmp_path / "fairface_label_val.csv").write_text("file,age,gender\nval/1.jpg,3-9,Male\n")
    with pytest.raises(DatasetFormatError, match=r"lacks column\(s\) \['race'\]; it has \['file', 'age', 'gender'\]"):
        FairFace(tmp_path, "val")


def test_missing_root_and_bad_split(tmp_path):
    with pytest.raises(MissingPathError, match="missing root folder"):
        FairFace(tmp_path / "nope")
    with pytest.raises(ValueError, match="'train' or 'val'"):
        FairFace(tmp_path, "test")


def test_dataloader_with_a_preprocess_transform(fairface_root):
    def preprocess(image):  # stands in for a model preprocess: PIL in, normalised tensor out
        return torch.nn.functional.interpolate(torch.ones(1, 3, *image.size[::-1]), size=(4, 4))[0] * 0.5

    ds = load(fairface_root, transform=preprocess)
    images, labels = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_labeled)))
    assert images.shape == (3, 3, 4, 4) and torch.all(images == 0.5)
    assert labels["gender"].tolist() == [0, 1, 1] and labels["ethnicity"].tolist() == [3, 4, 2]
