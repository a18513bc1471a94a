"""Verification .bin: round trip, the formats insightface wrote, and pickles that try to run code."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.verification_bin import load_verification_bin, write_verification_bin
from distill.errors import InputError


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def images(n: int, size: int = 112) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_round_trip(tmp_path: Path) -> None:
    arrs = images(6)
    write_verification_bin(tmp_path / "lfw.bin", [png_bytes(a) for a in arrs], [True, False, True])
    vs = load_verification_bin(tmp_path / "lfw.bin")
    assert vs.name == "lfw"
    assert vs.images.dtype == np.uint8 and vs.images.shape == (6, 112, 112, 3)
    np.testing.assert_array_equal(vs.images, np.stack(arrs))
    assert vs.issame.dtype == bool and vs.issame.tolist() == [True, False, True]


def test_written_file_is_the_insightface_pickle(tmp_path: Path) -> None:
    encoded = [png_bytes(a) for a in images(2)]
    write_verification_bin(tmp_path / "x.bin", encoded, [False])
    data = (tmp_path / "x.bin").read_bytes()
    assert data[:2] == bytes([0x80, pickle.HIGHEST_PROTOCOL])
    assert pickle.loads(data) == (encoded, [False])  # our own trusted file: plain pickle is fine here


def test_write_rejects_wrong_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_verification_bin(tmp_path / "x.bin", [b"a", b"b", b"c"], [True])
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_ndarray_elements_like_cv2_imencode(tmp_path: Path, protocol: int) -> None:
    arrs = images(4)
    bins = [np.frombuffer(png_bytes(a), dtype=np.uint8).copy() for a in arrs]  # what cv2.imencode returns
    (tmp_path / "agedb_30.bin").write_bytes(pickle.dumps((bins, [True, False]), protocol=protocol))
    vs = load_verification_bin(tmp_path / "agedb_30.bin")
    np.testing.assert_array_equal(vs.images, np.stack(arrs))
    assert vs.issame.tolist() == [True, False]


def test_python2_str_pickle_is_read_as_bytes(tmp_path: Path) -> None:
    """A hand-assembled protocol-2 pickle holding Python-2 ``str`` (BINSTRING) JPEG/PNG data."""
    encoded = [png_bytes(a) for a in images(2)]
    body = b"\x80\x02" + b"]" + b"("  # PROTO 2, EMPTY_LIST, MARK
    for e in encoded:
        body += b"T" + struct.pack("<I", len(e)) + e  # BINSTRING: py2 str
    body += b"e" + b"]" + b"(" + b"\x88" + b"e" + b"\x86" + b"."  # APPENDS, [True], TUPLE2, STOP
    (tmp_path / "old.bin").write_bytes(body)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(body)  # why the fallback exists
    vs = load_verification_bin(tmp_path / "old.bin")
    np.testing.assert_array_equal(vs.images[1], images(2)[1])
    assert vs.issame.tolist() == [True]


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _OpensFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    ("payload", "name"), [(_RunsCommand, "system"), (_Evals, "eval"), (_OpensFile, "open")]
)
def test_malicious_pickle_is_rejected_without_running(tmp_path: Path, payload: type, name: str) -> None:
    marker = tmp_path / "pwned"
    encoded = [png_bytes(a) for a in images(2)]
    for obj in [payload(marker), ([payload(marker), encoded[1]], [True]), (encoded, [payload(marker)])]:
        path = tmp_path / "evil.bin"
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(InputError, match=name) as err:
            load_verification_bin(path)
        assert "evil.bin" in str(err.value)
        assert not marker.exists()


def test_numpy_globals_other_than_reconstruction_are_rejected(tmp_path: Path) -> None:
    # numpy.load is a numpy global but not on the list; it would read arbitrary files
    body = b"\x80\x02cnumpy\nload\nq\x00."
    (tmp_path / "n.bin").write_bytes(body)
    with pytest.raises(InputError, match="numpy.load"):
        load_verification_bin(tmp_path / "n.bin")


def test_truncated_file(tmp_path: Path) -> None:
    write_verification_bin(tmp_path / "t.bin", [png_bytes(a) for a in images(4)], [True, False])
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.bin"):
        load_verification_bin(tmp_path / "t.bin")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.bin"):
        load_verification_bin(tmp_path / "nope.bin")


def test_wrong_image_size_is_not_resized(tmp_path: Path) -> None:
    write_verification_bin(tmp_path / "s.bin", [png_bytes(a) for a in images(2, size=96)], [True])
    with pytest.raises(InputError, match=r"96x96.*112x112"):
        load_verification_bin(tmp_path / "s.bin")
    assert load_verification_bin(tmp_path / "s.bin", image_size=96).images.shape == (2, 96, 96, 3)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"bins": []}, "pair"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", b"b"], [0.5]), "boolean"),
        (([b"a", 3], [True]), "image 0|image 1"),
        (([], []), "no pairs"),
    ],
)
def test_bad_structure(tmp_path: Path, obj: object, match: str) -> None:
    (tmp_path / "b.bin").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(InputError, match=match):
        load_verification_bin(tmp_path / "b.bin")


def test_undecodable_image(tmp_path: Path) -> None:
    (tmp_path / "u.bin").write_bytes(pickle.dumps(([b"garbage", b"garbage"], [True])))
    with pytest.raises(InputError, match="image 0.*does not decode"):
        load_verification_bin(tmp_path / "u.bin")


def test_numpy1_module_spelling_loads(tmp_path: Path) -> None:
    arrs = images(2)
    bins = [np.frombuffer(png_bytes(a), dtype=np.uint8).copy() for a in arrs]
    data = pickle.dumps((bins, [False]), protocol=2)
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in data  # protocol 2 names globals as text lines
    old = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # as numpy<2 wrote it
    (tmp_path / "cfp_fp.bin").write_bytes(old)
    vs = load_verification_bin(tmp_path / "cfp_fp.bin")
    np.testing.assert_array_equal(vs.images, np.stack(arrs))


def test_numpy_bool_issame_list(tmp_path: Path) -> None:
    encoded = [png_bytes(a) for a in images(4)]
    (tmp_path / "nb.bin").write_bytes(pickle.dumps((encoded, [np.bool_(False), np.bool_(True)]), protocol=2))
    assert load_verification_bin(tmp_path / "nb.bin").issame.tolist() == [False, True]
