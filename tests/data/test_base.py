import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from workbench.data.base import (
    DatasetFormatError, LabeledImageDataset, MissingPathError, SkippedFilesWarning, check_image,
    collate_labeled, pil_to_tensor,
)

NAMES = {"gender": ("male", "female")}
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_pil_to_tensor_matches_hand_computed_pixels():
    image = Image.new("RGB", (3, 2), (255, 0, 51))  # width 3, height 2
    image.putpixel((2, 1), (0, 102, 255))
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert tensor[:, 1, 2].tolist() == pytest.approx([0.0, 0.4, 1.0])


def test_pil_to_tensor_converts_grey_and_rgba_to_three_channels():
    assert pil_to_tensor(Image.new("L", (2, 2), 51))[:, 0, 0].tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert pil_to_tensor(Image.new("RGBA", (2, 2), (0, 0, 255, 10))).shape == (3, 2, 2)


def test_items_are_images_in_unit_range_with_label_dicts(tmp_path, files):
    ds = LabeledImageDataset.from_records(
        [(files.jpeg(tmp_path / "a.jpg", RED), {"gender": 0}), (files.jpeg(tmp_path / "b.jpg", BLUE), {"gender": 1})],
        NAMES,
    )
    image, labels = ds[1]
    assert image.shape == (3, files.SIZE[1], files.SIZE[0])
    assert image[:, 4, 4].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=0.02)
    assert labels == {"gender": 1}
    assert ds.label_names == {"gender": ("male", "female")}
    assert ds[-1][1] == {"gender": 1}


def test_check_image_reasons(tmp_path, files):
    assert check_image(str(files.jpeg(tmp_path / "ok.jpg"))) is None
    assert check_image(str(files.truncated(tmp_path / "cut.jpg"))) == "unreadable image (corrupt, truncated or not an image)"
    assert check_image(str(files.not_image(tmp_path / "text.jpg")), "full").startswith("unreadable")
    assert check_image(str(tmp_path / "absent.jpg")) == "missing image file"


def _mixed_records(tmp_path, files):
    return [
        (files.jpeg(tmp_path / "good1.jpg", RED), {"gender": 0}),
        (files.truncated(tmp_path / "cut.jpg"), {"gender": 1}),
        (files.not_image(tmp_path / "text.jpg"), {"gender": 0}),
        (tmp_path / "absent.jpg", {"gender": 1}),
        (files.jpeg(tmp_path / "good2.jpg", GREEN), {"gender": 1}),
    ]


@pytest.mark.parametrize("validate", ["header", "full"])
def test_bad_files_are_dropped_and_counted_in_one_warning(tmp_path, files, validate):
    with pytest.warns(SkippedFilesWarning, match=r"skipped 3 of 5 items: 2 × unreadable.*cut\.jpg.*1 × missing image file") as record:
        ds = LabeledImageDataset.from_records(_mixed_records(tmp_path, files), NAMES, validate=validate)
    assert len(record) == 1
    assert len(ds) == 2
    assert [p.split("/")[-1] for p in ds.paths] == ["good1.jpg", "good2.jpg"]
    assert ds.kept_indices.tolist() == [0, 4]
    assert ds.labels["gender"].tolist() == [0, 1]
    assert ds.skipped.total == 3


def test_strict_raises_instead_of_skipping(tmp_path, files):
    with pytest.raises(DatasetFormatError, match=r"skipped 3 of 5 items.*strict=True"):
        LabeledImageDataset.from_records(_mixed_records(tmp_path, files), NAMES, strict=True)


def test_no_usable_image_is_an_error_even_when_not_strict(tmp_path, files):
    with pytest.raises(DatasetFormatError, match="no usable images"):
        LabeledImageDataset.from_records([(files.not_image(tmp_path / "x.jpg"), {"gender": 0})], NAMES)


def test_validate_none_keeps_everything_and_reading_a_bad_file_names_it(tmp_path, files):
    ds = LabeledImageDataset.from_records(_mixed_records(tmp_path, files), NAMES, validate="none")
    assert len(ds) == 5
    with pytest.raises(DatasetFormatError, match=r"could not read image .*text\.jpg.*validate='full'"):
        ds[2]


def test_file_removed_after_validation_gives_a_named_error(tmp_path, files):
    path = files.jpeg(tmp_path / "soon_gone.jpg")
    ds = LabeledImageDataset.from_records([(path, {"gender": 0})], NAMES)
    path.unlink()
    with pytest.raises(DatasetFormatError, match="soon_gone.jpg"):
        ds[0]


def test_invalid_arguments_are_explained(tmp_path, files):
    path = files.jpeg(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="validate='fast' is not one of"):
        LabeledImageDataset([path], {"gender": [0]}, NAMES, validate="fast")
    with pytest.raises(ValueError, match=r"label 'gender' has shape \(2,\), expected \(1,\)"):
        LabeledImageDataset([path], {"gender": [0, 1]}, NAMES)
    with pytest.raises(ValueError, match="has label keys"):
        LabeledImageDataset.from_records([(path, {"gender": 0}), (path, {"age": 1})], NAMES)


def test_missing_path_error_is_also_a_file_not_found_error():
    error = MissingPathError("x")
    assert isinstance(error, FileNotFoundError) and isinstance(error, DatasetFormatError)


def test_transform_receives_the_pil_image(tmp_path, files):
    ds = LabeledImageDataset.from_records(
        [(files.jpeg(tmp_path / "a.jpg", RED, size=(5, 3)), {"gender": 0})], NAMES, transform=lambda image: image.size
    )
    assert ds[0] == ((5, 3), {"gender": 0})


def test_collate_stacks_images_and_labels():
    batch = [(torch.zeros(3, 2, 2), {"gender": 1, "age": 3}), (torch.ones(3, 2, 2), {"age": 0, "gender": 0})]
    images, labels = collate_labeled(batch)
    assert images.shape == (2, 3, 2, 2) and images[1].sum() == 12
    assert labels["gender"].tolist() == [1, 0] and labels["age"].tolist() == [3, 0]
    assert labels["age"].dtype == torch.long


def test_collate_explains_what_it_cannot_batch():
    with pytest.raises(ValueError, match="different shapes"):
        collate_labeled([(torch.zeros(3, 2, 2), {"g": 0}), (torch.zeros(3, 4, 4), {"g": 0})])
    with pytest.raises(TypeError, match="tensor images"):
        collate_labeled([(Image.new("RGB", (2, 2)), {"g": 0})])
    with pytest.raises(ValueError, match="different label keys"):
        collate_labeled([(torch.zeros(3, 2, 2), {"g": 0}), (torch.zeros(3, 2, 2), {"a": 0})])


def test_dataloader_end_to_end(tmp_path, files):
    records = [(files.jpeg(tmp_path / f"{i}.jpg", color), {"gender": i % 2}) for i, color in enumerate([RED, GREEN, BLUE])]
    ds = LabeledImageDataset.from_records(records, NAMES)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_labeled))
    assert [b[0].shape for b in batches] == [(2, 3, 8, 8), (1, 3, 8, 8)]
    assert torch.cat([b[1]["gender"] for b in batches]).tolist() == [0, 1, 0]
    # pixel (0, 0) of each image: red, green, blue
    first_pixels = torch.cat([b[0][:, :, 0, 0] for b in batches])
    assert np.allclose(first_pixels.numpy(), np.eye(3), atol=0.02)


def test_label_frame_is_tidy(tmp_path, files):
    ds = LabeledImageDataset.from_records(
        [(files.jpeg(tmp_path / "a.jpg"), {"gender": 1, "age": 2})], {"gender": ("male", "female")}
    )
    frame = ds.label_frame()
    assert list(frame.columns) == ["path", "gender", "age"]
    assert frame.iloc[0].tolist() == [str(tmp_path / "a.jpg"), 1, 2]
    assert repr(ds) == "LabeledImageDataset(n=1, labels: gender[2], age)"


def test_dataset_labels_reads_label_columns_through_subsets_without_opening_images():
    from torch.utils.data import Subset

    from workbench.data import SynthSocial, dataset_labels

    ds = SynthSocial("test_balanced", n=64)
    nested = Subset(Subset(ds, [5, 3, 9, 1, 40]), [4, 2, 0])
    want = [ds[i][1] for i in (40, 9, 5)]
    got = dataset_labels(nested)
    assert set(got) == set(want[0])
    for k, v in got.items():
        assert v.dtype == torch.long and v.tolist() == [w[k] for w in want]

    column = np.array([1, 0, 1])
    column.setflags(write=False)  # as the folder loaders hold them

    class Columns(torch.utils.data.Dataset):  # labels as columns; opening an item would fail
        labels = {"gender": column}

        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise AssertionError("dataset_labels opened an image")

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        assert dataset_labels(Subset(Columns(), [2, 1]))["gender"].tolist() == [1, 0]

    class ItemsOnly(torch.utils.data.Dataset):  # no label columns: read item by item
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return None, {"gender": 1 - i}

    assert dataset_labels(ItemsOnly())["gender"].tolist() == [1, 0]
