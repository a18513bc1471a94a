"""MXNet/dmlc RecordIO (InsightFace ``train.rec`` / ``train.idx``) without mxnet.

mxnet cannot be installed next to numpy>=1.24, yet every public face training set ships in this
container, so we read and write it ourselves, byte for byte as dmlc-core does (data.md §1.2-1.7):

* a record is one or more chunks ``<u32 magic 0xced7230a><u32 lrec><payload><zero pad to 4>``,
  ``lrec = cflag << 29 | length``; cflag 0 = whole record, 1/2/3 = first/middle/last chunk;
* the writer splits a record wherever the magic word sits at a 4-byte-aligned payload offset and
  drops those 4 bytes; the reader puts them back after every chunk with cflag 1 or 2;
* the payload starts with the 24-byte IRHeader ``<IfQQ`` (flag, label, id, id2); ``flag > 0`` means
  ``flag`` float32 labels follow the header, then the encoded image;
* ``train.idx`` has one ``"<key>\\t<offset>\\n"`` line per record.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import atomic_path, write_text
from distill.errors import InputError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
MAX_RECORD = 1 << 29
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
_CHUNK_HEAD = struct.Struct("<II")


@dataclass
class IRHeader:
    """The image-record header; ``label``: a float if ``flag == 0``, else ``flag`` float32 values."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def read_index(idx_path: str | os.PathLike) -> dict[int, int]:
    """Parse a ``.idx`` file into ``{key: byte offset}`` in file order."""
    path = Path(idx_path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise InputError(f"{path}: index file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read index file ({exc})") from None
    index: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            if len(parts) != 2:
                raise ValueError
            key, offset = int(parts[0]), int(parts[1])
        except ValueError:
            raise InputError(f"{path}: line {lineno} is not '<key>\\t<offset>': {line[:60]!r}") from None
        if offset < 0 or offset % 4:
            raise InputError(f"{path}: line {lineno}: offset {offset} is not a 4-byte-aligned position")
        if key in index:
            raise InputError(f"{path}: line {lineno}: key {key} appears twice")
        index[key] = offset
    return index


class RecordIOReader:
    """Random access to the records of a ``.rec`` file through its ``.idx``.

    The file handle is opened lazily and re-opened after a fork or unpickling, so one reader can be
    shipped to DataLoader worker processes.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        if not self.rec_path.is_file():
            raise InputError(f"{self.rec_path}: record file not found")
        self.index = read_index(self.idx_path)
        self.size = self.rec_path.stat().st_size
        for key, offset in self.index.items():
            if offset + _CHUNK_HEAD.size > self.size:
                raise InputError(
                    f"{self.idx_path}: key {key} points at offset {offset}, past the end of "
                    f"{self.rec_path.name} ({self.size} bytes; truncated file?)"
                )
        self._fh: io.BufferedReader | None = None
        self._pid = -1

    @property
    def keys(self) -> list[int]:
        """Keys in ``.idx`` file order (what mxnet's ``MXIndexedRecordIO.keys`` gives)."""
        return list(self.index)

    def _file(self) -> io.BufferedReader:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for random access
            self._pid = os.getpid()
        return self._fh

    def _offset(self, key: int) -> int:
        try:
            return self.index[key]
        except KeyError:
            raise InputError(f"{self.idx_path}: key {key} is not in the index") from None

    def _chunk_head(self, fh: io.BufferedReader, key: int) -> tuple[int, int]:
        pos = fh.tell()
        head = fh.read(_CHUNK_HEAD.size)
        if len(head) != _CHUNK_HEAD.size:
            raise InputError(f"{self.rec_path}: record {key} is truncated at byte {pos}")
        magic, lrec = _CHUNK_HEAD.unpack(head)
        if magic != MAGIC:
            raise InputError(f"{self.rec_path}: bad magic 0x{magic:08x} at byte {pos} (record {key})")
        return lrec >> 29, lrec & LENGTH_MASK

    def read(self, key: int) -> bytes:
        """The payload of record ``key``, chunks joined with the escaped magic words restored."""
        fh = self._file()
        fh.seek(self._offset(key))
        parts: list[bytes] = []
        first = True
        while True:
            cflag, length = self._chunk_head(fh, key)
            if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
                raise InputError(f"{self.rec_path}: record {key} has a chunk with unexpected cflag {cflag}")
            padded = (length + 3) & ~3
            body = fh.read(padded)
            if len(body) != padded:
                raise InputError(f"{self.rec_path}: record {key} is truncated (file ends mid-record)")
            parts.append(body[:length])
            if cflag in (0, 3):
                return b"".join(parts)
            parts.append(MAGIC_BYTES)
            first = False

    def read_head(self, key: int, nbytes: int) -> bytes:
        """At least the first ``nbytes`` of the payload (fewer if the record is shorter), read cheaply.

        Used to collect labels without reading every image; falls back to a full read for the rare
        record whose first chunk is shorter than ``nbytes``.
        """
        fh = self._file()
        fh.seek(self._offset(key))
        cflag, length = self._chunk_head(fh, key)
        if cflag == 0 or (cflag == 1 and length >= nbytes):
            want = min(length, nbytes)
            data = fh.read(want)
            if len(data) != want:
                raise InputError(f"{self.rec_path}: record {key} is truncated (file ends mid-record)")
            return data
        return self.read(key)[:nbytes]

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = -1
        return state


def unpack_record(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split a payload into its IRHeader and the image bytes (mxnet ``recordio.unpack``)."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"record payload has {len(payload)} bytes, shorter than the {IR_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack(IR_FORMAT, payload[:IR_SIZE])
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise ValueError(f"record header says {flag} labels but only {len(rest)} bytes follow")
        labels = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, labels, id1, id2), rest[4 * flag :]
    return IRHeader(flag, float(label), id1, id2), rest


def pack_record(
    header_label: float | Iterable[float] | np.ndarray, image_bytes: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """Build a payload with mxnet's ``pack`` rules.

    A scalar label goes in the header float with flag 0; an array label sets ``flag = len`` with the
    header float 0 and the float32 values prepended to the image bytes.
    """
    if isinstance(header_label, (int, float, np.integer, np.floating)):
        return struct.pack(IR_FORMAT, 0, float(header_label), id, id2) + bytes(image_bytes)
    labels = np.asarray(header_label, dtype="<f4").ravel()
    return struct.pack(IR_FORMAT, labels.size, 0.0, id, id2) + labels.tobytes() + bytes(image_bytes)


def encode_chunks(payload: bytes) -> bytes:
    """The on-disk bytes of one record: dmlc ``RecordIOWriter::WriteRecord``."""
    size = len(payload)
    if size >= MAX_RECORD:
        raise ValueError(f"RecordIO records must be shorter than 2^29 bytes, got {size}")
    out = bytearray()
    start = 0
    lower_align = size & ~3
    pos = payload.find(MAGIC_BYTES, 0, lower_align)
    while pos != -1:
        if pos % 4 == 0:
            out += _CHUNK_HEAD.pack(MAGIC, (1 if start == 0 else 2) << 29 | (pos - start))
            out += payload[start:pos]
            start = pos + 4
            pos = payload.find(MAGIC_BYTES, start, lower_align)
        else:
            pos = payload.find(MAGIC_BYTES, pos + 1, lower_align)
    out += _CHUNK_HEAD.pack(MAGIC, (3 if start else 0) << 29 | (size - start))
    out += payload[start:]
    out += b"\0" * (-size % 4)
    return bytes(out)


class RecordIOWriter:
    """Write ``.rec`` + ``.idx`` to temporary files; both appear under their names only at ``close()``.

    Use as a context manager: an exception inside the block calls ``abort()`` and leaves no file behind.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike):
        self._stack = contextlib.ExitStack()
        try:
            tmp_rec = self._stack.enter_context(atomic_path(rec_path))
            tmp_idx = self._stack.enter_context(atomic_path(idx_path))
            self._rec = self._stack.enter_context(open(tmp_rec, "wb"))
            self._idx = self._stack.enter_context(open(tmp_idx, "w", encoding="ascii", newline="\n"))
        except BaseException:
            self._stack.close()
            raise
        self._keys: set[int] = set()
        self._pos = 0
        self.closed = False

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; returns its byte offset."""
        if self.closed:
            raise ValueError("RecordIOWriter is closed")
        key = int(key)
        if key in self._keys:
            raise ValueError(f"duplicate RecordIO key {key}")
        data = encode_chunks(payload)
        offset = self._pos
        self._rec.write(data)
        self._pos += len(data)
        self._idx.write(f"{key}\t{offset}\n")
        self._keys.add(key)
        return offset

    def close(self) -> None:
        """Flush and atomically publish both files."""
        if not self.closed:
            self.closed = True
            self._stack.close()

    def abort(self) -> None:
        """Discard everything written so far; the target paths are left untouched."""
        if not self.closed:
            self.closed = True
            err = RuntimeError("RecordIOWriter aborted")
            self._stack.__exit__(type(err), err, None)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_insightface_rec(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[int, bytes]],
    num_classes: int,
    image_size: int = 112,
) -> dict[str, int]:
    """Write ``train.rec``/``train.idx``/``property`` in InsightFace layout A.

    Keys 1..N hold images (scalar label, ``id = key``), keys N+1..N+K hold each identity's half-open
    image-key range ``[start, end)`` (empty identities get ``[0, 0)``), key 0 holds
    ``[N+1, N+1+K]``. ``items`` must be grouped by label so the ranges are contiguous; key 0 and the
    identity records are written after the images so the input can be streamed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranges: dict[int, list[int]] = {}
    n = 0
    last_label: int | None = None
    with RecordIOWriter(out / "train.rec", out / "train.idx") as writer:
        for label, image in items:
            label = int(label)
            if not 0 <= label < num_classes:
                raise ValueError(f"label {label} outside [0, {num_classes})")
            n += 1
            if label != last_label:
                if label in ranges:
                    raise ValueError(
                        f"items are not grouped by label: label {label} appears again at item {n}"
                    )
                ranges[label] = [n, n]
                last_label = label
            ranges[label][1] = n + 1
            writer.write(n, pack_record(float(label), image, id=n, id2=0))
        for k in range(num_classes):
            start, end = ranges.get(k, (0, 0))
            writer.write(n + 1 + k, pack_record([float(start), float(end)], b"", id=n + 1 + k, id2=0))
        writer.write(0, pack_record([float(n + 1), float(n + 1 + num_classes)], b"", id=0, id2=0))
    write_text(out / "property", f"{num_classes},{image_size},{image_size}\n")
    return {"images": n, "identities": num_classes}


JPEG_DECODER_ENV = "FACEKD_JPEG_DECODER"
JPEG_DECODERS = ("auto", "pil", "simplejpeg")


@functools.lru_cache(maxsize=1)
def _simplejpeg() -> Any | None:
    """The optional ``simplejpeg`` module (libjpeg-turbo bindings), or None when it is not installed."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def jpeg_decoder() -> str:
    """The JPEG decoder in use: ``"simplejpeg"`` when installed, else ``"pil"``.

    ``FACEKD_JPEG_DECODER=pil`` forces Pillow; ``=simplejpeg`` requires simplejpeg (InputError without it).
    Both decode with libjpeg-turbo's accurate integer IDCT and fancy upsampling, so the pixels are the
    same (``tests/test_data_throughput.py``); simplejpeg skips Pillow's per-image overhead (~2.5x faster on
    112x112 crops, ``benchmarks/results/data_throughput.md``).
    """
    choice = (os.environ.get(JPEG_DECODER_ENV, "") or "auto").strip().lower()
    if choice not in JPEG_DECODERS:
        raise InputError(f"{JPEG_DECODER_ENV}={choice!r}: expected one of {', '.join(JPEG_DECODERS)}")
    if choice == "pil":
        return "pil"
    if _simplejpeg() is None:
        if choice == "simplejpeg":
            raise InputError(
                f"{JPEG_DECODER_ENV}=simplejpeg but simplejpeg is not installed (pip install simplejpeg)"
            )
        return "pil"
    return "simplejpeg"


def _decode_simplejpeg(data: bytes) -> np.ndarray | None:
    """RGB pixels of a plain (YCbCr or grayscale) JPEG through simplejpeg; None to leave it to Pillow.

    Anything else (CMYK, Adobe RGB, 12-bit, a corrupt or truncated stream: simplejpeg's strict mode turns
    libjpeg warnings into errors) goes to Pillow, which decodes it or raises the project's error.
    """
    sj = _simplejpeg()
    if sj is None or data[:2] != b"\xff\xd8":
        return None
    try:
        if sj.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
            return None
        return sj.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    except ValueError:
        return None


def decode_rgb(
    data: bytes, where: str, image_size: int | None = 112, decoder: str | None = None
) -> np.ndarray:
    """Decode an encoded image to HxWx3 uint8 RGB; ``where`` names the source in error messages.

    ``decoder``: ``"pil"`` or ``"simplejpeg"`` (JPEGs only, Pillow for the rest); default
    :func:`jpeg_decoder`.
    """
    rgb_array = _decode_simplejpeg(data) if (decoder or jpeg_decoder()) == "simplejpeg" else None
    if rgb_array is None:
        rgb_array = _decode_pil(data, where)
    if image_size is not None and rgb_array.shape[:2] != (image_size, image_size):
        h, w = rgb_array.shape[:2]
        raise InputError(
            f"{where}: image is {w}x{h}, expected {image_size}x{image_size} (aligned crops, not resized)"
        )
    return rgb_array


def _decode_pil(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgb = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad data
        raise InputError(f"{where}: image does not decode ({type(exc).__name__}: {exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


class RecFaceDataset:
    """An InsightFace training set (``train.rec`` + ``train.idx``) read like arcface_torch's MXFaceDataset.

    Layout A (key 0 has ``flag > 0``) uses image keys ``1 .. label[0]-1``; layout B uses every key in
    ``.idx`` order. Usable as a torch map-style dataset and picklable (the file opens per process).
    """

    def __init__(self, root_dir: str | os.PathLike, image_size: int | None = 112):
        root = Path(root_dir)
        if root.suffix == ".rec" and not root.is_dir():
            rec, idx = root, root.with_suffix(".idx")
        else:
            rec, idx = root / "train.rec", root / "train.idx"
        if not rec.is_file():
            raise InputError(f"{rec}: record file not found")
        if not idx.is_file():
            raise InputError(f"{idx}: index file not found (needed next to {rec.name})")
        self.root = rec.parent
        self.image_size = image_size
        self.reader = RecordIOReader(rec, idx)
        index = self.reader.index
        header = None
        if 0 in index:
            header, _ = self._unpack(0, self.reader.read(0))
        if header is not None and header.flag > 0:
            first = float(np.asarray(header.label).ravel()[0])
            if not math.isfinite(first) or first < 1:
                raise InputError(f"{rec}: header record 0 has an invalid image-key bound {first}")
            end = int(first)
            missing = [k for k in range(1, end) if k not in index]
            if missing:
                raise InputError(
                    f"{idx}: header record says image keys 1..{end - 1} but {len(missing)} are missing "
                    f"from the index (first: {missing[0]})"
                )
            self.keys = np.arange(1, end, dtype=np.int64)
        else:
            self.keys = np.asarray(list(index), dtype=np.int64)
        if len(self.keys) == 0:
            raise InputError(f"{rec}: contains no image records")
        self._labels: np.ndarray | None = None

    def _unpack(self, key: int, payload: bytes) -> tuple[IRHeader, bytes]:
        try:
            return unpack_record(payload)
        except ValueError as exc:
            raise InputError(f"{self.reader.rec_path}: record {key}: {exc}") from None

    def _label_of(self, key: int, header: IRHeader) -> int:
        label = header.label
        value = float(np.asarray(label).ravel()[0]) if isinstance(label, np.ndarray) else float(label)
        if not math.isfinite(value):
            raise InputError(f"{self.reader.rec_path}: record {key} has a non-finite label {value}")
        return int(value)  # torch.tensor(x, dtype=torch.long) truncates toward zero

    def _head_label(self, key: int, head: bytes) -> int:
        """The label from the first bytes of a payload (header + first float label)."""
        if len(head) < IR_SIZE:
            raise InputError(
                f"{self.reader.rec_path}: record {key} is shorter than its {IR_SIZE}-byte header"
            )
        flag, label, _, _ = struct.unpack(IR_FORMAT, head[:IR_SIZE])
        if flag > 0:
            if len(head) < IR_SIZE + 4:
                raise InputError(
                    f"{self.reader.rec_path}: record {key} header says {flag} labels but has none"
                )
            (label,) = struct.unpack("<f", head[IR_SIZE : IR_SIZE + 4])
        if not math.isfinite(label):
            raise InputError(f"{self.reader.rec_path}: record {key} has a non-finite label {label}")
        return int(label)  # torch.tensor(x, dtype=torch.long) truncates toward zero

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def labels(self) -> np.ndarray:
        """int64 label per image (``label[0]`` for array labels), read once from the record headers."""
        if self._labels is None:
            out = np.empty(len(self.keys), dtype=np.int64)
            for i, key in enumerate(self.keys.tolist()):
                out[i] = self._head_label(key, self.reader.read_head(key, IR_SIZE + 4))
            if (out < 0).any():
                bad = int(self.keys[int(np.argmax(out < 0))])
                raise InputError(f"{self.reader.rec_path}: record {bad} has a negative label")
            self._labels = out
        return self._labels

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def read_encoded(self, i: int) -> bytes:
        """The stored (JPEG) bytes of image ``i``."""
        key = int(self.keys[i])
        _, image = self._unpack(key, self.reader.read(key))
        return image

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        key = int(self.keys[i])
        header, image = self._unpack(key, self.reader.read(key))
        rgb = decode_rgb(image, f"{self.reader.rec_path} record {key}", self.image_size)
        return rgb, self._label_of(key, header)

    def close(self) -> None:
        self.reader.close()
