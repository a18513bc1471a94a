"""InsightFace verification ``.bin`` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), loaded safely.

A ``.bin`` is ``pickle.dump((bins, issame_list))``: ``2N`` encoded images (raw ``bytes`` or uint8 arrays
from ``cv2.imencode``) where pair ``i`` is ``(bins[2i], bins[2i+1])``, and ``N`` bools (data.md §1.8).
Raw ``pickle.load`` on a downloaded file runs arbitrary code, so the unpickler here admits only the
few globals that numpy array reconstruction needs and rejects everything else before it is called.
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distill.atomic import write_bytes
from distill.data.recordio import decode_rgb
from distill.errors import InputError


@dataclass
class VerificationSet:
    """Decoded verification pairs: images ``(2N, H, W, 3)`` uint8 RGB, pair i = rows 2i and 2i+1."""

    name: str
    images: np.ndarray
    issame: np.ndarray


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """numpy's array-rebuilding helpers under both module spellings (numpy 2 and numpy 1).

    Protocol <= 4 pickles rebuild arrays with ``multiarray._reconstruct``; protocol 5 (what
    ``pickle.HIGHEST_PROTOCOL`` gives on Python >= 3.8) uses ``numeric._frombuffer`` instead;
    ``multiarray.scalar`` rebuilds numpy scalars. None of them can call anything else.
    """
    sample = np.zeros(1, dtype=np.uint8)
    reconstruct = sample.__reduce_ex__(2)[0]  # numpy's own functions, whatever module they live in
    frombuffer = sample.__reduce_ex__(5)[0]
    scalar = np.bool_(True).__reduce__()[0]  # numpy scalars, e.g. an issame list of np.bool_
    return {
        ("numpy._core.multiarray", "scalar"): scalar,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh: io.BufferedIOBase, path: Path, **kwargs: Any):
        super().__init__(fh, **kwargs)
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise InputError(
                f"{self._path}: refusing to unpickle global {module}.{name} "
                "(a verification .bin may only contain images, bools and numpy arrays)"
            ) from None


def _unpickle(path: Path, data: bytes) -> Any:
    def load(**kwargs: Any) -> Any:
        return _RestrictedUnpickler(io.BytesIO(data), path, **kwargs).load()

    try:
        try:
            return load()
        except UnicodeDecodeError:
            return load(encoding="bytes")  # Python-2 pickles hold JPEG bytes as str (insightface's fallback)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pickles raise many types
        raise InputError(f"{path}: not a readable verification .bin ({type(exc).__name__}: {exc})") from None


def _as_bytes(item: Any, path: Path, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise InputError(f"{path}: image {i} is a {type(item).__name__}, expected bytes or a uint8 array")


def load_verification_bin(path: str | os.PathLike, image_size: int | None = 112) -> VerificationSet:
    """Load and decode a ``.bin``; images of another size are an error (``None`` accepts any one size)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: verification file not found") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc})") from None
    obj = _unpickle(p, data)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise InputError(f"{p}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise InputError(f"{p}: expected (list of images, list of bools)")
    issame_arr = np.asarray(issame)
    if issame_arr.ndim != 1 or not (issame_arr.dtype == bool or np.isin(issame_arr, (0, 1)).all()):
        raise InputError(f"{p}: issame_list must be a flat list of booleans")
    if len(issame_arr) == 0:
        raise InputError(f"{p}: contains no pairs")
    if len(bins) != 2 * len(issame_arr):
        raise InputError(
            f"{p}: has {len(bins)} images for {len(issame_arr)} pairs (expected {2 * len(issame_arr)})"
        )
    images = None
    for i, item in enumerate(bins):
        rgb = decode_rgb(_as_bytes(item, p, i), f"{p} image {i}", image_size)
        if images is None:
            images = np.empty((len(bins), *rgb.shape), dtype=np.uint8)
        elif rgb.shape != images.shape[1:]:
            raise InputError(
                f"{p}: image {i} is {rgb.shape[1]}x{rgb.shape[0]} but image 0 is "
                f"{images.shape[2]}x{images.shape[1]}"
            )
        images[i] = rgb
    return VerificationSet(name=p.stem, images=images, issame=issame_arr.astype(bool))


def write_verification_bin(path: str | os.PathLike, encoded_images: list[bytes], issame: list[bool]) -> None:
    """Write a ``.bin`` readable by insightface's ``load_bin`` (pickle, highest protocol, atomic)."""
    bins = [bytes(b) for b in encoded_images]
    same = [bool(s) for s in issame]
    if len(bins) != 2 * len(same):
        raise ValueError(f"{len(bins)} images for {len(same)} pairs; need exactly two per pair")
    write_bytes(path, pickle.dumps((bins, same), protocol=pickle.HIGHEST_PROTOCOL))
