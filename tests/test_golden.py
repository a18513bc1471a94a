"""Golden vectors: the crops and embeddings one model file gives, checked by `verify` and on a device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploy.golden import (
    MIN_COSINE,
    decode_png,
    golden_path,
    model_input,
    png_bytes,
    read_golden,
    verify_file,
    write_golden,
)
from deploy.model_card import sha256_of
from deploy.onnx_export import export_onnx
from deploy.runtimes import load_embedder
from distill.data.verification_bin import VerificationSet
from distill.errors import InputError
from pipeline.cli import main

REAL_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "real" / "photos"


class Tiny(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 5, 4, 2)
        self.fc = nn.Linear(8 * 28 * 28, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def crops(n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """An exported model with its golden file, as the export stage leaves them."""
    folder = tmp_path_factory.mktemp("export")
    path = export_onnx(Tiny(0).eval(), folder / "student_fp32.onnx")
    c = crops()
    emb = load_embedder(path, num_threads=1).embed(model_input(c))
    write_golden(
        path, c, [f"c{i}" for i in range(len(c))], emb, precision="fp32", sha256=sha256_of(path), source="t"
    )
    return path


def copy_of(shipped: Path, tmp_path: Path) -> Path:
    for p in (shipped, golden_path(shipped)):
        shutil.copy(p, tmp_path / p.name)
    return tmp_path / shipped.name


def test_png_round_trip_is_lossless_and_the_file_records_the_model():
    c = crops(3, seed=1)
    assert all(np.array_equal(decode_png(png_bytes(x)), x) for x in c)


def test_golden_file_holds_the_crops_and_this_files_embeddings(shipped):
    got_crops, recorded, meta = read_golden(golden_path(shipped))
    assert golden_path(shipped).name == "student_fp32.onnx.golden.json"
    np.testing.assert_array_equal(got_crops, crops())
    np.testing.assert_allclose(recorded, load_embedder(shipped).embed(model_input(crops())), atol=1e-6)
    assert meta["model_sha256"] == sha256_of(shipped) and meta["min_cosine"] == MIN_COSINE["fp32"]
    check = verify_file(shipped)
    assert check.passed and check.min_cosine > 0.999999 and len(check.cosines) == 6


def test_verify_command_exit_codes(shipped, tmp_path, capsys):
    model = copy_of(shipped, tmp_path)
    assert main(["verify", "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    # the recorded vectors of another model: what a wrong build on a device looks like
    other = export_onnx(Tiny(1).eval(), tmp_path / "other.onnx")
    data = json.loads(golden_path(model).read_text())
    wrong = load_embedder(other).embed(model_input(crops()))
    for c, e in zip(data["crops"], wrong, strict=True):
        c["embedding"] = e.tolist()
    golden_path(model).write_text(json.dumps(data))
    assert main(["verify", "--model", str(model)]) == 1
    out = capsys.readouterr().out
    assert "DO NOT MATCH" in out and "crop 0: cosine" in out
    # the model file changed after export: the golden file refuses it, one line, exit 2
    shutil.copy(other, model)
    assert main(["verify", "--model", str(model)]) == 2
    assert "written for another file" in capsys.readouterr().err
    golden_path(model).unlink()
    assert main(["verify", "--model", str(model)]) == 2
    assert "no golden file" in capsys.readouterr().err


def test_a_device_that_runs_something_else_gets_its_accuracy_withheld(shipped, tmp_path):
    """The device runner's embeddings of the golden crops decide whether its accuracy is reported."""
    from devices.device_measure import measure_on_device
    from devices.runners.local import LocalRunner

    model = copy_of(shipped, tmp_path)
    images = crops(20, seed=3)
    sets = [VerificationSet("v", images, np.arange(10) % 2 == 0)]
    artifact = {
        "name": "student-onnx-fp32",
        "format": "onnx",
        "precision": "fp32",
        "sha256": sha256_of(model),
    }
    settings = {"warmup": 1, "runs": 3, "threads": 1}
    good = measure_on_device(LocalRunner("edge-box", threads=1), artifact, model, sets, settings)
    assert good.details["golden"]["passed"] and good.accuracy is not None

    other = export_onnx(Tiny(2).eval(), tmp_path / "stale_build.onnx")

    class StaleBuild(LocalRunner):  # the device still runs an older file under the same name
        def prepare(self, artifact, *, precision=None):
            super().prepare(other, precision=precision)

    bad = measure_on_device(StaleBuild("edge-box", threads=1), artifact, model, sets, settings)
    assert bad.details["golden"]["passed"] is False and bad.accuracy is None and bad.tar_at_far == {}
    assert "DO NOT MATCH on edge-box" in bad.notes[0] and "accuracy withheld" in bad.notes[0]
    assert bad.latency_ms is not None  # the latency is still the device's


def test_a_device_embeds_each_distinct_image_of_a_set_once(shipped, tmp_path):
    """Repeated images (a .bin stores one per pair) cross to the device once; the accuracy is unchanged."""
    from devices.device_measure import measure_on_device
    from devices.runners.local import LocalRunner
    from distill.metrics.verification import evaluate_verification

    model = copy_of(shipped, tmp_path)
    distinct = crops(12, seed=5)
    images = distinct[np.r_[0:12, 0:8]]  # 20 images, 8 of them repeats
    sets = [VerificationSet("v", images, np.arange(10) % 2 == 0)]
    sent = []

    class Counting(LocalRunner):
        def run_accuracy(self, x):
            sent.append(len(x))
            return super().run_accuracy(x)

    artifact = {"name": "m", "format": "onnx", "precision": "fp32", "sha256": sha256_of(model)}
    row = measure_on_device(Counting("edge-box", threads=1), artifact, model, sets, {"warmup": 1, "runs": 2})
    assert sent[0] == 6 and sum(sent[1:]) == 2 * 12  # the golden crops, then 12 images and their mirrors
    one = load_embedder(model, num_threads=1)
    x = model_input(images)
    plain = np.concatenate([one.embed(x[i : i + 1]) for i in range(20)])
    mirror = np.concatenate([one.embed(np.ascontiguousarray(x[i : i + 1, :, :, ::-1])) for i in range(20)])
    expected = evaluate_verification(plain, mirror, sets[0].issame)
    assert row.accuracy == pytest.approx(expected.accuracy)


def test_unreadable_golden_files_are_input_errors(tmp_path):
    bad = tmp_path / "m.onnx.golden.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a readable golden file"):
        read_golden(bad)
    bad.write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(InputError, match="not a facekd golden file"):
        read_golden(bad)


@pytest.mark.skipif(not REAL_PHOTOS.is_dir(), reason="../shared/real/ not present")
def test_real_aligned_photos_as_golden_crops(tmp_path):
    """export.golden_crops: a folder of real aligned crops (used here, never shipped: rights not stated)."""
    from distill.data.image_folder import read_aligned_crops

    real, names = read_aligned_crops(REAL_PHOTOS, limit=4)
    assert real.shape == (4, 112, 112, 3) and names == sorted(names)
    path = export_onnx(Tiny(0).eval(), tmp_path / "m.onnx")
    emb = load_embedder(path).embed(model_input(real))
    write_golden(path, real, names, emb, precision="fp32", sha256=sha256_of(path), source=str(REAL_PHOTOS))
    assert verify_file(path).passed


@pytest.mark.parametrize(
    "mistake, cause",
    [
        (lambda x: x[:, ::-1].copy(), "R and B swapped"),  # the device's pipeline hands BGR
        (lambda x: (x * 127.5 + 127.5) / 255.0, "scaled to 0..1"),  # ... or x / 255
    ],
)
def test_a_device_fed_wrongly_is_named_with_the_likely_cause(shipped, tmp_path, mistake, cause):
    from devices.device_measure import measure_on_device
    from devices.runners.local import LocalRunner

    model = copy_of(shipped, tmp_path)

    class WrongPreprocessing(LocalRunner):
        def run_accuracy(self, images):
            return super().run_accuracy(mistake(np.asarray(images, np.float32)))

    images = crops(20, seed=4)
    sets = [VerificationSet("v", images, np.arange(10) % 2 == 0)]
    artifact = {"name": "m", "format": "onnx", "precision": "fp32", "sha256": sha256_of(model)}
    row = measure_on_device(
        WrongPreprocessing("phone", threads=1), artifact, model, sets, {"warmup": 1, "runs": 2}
    )
    assert row.accuracy is None and cause in row.details["golden"]["likely_cause"]
    assert f"likely cause: {row.details['golden']['likely_cause']}" in row.notes[0]
