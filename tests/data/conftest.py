"""Builders for tiny on-disk dataset fixtures: real JPEG files written with PIL, plus broken ones."""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SIZE = (8, 8)  # width, height: every valid fixture image has this size so batches stack

RED, GREEN, BLUE, WHITE, BLACK, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (128, 128, 128)


def write_jpeg(path: Path, color: tuple[int, int, int] = RED, size: tuple[int, int] = SIZE) -> Path:
    """A solid-colour JPEG (solid colours survive JPEG compression almost exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    """The first half of a noisy 64x64 JPEG: the header parses, the scan data stops mid-way."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a JPEG")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def files():
    """The writers and colours above, for tests that build their own variants."""
    return SimpleNamespace(
        jpeg=write_jpeg, truncated=write_truncated_jpeg, not_image=write_not_an_image,
        lines=write_lines, json=write_json, SIZE=SIZE,
        RED=RED, GREEN=GREEN, BLUE=BLUE, WHITE=WHITE, BLACK=BLACK, GREY=GREY,
    )


@pytest.fixture
def fairface_root(tmp_path: Path) -> Path:
    """3 good rows, 1 truncated image, 1 non-image, 1 unknown race -> 3 usable of 6 train rows."""
    write_jpeg(tmp_path / "train/1.jpg", RED)
    write_jpeg(tmp_path / "train/2.jpg", GREEN)
    write_jpeg(tmp_path / "train/3.jpg", BLUE)
    write_truncated_jpeg(tmp_path / "train/4.jpg")
    write_not_an_image(tmp_path / "train/5.jpg")
    write_jpeg(tmp_path / "train/6.jpg", WHITE)
    write_lines(tmp_path / "fairface_label_train.csv", [
        "file,age,gender,race,service_test",
        "train/1.jpg,50-59,Male,East Asian,True",
        "train/2.jpg,more than 70,Female,Southeast Asian,False",
        "train/3.jpg,0-2,Female,Latino_Hispanic,True",
        "train/4.jpg,20-29,Male,White,False",
        "train/5.jpg,20-29,Male,Black,False",
        "train/6.jpg,20-29,Male,Martian,False",
    ])
    write_jpeg(tmp_path / "val/1.jpg", BLACK)
    write_lines(tmp_path / "fairface_label_val.csv", ["file,age,gender,race,service_test", "val/1.jpg,30-39,Male,Indian,False"])
    return tmp_path


@pytest.fixture
def utkface_root(tmp_path: Path) -> Path:
    """3 good names, 2 malformed names (one lacks the race field, as in the release), 1 truncated image."""
    write_jpeg(tmp_path / "23_1_2_20170116174525125.jpg.chip.jpg", RED)
    write_jpeg(tmp_path / "1_0_0_20161219140623097.jpg.chip.jpg", GREEN)
    write_jpeg(tmp_path / "75_0_4_20170103200000000.jpg", BLUE)
    write_jpeg(tmp_path / "39_1_20170116174525125.jpg.chip.jpg", WHITE)
    write_jpeg(tmp_path / "portrait.jpg", WHITE)
    write_truncated_jpeg(tmp_path / "30_0_1_20170109150557335.jpg.chip.jpg")
    (tmp_path / "README.txt").write_text("not an image, ignored")
    return tmp_path


@pytest.fixture
def celeba_root(tmp_path: Path) -> Path:
    """4 attributes (not 40: the loader reads the names from line 2), 3 good rows, 1 malformed row."""
    for name, color in [("000001.jpg", RED), ("000002.jpg", GREEN), ("000003.jpg", BLUE)]:
        write_jpeg(tmp_path / "img_align_celeba" / name, color)
    write_lines(tmp_path / "list_attr_celeba.txt", [
        "4",
        "Smiling Male Young Eyeglasses ",
        "000001.jpg  1  1 -1 -1",
        "000002.jpg -1 -1  1  1",
        "000003.jpg  1 -1 -1  1",
        "000004.jpg  1  1",
    ])
    write_lines(tmp_path / "list_eval_partition.txt", ["000001.jpg 0", "000002.jpg 0", "000003.jpg 2", "000004.jpg 1"])
    return tmp_path


@pytest.fixture
def waterbirds_root(tmp_path: Path) -> Path:
    """Train: 2 good + 1 truncated; val: 1; test: 1; plus one row with y=7."""
    write_jpeg(tmp_path / "001.Albatross/a.jpg", RED)
    write_jpeg(tmp_path / "002.Sparrow/b.jpg", GREEN)
    write_truncated_jpeg(tmp_path / "002.Sparrow/c.jpg")
    write_jpeg(tmp_path / "003.Gull/d.jpg", BLUE)
    write_jpeg(tmp_path / "004.Wren/e.jpg", WHITE)
    write_lines(tmp_path / "metadata.csv", [
        "img_id,img_filename,y,split,place,place_filename",
        "1,001.Albatross/a.jpg,1,0,0,/b/bamboo/1.jpg",
        "2,002.Sparrow/b.jpg,0,0,1,/o/ocean/2.jpg",
        "3,002.Sparrow/c.jpg,0,0,0,/f/forest/3.jpg",
        "4,003.Gull/d.jpg,1,1,1,/o/ocean/4.jpg",
        "5,004.Wren/e.jpg,0,2,1,/l/lake/5.jpg",
        "6,004.Wren/e.jpg,7,0,1,/l/lake/5.jpg",
    ])
    return tmp_path


@pytest.fixture
def sispi_root(tmp_path: Path) -> Path:
    """4 good names (one profession with an underscore, in a subfolder), 2 malformed names."""
    write_jpeg(tmp_path / "doctor_102_female_black.jpg", RED)
    write_jpeg(tmp_path / "doctor_7_male_latin.jpg", GREEN)
    write_jpeg(tmp_path / "images/nurse_1_male_asian.jpg", BLUE)
    write_jpeg(tmp_path / "images/computer_programmer_3_female_white.jpg", WHITE)
    write_jpeg(tmp_path / "doctor_x_female_black.jpg", BLACK)
    write_jpeg(tmp_path / "nurse_4_female_martian.jpg", GREY)
    return tmp_path


def karpathy_image(filename: str, split: str, captions: list[str], imgid: int, **extra) -> dict:
    return {"filename": filename, "split": split, "imgid": imgid, "sentences": [{"raw": c} for c in captions], **extra}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """3 test images (one truncated), 1 train image, 1 entry without sentences."""
    write_jpeg(tmp_path / "val2014/a.jpg", RED)
    write_jpeg(tmp_path / "val2014/b.jpg", GREEN)
    write_truncated_jpeg(tmp_path / "val2014/c.jpg")
    write_jpeg(tmp_path / "train2014/d.jpg", BLUE)
    write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        karpathy_image("a.jpg", "test", ["A red square.", " A crimson tile. "], 0, filepath="val2014", cocoid=101),
        karpathy_image("b.jpg", "test", ["A green square."], 1, filepath="val2014", cocoid=102),
        karpathy_image("c.jpg", "test", ["A broken file."], 2, filepath="val2014", cocoid=103),
        karpathy_image("d.jpg", "train", ["A blue square."], 3, filepath="train2014", cocoid=104),
        {"filename": "e.jpg", "split": "test", "filepath": "val2014"},
    ]})
    return tmp_path
