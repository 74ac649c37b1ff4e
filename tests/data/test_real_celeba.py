import pytest

from workbench.data.base import DatasetFormatError, MissingPathError, SkippedFilesWarning
from workbench.data.real import CelebA


def test_attributes_gender_and_age(celeba_root):
    with pytest.warns(SkippedFilesWarning, match=r"CelebA: skipped 1 of 4 items: 1 × malformed attribute row \(e\.g\. list_attr_celeba\.txt:6\)"):
        ds = CelebA(celeba_root)
    assert ds.attribute_names == ("Smiling", "Male", "Young", "Eyeglasses")
    # row 000002.jpg: Smiling -1, Male -1, Young 1, Eyeglasses 1
    assert ds[1][1] == {"gender": 1, "age": 0, "attr_Smiling": 0, "attr_Male": 0, "attr_Young": 1, "attr_Eyeglasses": 1}
    assert ds.labels["gender"].tolist() == [0, 1, 1]
    assert ds.labels["age"].tolist() == [1, 0, 1]  # 0 young, 1 old
    assert ds.label_names["age"] == ("young", "old") and ds.label_names["attr_Smiling"] == ("no", "yes")
    assert ds[2][0][:, 3, 3].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.02)


def test_splits_from_partition_file(celeba_root):
    with pytest.warns(SkippedFilesWarning):
        train = CelebA(celeba_root, "train")
    with pytest.warns(SkippedFilesWarning):
        test = CelebA(celeba_root, "test")
    assert [p.split("/")[-1] for p in train.paths] == ["000001.jpg", "000002.jpg"]
    assert [p.split("/")[-1] for p in test.paths] == ["000003.jpg"]


def test_split_without_partition_file_names_it(celeba_root):
    (celeba_root / "list_eval_partition.txt").unlink()
    with pytest.raises(MissingPathError, match=r"partition \(needed for split=\) file .*list_eval_partition\.txt"):
        CelebA(celeba_root, "val")


def test_missing_image_folder_and_missing_attribute(celeba_root, tmp_path_factory):
    with pytest.raises(MissingPathError, match=r"missing image folder .*img_align_celeba(.|\n)*Expected layout"):
        CelebA(tmp_path_factory.mktemp("empty"))
    (celeba_root / "list_attr_celeba.txt").write_text("1\nSmiling Young\n000001.jpg 1 1\n")
    with pytest.raises(DatasetFormatError, match=r"lacks attribute column\(s\) \['Male'\]"):
        CelebA(celeba_root)


def test_count_mismatch_warns_and_strict_raises(celeba_root):
    (celeba_root / "list_attr_celeba.txt").write_text("5\nMale Young\n000001.jpg 1 1\n000002.jpg -1 1\n")
    with pytest.warns(UserWarning, match="line 1 says 5 images but 2 rows follow"):
        assert len(CelebA(celeba_root)) == 2
    with pytest.raises(DatasetFormatError, match="says 5 images"):
        CelebA(celeba_root, strict=True)


def test_images_missing_from_the_partition_warn_with_count_and_examples(celeba_root):
    (celeba_root / "list_eval_partition.txt").write_text("000001.jpg 0\n000003.jpg 7\n")  # 2 unassigned
    with pytest.warns(SkippedFilesWarning) as record:
        train = CelebA(celeba_root, "train")
    assert [p.split("/")[-1] for p in train.paths] == ["000001.jpg"]
    messages = [str(w.message) for w in record]
    unassigned = [m for m in messages if "not assigned a split" in m]
    assert unassigned == [
        "CelebA: 2 of 3 images of list_attr_celeba.txt are not assigned a split by list_eval_partition.txt "
        "(absent, or on a malformed line), so they are left out of split 'train' (e.g. 000002.jpg, 000003.jpg); "
        "add them to list_eval_partition.txt (`<file> 0|1|2`), or pass split=None to use every image"]
    with pytest.raises(DatasetFormatError, match=r"2 of 3 images .* not assigned a split .*\(strict=True\); add them"):
        CelebA(celeba_root, "train", strict=True)


def test_complete_partition_gives_no_unassigned_warning(celeba_root):
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert len(CelebA(celeba_root, "test")) == 1
    assert not [w for w in record if "not assigned a split" in str(w.message)]
