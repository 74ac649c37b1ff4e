"""Every loader that reads a CSV / text / JSON file: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is read
like plain UTF-8, and binary content is a DatasetFormatError naming the file, not a UnicodeDecodeError.
(UTKFace and SISPI read labels from file names only: no text file to check.)"""
import codecs

import pytest

from workbench.data.base import DatasetFormatError, SkippedFilesWarning, read_text_file
from workbench.data.real import CaptionDataset, CelebA, FairFace, Waterbirds

BINARY = bytes(range(256)) * 4  # e.g. a spreadsheet (.xlsx) or an image saved under the CSV's name

# loader name -> (the fixture, the file it reads, how to build it, the kind named in the error)
LOADERS = {
    "FairFace": ("fairface_root", "fairface_label_val.csv", lambda root: FairFace(root, "val"), "CSV"),
    "Waterbirds": ("waterbirds_root", "metadata.csv", lambda root: Waterbirds(root, "test"), "CSV"),
    "CelebA": ("celeba_root", "list_attr_celeba.txt", lambda root: CelebA(root), "attribute"),
    "CelebA partition": ("celeba_root", "list_eval_partition.txt", lambda root: CelebA(root, "test"), "partition"),
    "CaptionDataset": ("coco_root", "dataset_coco.json", lambda root: CaptionDataset(root), "JSON"),
}


def build(loader, root):
    """The dataset, with the fixtures' deliberate skipped-file warnings silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedFilesWarning)
        return loader(root)


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_utf8_bom_reads_like_plain_utf8(name, request):
    fixture, file_name, loader, _ = LOADERS[name]
    root = request.getfixturevalue(fixture)
    plain = build(loader, root)
    path = root / file_name
    # as Excel saves "CSV UTF-8": a BOM and CRLF line ends
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes().replace(b"\n", b"\r\n"))
    with_bom = build(loader, root)
    assert with_bom.paths == plain.paths and len(with_bom) > 0
    assert {k: v.tolist() for k, v in with_bom.labels.items()} == {k: v.tolist() for k, v in plain.labels.items()}


def test_fairface_bom_does_not_stick_to_the_first_column(fairface_root):
    path = fairface_root / "fairface_label_val.csv"
    path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    ds = FairFace(fairface_root, "val")  # would fail with "lacks column(s) ['file']; it has ['\ufefffile', ...]"
    assert ds[0][1] == {"gender": 0, "ethnicity": 5, "age": 4, "service_test": 0}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_binary_content_names_the_file_and_says_it_is_not_text(name, request):
    fixture, file_name, loader, kind = LOADERS[name]
    root = request.getfixturevalue(fixture)
    (root / file_name).write_bytes(BINARY)
    article = "an" if kind[0] in "aeiou" else "a"
    with pytest.raises(DatasetFormatError, match=rf"{file_name}' is not {article} text {kind} file: it holds binary "
                                                 rf"content \(a NUL byte at offset 0\); pass the {kind} file itself"):
        loader(root)


def test_text_in_another_encoding_is_named_too(tmp_path):
    path = tmp_path / "fairface_label_val.csv"
    path.write_bytes("file,age,gender,race\nval/é.jpg,3-9,Male,White\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match=r"fairface_label_val.csv' is not UTF-8 text: byte 0xe9 at offset 25 "
                                                 r"is not UTF-8 .*Latin-1\); pass the CSV file itself, saved as UTF-8"):
        FairFace(tmp_path, "val")


def test_read_text_file_decodes_utf16_with_bom(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("file,age\nä.jpg,3-9\n".encode("utf-16"))  # Excel's "Unicode text": UTF-16 with a BOM
    assert read_text_file(path, "FairFace", "CSV") == "file,age\nä.jpg,3-9\n"
