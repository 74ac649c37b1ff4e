import pytest

from workbench.data.base import DatasetFormatError, SkippedFilesWarning
from workbench.data.real import Waterbirds


def test_train_split_labels_and_skips(waterbirds_root):
    with pytest.warns(SkippedFilesWarning, match=r"Waterbirds: skipped 2 of 4 items: 1 × invalid CSV row \(e\.g\. metadata\.csv:7\); 1 × unreadable"):
        ds = Waterbirds(waterbirds_root, "train")
    assert [ds[i][1] for i in range(len(ds))] == [{"target": 1, "spurious": 0}, {"target": 0, "spurious": 1}]
    assert ds.label_names == {"target": ("landbird", "waterbird"), "spurious": ("land", "water")}


@pytest.mark.parametrize("split, expected", [("val", [{"target": 1, "spurious": 1}]), ("test", [{"target": 0, "spurious": 1}])])
def test_val_and_test(waterbirds_root, split, expected):
    with pytest.warns(SkippedFilesWarning, match="invalid CSV row"):
        ds = Waterbirds(waterbirds_root, split)
    assert [ds[i][1] for i in range(len(ds))] == expected


def test_all_splits(waterbirds_root):
    with pytest.warns(SkippedFilesWarning, match="skipped 2 of 6"):
        assert len(Waterbirds(waterbirds_root, None)) == 4


def test_missing_column_and_file(waterbirds_root, tmp_path_factory):
    with pytest.raises(DatasetFormatError, match=r"missing metadata file .*metadata\.csv(.|\n)*img_id,img_filename"):
        Waterbirds(tmp_path_factory.mktemp("empty"))
    (waterbirds_root / "metadata.csv").write_text("img_id,img_filename,y,split,place_filename\n1,a.jpg,0,0,x\n")
    with pytest.raises(DatasetFormatError, match=r"lacks column\(s\) \['place'\]"):
        Waterbirds(waterbirds_root)
