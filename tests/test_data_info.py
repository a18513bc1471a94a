"""dataset_info on every kind of data set, checked against how each test set was built."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.info import dataset_info
from distill.data.recordio import write_insightface_rec
from distill.data.verification_bin import write_verification_bin
from distill.errors import InputError

KEYS = {"images", "identities", "pairs", "image_size"}


def png(size: int, seed: int = 0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_rec_folder_and_rec_file(tmp_path: Path) -> None:
    items = [(0, png(112, 1)), (0, png(112, 2)), (2, png(112, 3))]  # label 1 has no images
    write_insightface_rec(tmp_path, items, num_classes=3)
    expected = {"images": 3, "identities": 2, "pairs": None, "image_size": [112, 112]}
    assert dataset_info(tmp_path) == expected
    assert dataset_info(tmp_path / "train.rec") == expected


def test_rec_with_other_image_size_is_described_not_rejected(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path, [(0, png(96)), (1, png(96))], num_classes=2, image_size=96)
    assert dataset_info(tmp_path) == {"images": 2, "identities": 2, "pairs": None, "image_size": [96, 96]}


def test_image_folder(tmp_path: Path) -> None:
    for name, n in (("b", 2), ("a", 3)):
        (tmp_path / name).mkdir()
        for i in range(n):
            (tmp_path / name / f"{i}.png").write_bytes(png(112, i))
    info = dataset_info(tmp_path)
    assert set(info) == KEYS
    assert info == {"images": 5, "identities": 2, "pairs": None, "image_size": [112, 112]}


def test_bin(tmp_path: Path) -> None:
    write_verification_bin(tmp_path / "v.bin", [png(112, i) for i in range(8)], [True, False, True, False])
    assert dataset_info(tmp_path / "v.bin") == {
        "images": 8,
        "identities": None,
        "pairs": 4,
        "image_size": [112, 112],
    }


def test_pairs_folder(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png(112, 1))
    (tmp_path / "b.png").write_bytes(png(112, 2))
    (tmp_path / "pairs.txt").write_text("a.png\tb.png\t0\na.png\ta.png\t1\n")
    assert dataset_info(tmp_path) == {"images": 4, "identities": None, "pairs": 2, "image_size": [112, 112]}


def test_unknown_path(tmp_path: Path) -> None:
    (tmp_path / "thing.csv").write_text("a,b\n")
    for p in (tmp_path / "thing.csv", tmp_path / "missing"):
        with pytest.raises(InputError) as err:
            dataset_info(p)
        assert str(p) in str(err.value)
