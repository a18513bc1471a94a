"""One entry point per role: a path in, the right reader out, so callers never branch on formats."""

from __future__ import annotations

import os
from pathlib import Path

from distill.data.image_folder import ImageFolderFaces, load_pairs_folder
from distill.data.recordio import RecFaceDataset
from distill.data.verification_bin import VerificationSet, load_verification_bin
from distill.errors import InputError


def train_set_kind(path: str | os.PathLike) -> str:
    """``"rec"`` or ``"folder"``; InputError when the path is neither."""
    p = Path(path)
    if p.is_file() and p.suffix == ".rec":
        return "rec"
    if p.is_dir():
        if (p / "train.rec").is_file():
            return "rec"
        if any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()):
            return "folder"
    if not p.exists():
        raise InputError(f"{p}: training set not found")
    raise InputError(
        f"{p}: not a training set (expected train.rec/train.idx, a .rec file, or identity sub-folders)"
    )


def open_train_set(
    path: str | os.PathLike, image_size: int | None = 112
) -> RecFaceDataset | ImageFolderFaces:
    """Open an InsightFace RecordIO set (folder or ``.rec``) or an identity-per-folder image tree."""
    if train_set_kind(path) == "rec":
        return RecFaceDataset(path, image_size=image_size)
    return ImageFolderFaces(path, image_size=image_size)


def verification_kind(path: str | os.PathLike) -> str:
    """``"bin"`` or ``"pairs"``; InputError when the path is neither."""
    p = Path(path)
    if p.is_file() and p.suffix == ".bin":
        return "bin"
    if p.is_dir() and (p / "pairs.txt").is_file():
        return "pairs"
    if not p.exists():
        raise InputError(f"{p}: verification set not found")
    raise InputError(f"{p}: not a verification set (expected a .bin file or a folder with pairs.txt)")


def open_verification(path: str | os.PathLike, image_size: int | None = 112) -> VerificationSet:
    """Load a verification ``.bin`` or a folder with ``pairs.txt``."""
    if verification_kind(path) == "bin":
        return load_verification_bin(path, image_size=image_size)
    return load_pairs_folder(path, image_size=image_size)
