import pytest

from workbench.data.base import DatasetFormatError, MissingPathError, SkippedFilesWarning
from workbench.data.real import CaptionDataset


def test_coco_test_split(coco_root):
    with pytest.warns(SkippedFilesWarning, match=r"skipped 2 of 4 items: 1 × malformed annotation entry \(e\.g\. dataset_coco\.json images\[4\]\); 1 × unreadable"):
        ds = CaptionDataset(coco_root)
    assert len(ds) == 2
    assert [ds[i][1] for i in range(2)] == [{"image_id": 101}, {"image_id": 102}]
    assert ds.captions == [["A red square.", "A crimson tile."], ["A green square."]]
    assert ds.text_to_image == [("A red square.", 0), ("A crimson tile.", 0), ("A green square.", 1)]
    assert ds.label_names == {}
    assert ds[1][0][:, 0, 0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=0.02)


def test_several_splits(coco_root):
    with pytest.warns(SkippedFilesWarning):
        ds = CaptionDataset(coco_root, split=("train", "test"))
    assert sorted(ds.labels["image_id"].tolist()) == [101, 102, 104]


def test_flickr_layout_is_found(tmp_path, files):
    files.jpeg(tmp_path / "flickr30k-images" / "1000092795.jpg")
    files.json(tmp_path / "dataset_flickr30k.json", {"images": [
        {"filename": "1000092795.jpg", "split": "test", "imgid": 7, "sentences": [{"raw": "Two men."}]}]})
    ds = CaptionDataset(tmp_path, "dataset_flickr30k.json")
    assert ds[0][1] == {"image_id": 7} and ds.text_to_image == [("Two men.", 0)]


def test_errors_name_what_is_missing(coco_root, tmp_path_factory):
    with pytest.raises(MissingPathError, match=r"missing annotation file .*dataset_flickr30k\.json(.|\n)*Expected layout"):
        CaptionDataset(coco_root, "dataset_flickr30k.json")
    with pytest.raises(DatasetFormatError, match=r"no image has split \['testing'\]; splits present: \['test', 'train'\]"):
        CaptionDataset(coco_root, split="testing")
    bad = tmp_path_factory.mktemp("bad")
    (bad / "dataset_coco.json").write_text('{"annotations": []}')
    with pytest.raises(DatasetFormatError, match=r"must be a JSON object with an \"images\" list"):
        CaptionDataset(bad)


def test_strict(coco_root):
    with pytest.raises(DatasetFormatError, match="strict=True"):
        CaptionDataset(coco_root, strict=True)
