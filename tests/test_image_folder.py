"""Identity-per-folder training sets, pairs.txt verification folders and the format dispatchers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.faces import open_train_set, open_verification
from distill.data.image_folder import ImageFolderFaces, load_pairs_folder
from distill.data.recordio import RecFaceDataset, write_insightface_rec
from distill.data.verification_bin import write_verification_bin
from distill.errors import InputError


def arr(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def save(path: Path, a: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format=fmt)


def make_tree(root: Path) -> dict[str, np.ndarray]:
    """Three identities created in non-sorted order, mixed formats, plus files that must be ignored."""
    files = {
        "zoe/b.png": arr(1),
        "zoe/a.BMP": arr(2),
        "adam/1.png": arr(3),
        "mia/x.png": arr(4),
        "mia/y.png": arr(5),
        "mia/z.png": arr(6),
    }
    for rel, a in files.items():
        save(root / rel, a, "BMP" if rel.lower().endswith(".bmp") else "PNG")
    (root / "mia" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    (root / "README.md").write_text("top-level file")
    return files


def test_image_folder_labels_follow_sorted_names(tmp_path: Path) -> None:
    files = make_tree(tmp_path)
    ds = ImageFolderFaces(tmp_path)
    assert ds.classes == ["adam", "mia", "zoe"]  # 'empty' has no images, so it is not an identity
    assert ds.num_classes == 3
    expected = ["adam/1.png", "mia/x.png", "mia/y.png", "mia/z.png", "zoe/a.BMP", "zoe/b.png"]
    assert [str(p.relative_to(tmp_path)) for p in ds.files] == expected
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert len(ds) == 6
    for i, rel in enumerate(expected):
        img, label = ds[i]
        assert img.dtype == np.uint8 and img.shape == (112, 112, 3)
        np.testing.assert_array_equal(img, files[rel])
        assert label == ds.labels[i]
    assert ds.read_encoded(0) == (tmp_path / "adam/1.png").read_bytes()


def test_image_folder_jpeg_and_grayscale_become_rgb(tmp_path: Path) -> None:
    gray = np.full((112, 112), 77, np.uint8)
    (tmp_path / "p").mkdir()
    Image.fromarray(gray).save(tmp_path / "p" / "g.jpeg", quality=95)
    img, _ = ImageFolderFaces(tmp_path)[0]
    assert img.shape == (112, 112, 3)
    assert abs(int(img.mean()) - 77) <= 1 and (img[..., 0] == img[..., 2]).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        ImageFolderFaces(tmp_path / "missing")
    (tmp_path / "a").mkdir()
    with pytest.raises(InputError, match="no identity"):
        ImageFolderFaces(tmp_path)
    save(tmp_path / "a" / "small.png", arr(0, size=64), "PNG")
    with pytest.raises(InputError, match=r"small.png.*64x64.*112x112"):
        ImageFolderFaces(tmp_path)[0]


def make_pairs(root: Path) -> list[np.ndarray]:
    a = [arr(10 + i) for i in range(3)]
    save(root / "p1" / "0.png", a[0], "PNG")
    save(root / "p1" / "1.png", a[1], "PNG")
    save(root / "p2" / "0.png", a[2], "PNG")
    (root / "pairs.txt").write_text(
        "# comment line\np1/0.png\tp1/1.png\t1\n\np1/0.png\tp2/0.png\t0\np2/0.png\tp1/1.png\t0\r\n"
    )
    return a


def test_pairs_folder(tmp_path: Path) -> None:
    a = make_pairs(tmp_path)
    vs = load_pairs_folder(tmp_path)
    assert vs.name == tmp_path.name
    assert vs.issame.tolist() == [True, False, False]
    expected = np.stack([a[0], a[1], a[0], a[2], a[2], a[1]])
    np.testing.assert_array_equal(vs.images, expected)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("p1/0.png p1/1.png 1\n", "line 1"),
        ("p1/0.png\tp1/1.png\tyes\n", "line 1"),
        ("p1/0.png\tp1/1.png\t1\np1/0.png\tnope.png\t0\n", "line 2.*nope.png"),
        ("# only comments\n", "no pairs"),
    ],
)
def test_pairs_folder_errors(tmp_path: Path, text: str, match: str) -> None:
    make_pairs(tmp_path)
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(InputError, match=match):
        load_pairs_folder(tmp_path)


def test_pairs_folder_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pairs.txt"):
        load_pairs_folder(tmp_path)


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_open_train_set_dispatch(tmp_path: Path) -> None:
    rec_dir = tmp_path / "rec"
    write_insightface_rec(rec_dir, [(0, _png(arr(1))), (1, _png(arr(2)))], 2)
    assert isinstance(open_train_set(rec_dir), RecFaceDataset)
    assert isinstance(open_train_set(rec_dir / "train.rec"), RecFaceDataset)
    folder = tmp_path / "folder"
    make_tree(folder)
    ds = open_train_set(folder)
    assert isinstance(ds, ImageFolderFaces) and len(ds) == 6


def test_open_train_set_unknown(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for p in (tmp_path / "empty", tmp_path / "file.txt", tmp_path / "absent"):
        with pytest.raises(InputError) as err:
            open_train_set(p)
        assert str(p) in str(err.value)


def test_open_verification_dispatch(tmp_path: Path) -> None:
    a = [arr(1), arr(2)]
    write_verification_bin(tmp_path / "lfw.bin", [_png(x) for x in a], [True])
    vs = open_verification(tmp_path / "lfw.bin")
    assert vs.name == "lfw" and vs.issame.tolist() == [True]
    pairs_dir = tmp_path / "pairs"
    make_pairs(pairs_dir)
    assert open_verification(pairs_dir).issame.tolist() == [True, False, False]
    for p in (tmp_path / "absent.bin", tmp_path, tmp_path / "lfw.txt"):
        if p.suffix == ".txt":
            p.write_text("x")
        with pytest.raises(InputError) as err:
            open_verification(p)
        assert str(p) in str(err.value)
