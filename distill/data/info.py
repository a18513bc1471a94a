"""A one-glance summary of a data set (for ``facekd data info`` and run reports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.faces import open_train_set, open_verification, train_set_kind
from distill.errors import InputError


def dataset_info(path: str | os.PathLike) -> dict[str, Any]:
    """``{"images", "identities", "pairs", "image_size": [H, W]}`` of a .rec, image folder, .bin or pairs dir.

    ``pairs`` is None for training sets; ``identities`` is None for verification sets (not recorded there).
    The image size is read from the first image, and sizes are not enforced here, so the summary
    also works on sets that training would reject.
    """
    p = Path(path)
    if (p.is_file() and p.suffix == ".bin") or (p.is_dir() and (p / "pairs.txt").is_file()):
        vs = open_verification(p, image_size=None)
        return {
            "images": int(vs.images.shape[0]),
            "identities": None,
            "pairs": int(len(vs.issame)),
            "image_size": [int(vs.images.shape[1]), int(vs.images.shape[2])],
        }
    train_set_kind(p)  # raises InputError naming the path for anything unknown
    ds = open_train_set(p, image_size=None)
    if len(ds) == 0:
        raise InputError(f"{p}: contains no images")
    first, _ = ds[0]
    return {
        "images": len(ds),
        "identities": int(len(np.unique(ds.labels))),
        "pairs": None,
        "image_size": [int(first.shape[0]), int(first.shape[1])],
    }
