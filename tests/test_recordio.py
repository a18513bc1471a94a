"""RecordIO against hand-built bytes (data.md §1.3-1.7), not against our own writer's output."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.data.recordio import (
    RecFaceDataset,
    RecordIOReader,
    RecordIOWriter,
    pack_record,
    read_index,
    unpack_record,
    write_insightface_rec,
)
from distill.errors import InputError

MAGIC_LE = bytes([0x0A, 0x23, 0xD7, 0xCE])  # 0xced7230a little-endian, as on disk


def chunk(cflag: int, body: bytes, pad: bool = True) -> bytes:
    """One chunk exactly as dmlc writes it: magic, lrec, body, zero pad to 4."""
    lrec = (cflag << 29) | len(body)
    out = MAGIC_LE + struct.pack("<I", lrec) + body
    if pad:
        out += b"\0" * ((4 - len(body) % 4) % 4)
    return out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def face(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def scan_records(data: bytes) -> list[tuple[int, bytes]]:
    """An independent sequential reader: (offset, payload) of every record in file order."""
    out, pos = [], 0
    while pos < len(data):
        start, parts = pos, []
        while True:
            magic, lrec = struct.unpack_from("<II", data, pos)
            assert magic == 0xCED7230A
            cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(data[pos + 8 : pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
            parts.append(MAGIC_LE)
        out.append((start, b"".join(parts)))
    return out


# ---------------------------------------------------------------- writer bytes


def test_writer_escapes_aligned_magic_exactly_like_dmlc(tmp_path: Path) -> None:
    # magic at aligned offsets 0, 8 and at the last aligned slot; one unaligned copy at 13 must stay inline
    payload = MAGIC_LE + b"abcd" + MAGIC_LE + b"x" + MAGIC_LE + b"yz" + b"01234" + MAGIC_LE + b"q"
    assert payload.find(MAGIC_LE, 9) == 13 and payload.find(MAGIC_LE, 14) == 24
    plain = b"hello"
    expected = (
        chunk(1, b"")  # magic at 0: empty first chunk
        + chunk(2, b"abcd")  # up to the magic at 8
        + chunk(2, b"x" + MAGIC_LE + b"yz01234")  # unaligned copy kept; ends at the aligned magic at 24
        + chunk(3, b"q")  # remainder, padded
    )
    expected_plain = chunk(0, plain)
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        w.write(7, payload)
        w.write(3, plain)
    assert (tmp_path / "a.rec").read_bytes() == expected + expected_plain
    assert (tmp_path / "a.idx").read_text() == f"7\t0\n3\t{len(expected)}\n"


def test_writer_magic_in_last_aligned_slot_gives_empty_last_chunk(tmp_path: Path) -> None:
    payload = b"abcd" + MAGIC_LE
    with RecordIOWriter(tmp_path / "b.rec", tmp_path / "b.idx") as w:
        w.write(0, payload)
    assert (tmp_path / "b.rec").read_bytes() == chunk(1, b"abcd") + chunk(3, b"")
    with RecordIOReader(tmp_path / "b.rec", tmp_path / "b.idx") as r:
        assert r.read(0) == payload


def test_reader_reassembles_hand_built_multichunk_record(tmp_path: Path) -> None:
    data = chunk(0, b"first") + chunk(1, b"AAAA") + chunk(2, b"BBBBBBBB") + chunk(3, b"CC") + chunk(0, b"")
    offsets = [0, len(chunk(0, b"first")), len(data) - 8]
    (tmp_path / "h.rec").write_bytes(data)
    (tmp_path / "h.idx").write_text(
        "".join(f"{k}\t{o}\n" for k, o in zip([10, 20, 30], offsets, strict=True))
    )
    with RecordIOReader(tmp_path / "h.rec", tmp_path / "h.idx") as r:
        assert r.keys == [10, 20, 30]
        assert r.read(10) == b"first"
        assert r.read(20) == b"AAAA" + MAGIC_LE + b"BBBBBBBB" + MAGIC_LE + b"CC"
        assert r.read(30) == b""
        assert r.read_head(20, 6) == b"AAAA" + MAGIC_LE[:2]  # first chunk too short: full read path
        with pytest.raises(InputError, match="key 99"):
            r.read(99)


def test_random_payloads_round_trip_and_match_independent_scan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = []
    for i in range(40):
        n = int(rng.integers(0, 64))
        b = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        for _ in range(int(rng.integers(0, 3))):  # plant magic words, aligned or not
            if n >= 4:
                at = int(rng.integers(0, n - 3))
                b[at : at + 4] = MAGIC_LE
        payloads.append(bytes(b))
        if i == 0:
            payloads[0] = MAGIC_LE * 4
    with RecordIOWriter(tmp_path / "r.rec", tmp_path / "r.idx") as w:
        for k, p in enumerate(payloads):
            w.write(k, p)
    scanned = scan_records((tmp_path / "r.rec").read_bytes())
    assert [p for _, p in scanned] == payloads
    index = read_index(tmp_path / "r.idx")
    assert index == {k: off for k, (off, _) in enumerate(scanned)}
    with RecordIOReader(tmp_path / "r.rec", tmp_path / "r.idx") as r:
        for k, p in enumerate(payloads):
            assert r.read(k) == p


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with RecordIOWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
            w.write(0, b"data")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_publishes_only_at_close(tmp_path: Path) -> None:
    w = RecordIOWriter(tmp_path / "y.rec", tmp_path / "y.idx")
    w.write(0, b"abc")
    assert not (tmp_path / "y.rec").exists() and not (tmp_path / "y.idx").exists()
    w.close()
    assert (tmp_path / "y.rec").read_bytes() == chunk(0, b"abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.idx", "y.rec"]


# ---------------------------------------------------------------- IRHeader pack/unpack


def test_pack_scalar_label_forces_flag_zero() -> None:
    got = pack_record(5.0, b"IMG", id=3, id2=9)
    assert got == struct.pack("<IfQQ", 0, 5.0, 3, 9) + b"IMG"
    header, img = unpack_record(got)
    assert (header.flag, header.label, header.id, header.id2, img) == (0, 5.0, 3, 9, b"IMG")


def test_pack_array_label_prepends_floats() -> None:
    got = pack_record([7.0, 1.0], b"JPG", id=4)
    assert got == struct.pack("<IfQQ", 2, 0.0, 4, 0) + struct.pack("<ff", 7.0, 1.0) + b"JPG"
    header, img = unpack_record(got)
    assert header.flag == 2 and img == b"JPG"
    np.testing.assert_array_equal(header.label, np.array([7.0, 1.0], np.float32))


def test_unpack_rejects_short_payload() -> None:
    with pytest.raises(ValueError):
        unpack_record(b"\0" * 10)
    with pytest.raises(ValueError):
        unpack_record(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)  # 3 labels, room for 2


# ---------------------------------------------------------------- layout A writer


def test_write_insightface_rec_layout_a(tmp_path: Path) -> None:
    imgs = [jpeg_bytes(face(i)) for i in range(5)]
    items = [(0, imgs[0]), (0, imgs[1]), (1, imgs[2]), (2, imgs[3]), (2, imgs[4])]
    write_insightface_rec(tmp_path, items, num_classes=3)
    assert (tmp_path / "property").read_text() == "3,112,112\n"
    scanned = scan_records((tmp_path / "train.rec").read_bytes())
    by_offset = dict(scanned)
    index = read_index(tmp_path / "train.idx")
    assert sorted(index) == list(range(0, 5 + 3 + 1))
    recs = {k: by_offset[off] for k, off in index.items()}
    # key 0: flag 2, labels [N+1, N+1+K], no image
    assert recs[0] == struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<ff", 6.0, 9.0)
    # images: keys 1..5, scalar label, id = key
    for k, (label, img) in enumerate(items, start=1):
        assert recs[k] == struct.pack("<IfQQ", 0, float(label), k, 0) + img
    # identity records: [start, end) of image keys
    for label, (start, end) in enumerate([(1, 3), (3, 4), (4, 6)]):
        key = 6 + label
        assert recs[key] == struct.pack("<IfQQ", 2, 0.0, key, 0) + struct.pack("<ff", start, end)


def test_write_insightface_rec_requires_grouped_labels(tmp_path: Path) -> None:
    img = jpeg_bytes(face(0))
    with pytest.raises(ValueError, match="grouped"):
        write_insightface_rec(tmp_path, [(0, img), (1, img), (0, img)], num_classes=2)
    assert not (tmp_path / "train.rec").exists()


# ---------------------------------------------------------------- RecFaceDataset


def test_dataset_layout_a_reads_images_and_labels(tmp_path: Path) -> None:
    arrays = [face(i) for i in range(6)]
    labels = [0, 0, 1, 1, 1, 2]
    write_insightface_rec(tmp_path, [(lab, png_bytes(a)) for lab, a in zip(labels, arrays, strict=True)], 3)
    ds = RecFaceDataset(tmp_path)
    assert len(ds) == 6
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    assert ds.num_classes == 3
    img, lab = ds[4]
    assert img.dtype == np.uint8 and img.shape == (112, 112, 3) and lab == 1
    np.testing.assert_array_equal(img, arrays[4])  # PNG is lossless and RGB order is kept
    assert ds.read_encoded(2) == png_bytes(arrays[2])
    assert len(RecFaceDataset(tmp_path / "train.rec")) == 6  # the .rec path works too


def test_dataset_layout_b_and_array_labels_truncate(tmp_path: Path) -> None:
    # flat layout (RecBuilder / shuffle_rec): keys from 0, no header record; labels as arrays [label, aligned]
    arrays = [face(10 + i) for i in range(3)]
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write(0, pack_record(2.9, png_bytes(arrays[0]), id=0))  # scalar -> flag 0 -> layout B
        w.write(1, pack_record([4.7, 1.0], png_bytes(arrays[1]), id=1))
        w.write(2, pack_record(0.0, png_bytes(arrays[2]), id=2))
    ds = RecFaceDataset(tmp_path)
    assert len(ds) == 3
    assert ds.labels.tolist() == [2, 4, 0]  # truncation toward zero like torch.long
    assert ds.num_classes == 5
    img, lab = ds[1]
    assert lab == 4
    np.testing.assert_array_equal(img, arrays[1])


def test_dataset_decodes_jpeg_to_rgb(tmp_path: Path) -> None:
    arr = np.zeros((112, 112, 3), np.uint8)
    arr[..., 0] = 220  # pure red: a BGR/RGB swap would show up as blue
    write_insightface_rec(tmp_path, [(0, jpeg_bytes(arr, 95))], 1)
    img, _ = RecFaceDataset(tmp_path)[0]
    assert img[..., 0].mean() > 200 and img[..., 2].mean() < 20


def test_dataset_is_picklable_and_reopens(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path, [(0, png_bytes(face(1))), (1, png_bytes(face(2)))], 2)
    ds = RecFaceDataset(tmp_path)
    first = ds[1][0]  # opens the file handle
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[1][0], first)
    assert clone.labels.tolist() == [0, 1]


def test_dataset_works_in_dataloader_workers(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    write_insightface_rec(tmp_path, [(i // 2, png_bytes(face(i))) for i in range(6)], 3)
    ds = RecFaceDataset(tmp_path)
    ds[0]  # a handle opened in the parent must not travel to the workers (pickled without it)
    # spawn, not fork: forking after JAX/litert threads started (other tests) can deadlock
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2]


# ---------------------------------------------------------------- errors


def _small_set(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path, [(0, png_bytes(face(1))), (1, png_bytes(face(2)))], 2)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="train.rec"):
        RecFaceDataset(tmp_path)
    _small_set(tmp_path)
    (tmp_path / "train.idx").unlink()
    with pytest.raises(InputError, match="train.idx"):
        RecFaceDataset(tmp_path)


def test_truncated_rec(tmp_path: Path) -> None:
    _small_set(tmp_path)
    rec = tmp_path / "train.rec"
    data = rec.read_bytes()
    cut = read_index(tmp_path / "train.idx")[2] + 30  # inside image record 2
    rec.write_bytes(data[:cut])
    with pytest.raises(InputError, match="past the end"):  # key 0 and the identity records are gone
        RecFaceDataset(tmp_path)
    rec.write_bytes(data)
    ds = RecFaceDataset(tmp_path)
    ds.close()
    rec.write_bytes(data[:cut])  # the file shrinks after the index was checked
    with pytest.raises(InputError, match="truncated"):
        ds[1]


def test_offset_past_end(tmp_path: Path) -> None:
    _small_set(tmp_path)
    size = (tmp_path / "train.rec").stat().st_size
    with open(tmp_path / "train.idx", "a") as fh:
        fh.write(f"99\t{size + 400}\n")
    with pytest.raises(InputError, match="past the end"):
        RecFaceDataset(tmp_path)


def test_bad_magic(tmp_path: Path) -> None:
    _small_set(tmp_path)
    rec = tmp_path / "train.rec"
    data = bytearray(rec.read_bytes())
    off = read_index(tmp_path / "train.idx")[1]
    data[off : off + 4] = b"\xde\xad\xbe\xef"
    rec.write_bytes(bytes(data))
    ds = RecFaceDataset(tmp_path)
    with pytest.raises(InputError, match="magic"):
        ds[0]


def test_idx_missing_image_key(tmp_path: Path) -> None:
    _small_set(tmp_path)
    idx = tmp_path / "train.idx"
    lines = [ln for ln in idx.read_text().splitlines(keepends=True) if not ln.startswith("2\t")]
    idx.write_text("".join(lines))
    with pytest.raises(InputError, match="missing"):
        RecFaceDataset(tmp_path)


def test_malformed_idx(tmp_path: Path) -> None:
    _small_set(tmp_path)
    (tmp_path / "train.idx").write_text("0\t0\nnot a line\n")
    with pytest.raises(InputError, match="line 2"):
        RecFaceDataset(tmp_path)


def test_image_that_does_not_decode(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path, [(0, b"definitely not a jpeg")], 1)
    with pytest.raises(InputError, match="does not decode"):
        RecFaceDataset(tmp_path)[0]


def test_wrong_image_size_is_reported(tmp_path: Path) -> None:
    write_insightface_rec(tmp_path, [(0, png_bytes(face(0, size=100)))], 1)
    with pytest.raises(InputError, match=r"100x100.*112x112"):
        RecFaceDataset(tmp_path)[0]
