"""Export a PyTorch embedding model to ONNX (the artifact TensorRT and onnxruntime consume).

Uses the TorchScript exporter (``dynamo=False``): it is the path that also works for NNCF-stripped Q/DQ
models later, and it handles PReLU, depthwise convs and BatchNorm1d of MobileFaceNet. The file is checked
with ``onnx.checker`` before it is renamed into place, so a file at ``path`` is always a valid model.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from distill.atomic import atomic_path
from distill.data.transforms import IMAGE_SIZE

DEFAULT_OPSET = 17


def export_copy(model: nn.Module) -> nn.Module:
    """A CPU float32 eval-mode copy, so exporting never flips the caller's model out of training mode."""
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


def example_input(batch_size: int, image_size: int = IMAGE_SIZE, seed: int = 0) -> torch.Tensor:
    """A deterministic NCHW image batch in [-1, 1], the range real model inputs have."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    batch_size: int | None = 1,
    opset: int = DEFAULT_OPSET,
    input_name: str = "input",
    output_name: str = "embedding",
    image_size: int = IMAGE_SIZE,
) -> Path:
    """Write ``model`` as ONNX to ``path`` and return the path.

    ``batch_size=None`` makes the batch axis dynamic (named ``batch``) on input and output; an int fixes it,
    which is what mobile/TensorRT engines usually want. Traced with a batch of 2 in the dynamic case so no
    batch-1 special case (e.g. a squeeze) is baked into the graph.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    net = export_copy(model)
    x = example_input(2 if batch_size is None else batch_size, image_size)
    dynamic_axes = None
    if batch_size is None:
        dynamic_axes = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    target = Path(path)
    with atomic_path(target) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (see module docstring); hide its deprecation notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            net,
            (x,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        onnx.checker.check_model(str(tmp), full_check=True)
    return target
