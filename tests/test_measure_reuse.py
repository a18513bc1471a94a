"""measure reuses the evaluation of the model a file was exported from only when the file reproduces it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy.onnx_export import export_onnx
from deploy.runtimes import OnnxEmbedder
from devices.accuracy import accuracy_fields
from devices.measure import SourceEvaluation, host_accuracy
from distill.data.transforms import to_model_input
from distill.data.verification_bin import VerificationSet


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, 4)
        self.act = nn.PReLU(8)
        self.fc = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    torch.manual_seed(0)
    model = Tiny().eval()
    path = export_onnx(model, tmp_path_factory.mktemp("reuse") / "tiny.onnx", batch_size=1)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(48, 112, 112, 3), dtype=np.uint8)
    issame = np.arange(24) % 2 == 0
    vals = [VerificationSet("synth_val", images, issame)]
    with torch.no_grad():
        plain = model(to_model_input(torch.from_numpy(images))).numpy()
    return path, vals, plain


def test_a_file_that_reproduces_its_source_takes_the_saved_fields(case):
    path, vals, plain = case
    saved = {"accuracy": 0.123, "accuracy_via": "an onnxruntime copy"}  # not a number this file would give
    what = "the distill stage's evaluation of student.pt (sha256 checked)"
    made_from = SourceEvaluation(saved, plain, what)
    row, _ = host_accuracy(path, vals, threads=1, made_from=made_from)
    assert row["accuracy"] == 0.123 and "accuracy_via" in row
    assert row["accuracy_via"].startswith(made_from.what + ", which this file reproduces on 16 images")


def test_a_file_that_does_not_reproduce_its_source_is_evaluated(case):
    path, vals, plain = case
    made_from = SourceEvaluation({"accuracy": 0.123}, plain * 1.001, "another model's evaluation")
    row, _ = host_accuracy(path, vals, threads=1, made_from=made_from)
    expected = accuracy_fields(OnnxEmbedder(path, num_threads=1), vals, flip=True)
    assert row["accuracy"] == pytest.approx(expected["accuracy"]) and row["accuracy"] != 0.123
    assert "reproduces" not in row["accuracy_via"]
