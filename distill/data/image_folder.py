"""Plain folders of aligned face crops, for users whose data is not in RecordIO.

Training folder: one sub-folder per identity; the sorted folder names get labels ``0..K-1``; images
are ``.jpg``/``.jpeg``/``.png``/``.bmp`` (any case), read in sorted name order. Crops must already be
aligned to the target size (112x112 by default): nothing is resized, a wrong size is an error.

Verification folder: a ``pairs.txt`` beside the images, one pair per line::

    relpath1<TAB>relpath2<TAB>1|0

paths relative to the folder, ``1`` = same identity, ``0`` = different. Blank lines and lines starting
with ``#`` are ignored. Pairs keep their file order, so the 10 evaluation folds are contiguous blocks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distill.data.recordio import decode_rgb
from distill.data.verification_bin import VerificationSet
from distill.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


class ImageFolderFaces:
    """Identity-per-folder training set with the same interface as ``RecFaceDataset``."""

    def __init__(self, root: str | os.PathLike, image_size: int | None = 112):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: image folder not found")
        self.image_size = image_size
        self.classes: list[str] = []
        files: list[Path] = []
        labels: list[int] = []
        for sub in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = sorted(p for p in sub.iterdir() if _is_image(p))
            if not images:
                continue  # an empty folder is not an identity (keeps labels dense)
            label = len(self.classes)
            self.classes.append(sub.name)
            files.extend(images)
            labels.extend([label] * len(images))
        if not files:
            raise InputError(f"{self.root}: no identity sub-folders with {'/'.join(IMAGE_SUFFIXES)} images")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def read_encoded(self, i: int) -> bytes:
        """The file bytes of image ``i``."""
        try:
            return self.files[i].read_bytes()
        except OSError as exc:
            raise InputError(f"{self.files[i]}: cannot read ({exc})") from None

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return decode_rgb(self.read_encoded(i), str(self.files[i]), self.image_size), int(self.labels[i])


def load_pairs_folder(root: str | os.PathLike, image_size: int | None = 112) -> VerificationSet:
    """Read ``root/pairs.txt`` (format in the module docstring) into a ``VerificationSet``."""
    folder = Path(root)
    pairs_file = folder / "pairs.txt"
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{pairs_file}: pairs file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{pairs_file}: cannot read ({exc})") from None
    paths: list[Path] = []
    issame: list[bool] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
            raise InputError(f"{pairs_file}: line {lineno} is not 'path1<TAB>path2<TAB>1|0': {line[:80]!r}")
        for rel in parts[:2]:
            p = (folder / rel.strip()).resolve()
            if not p.is_file():
                raise InputError(f"{pairs_file}: line {lineno}: image {rel.strip()!r} not found")
            paths.append(p)
        issame.append(parts[2].strip() == "1")
    if not issame:
        raise InputError(f"{pairs_file}: contains no pairs")
    cache: dict[Path, np.ndarray] = {}
    images = None
    for i, p in enumerate(paths):
        if p not in cache:
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise InputError(f"{p}: cannot read ({exc})") from None
            cache[p] = decode_rgb(data, str(p), image_size)
        rgb = cache[p]
        if images is None:
            images = np.empty((len(paths), *rgb.shape), dtype=np.uint8)
        elif rgb.shape != images.shape[1:]:
            raise InputError(
                f"{p}: image is {rgb.shape[1]}x{rgb.shape[0]}, others are {images.shape[2]}x{images.shape[1]}"
            )
        images[i] = rgb
    return VerificationSet(name=folder.name, images=images, issame=np.asarray(issame, dtype=bool))


def read_aligned_crops(
    root: str | os.PathLike, limit: int | None = None, image_size: int = 112
) -> tuple[np.ndarray, list[str]]:
    """The images directly in ``root`` (sorted by name, at most ``limit``) as uint8 (N, H, W, 3) RGB."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if _is_image(p)) if root.is_dir() else []
    if not files:
        raise InputError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in the folder")
    files = files[:limit] if limit else files
    crops = [decode_rgb(p.read_bytes(), str(p), image_size) for p in files]
    return np.stack(crops), [p.name for p in files]
