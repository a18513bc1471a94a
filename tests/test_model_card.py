"""Model card: thresholds at a FAR (checked by brute force), the sidecar JSON, metadata inside the .tflite."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from deploy.model_card import (
    METADATA_NAME,
    cosine_threshold_at_far,
    embed_metadata,
    fused_pairs,
    read_metadata,
    threshold_table,
    write_model_card,
)
from distill.data.transforms import to_model_input


# ------------------------------------------------------------------------------------- thresholds
def brute_force_threshold(a: np.ndarray, b: np.ndarray, issame: np.ndarray, far: float) -> float:
    """Try every negative cosine as the threshold; keep the lowest whose FAR (cos > t) is <= far."""
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.array([float(np.dot(x, y)) for x, y in zip(an, bn, strict=True)])
    neg = cos[~issame]
    best = math.inf
    for t in neg:
        if np.mean(neg > t) <= far and t < best:
            best = t
    return best


def random_pairs(n: int, n_pos: int, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    b = rng.normal(size=(n, dim))
    b[:n_pos] = a[:n_pos] + 0.5 * rng.normal(size=(n_pos, dim))  # positives are correlated
    issame = np.zeros(n, dtype=bool)
    issame[:n_pos] = True
    return a, b, issame


@pytest.mark.parametrize("far", [1e-3, 2e-3, 1e-2])
def test_threshold_matches_brute_force(far):
    a, b, issame = random_pairs(3500, 500)
    got = cosine_threshold_at_far(a, b, issame, far)
    assert got == pytest.approx(brute_force_threshold(a, b, issame, far), abs=1e-12)


def test_threshold_with_tied_negative_scores_never_exceeds_the_far():
    a, b, issame = random_pairs(1200, 100, seed=3)
    # Three identical top-scoring negative pairs: accepting any of them would accept all three.
    cos0 = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    top = int(np.argmax(np.where(issame, -np.inf, cos0)))
    for j in (150, 151):
        a[j], b[j] = a[top], b[top]
    far = 2e-3  # 1100 negatives -> 2 false accepts allowed, but the top 3 are tied
    got = cosine_threshold_at_far(a, b, issame, far)
    assert got == pytest.approx(brute_force_threshold(a, b, issame, far), abs=1e-12)
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.sum(cos[~issame] > got) == 0  # the tie is rejected as a whole


def test_threshold_ignores_embedding_scale():
    a, b, issame = random_pairs(1500, 300, seed=5)
    scales = np.random.default_rng(6).uniform(0.1, 30, size=(1500, 1))
    assert cosine_threshold_at_far(a * scales, b, issame, 1e-3) == pytest.approx(
        cosine_threshold_at_far(a, b, issame, 1e-3), abs=1e-12
    )


def test_threshold_is_none_with_too_few_negatives():
    a, b, issame = random_pairs(1099, 100)  # 999 negatives < 1/1e-3
    assert cosine_threshold_at_far(a, b, issame, 1e-3) is None
    a, b, issame = random_pairs(1100, 100)  # exactly 1000
    assert cosine_threshold_at_far(a, b, issame, 1e-3) is not None


def test_fused_pairs_sum_then_normalise():
    rng = np.random.default_rng(7)
    emb, flip = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    a, b = fused_pairs(emb, flip)
    for i in range(4):
        for got, row in ((a[i], 2 * i), (b[i], 2 * i + 1)):
            s = emb[row] + flip[row]
            np.testing.assert_allclose(got, s / math.sqrt(float(np.sum(s * s))), rtol=1e-12)


def test_threshold_table_reports_far_tar_and_unresolvable_targets():
    a, b, issame = random_pairs(2500, 500, seed=9)  # 2000 negatives: 1e-3 ok, 1e-4 not
    table = threshold_table(a, b, issame, fars=(1e-3, 1e-4), measured_on="synthetic")
    assert table["num_negative_pairs"] == 2000 and table["num_positive_pairs"] == 500
    t = table["at_far"]["1e-3"]["cosine"]
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert table["at_far"]["1e-3"]["far_measured"] == pytest.approx(np.sum(cos[~issame] > t) / 2000)
    assert table["at_far"]["1e-3"]["far_measured"] <= 1e-3
    assert table["at_far"]["1e-3"]["tar"] == pytest.approx(np.sum(cos[issame] > t) / 500)
    assert table["at_far"]["1e-4"]["cosine"] is None and "2000" in table["at_far"]["1e-4"]["reason"]


# ----------------------------------------------------------------------------------- card on a .tflite
EMB = 24


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, EMB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory):
    from deploy.tflite_export import export_tflite_fp32

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("card") / "student_fp32.tflite"
    return export_tflite_fp32(Tiny().eval(), path)


def run_tflite(path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


@pytest.mark.slow
def test_sidecar_describes_the_model_and_metadata_travels_inside(tflite_file, tmp_path):
    import shutil

    model = tmp_path / "student_fp32.tflite"
    shutil.copy(tflite_file, model)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)
    before = run_tflite(model, x)
    a, b, issame = random_pairs(1200, 200)
    thresholds = threshold_table(a, b, issame, measured_on="synthetic")
    card = write_model_card(
        tmp_path / "student_fp32.json", model, version="0.1.0+test", thresholds=thresholds, precision="fp32"
    )

    sidecar = json.loads((tmp_path / "student_fp32.json").read_text())
    assert sidecar == json.loads(json.dumps(card))
    assert sidecar["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert sidecar["input"]["shape"] == [1, 3, 112, 112]
    assert sidecar["input"]["dtype"] == "float32" and sidecar["input"]["layout"] == "NCHW"
    assert sidecar["output"]["dtype"] == "float32" and sidecar["embedding"]["size"] == EMB
    assert sidecar["embedding"]["l2_normalized"] is False
    assert sidecar["preprocessing"]["colour_order"] == "RGB"
    # The stated normalisation reproduces the project's own transform on real pixel values.
    pixels = np.repeat(np.array([0, 1, 127, 128, 255], dtype=np.uint8)[None, None, :, None], 3, axis=3)
    mean = np.array(sidecar["preprocessing"]["mean"])
    std = np.array(sidecar["preprocessing"]["std"])
    ours = (pixels.astype(np.float64) - mean) / std
    np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), to_model_input(pixels).numpy(), atol=1e-6)
    # insightface arcface_dst for 112x112 (shared/research/data.md §3.1).
    assert sidecar["alignment"]["landmarks_xy"] == [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
    assert sidecar["thresholds"]["at_far"]["1e-3"]["cosine"] == pytest.approx(
        brute_force_threshold(a, b, issame, 1e-3)
    )

    embedded = read_metadata(model)
    assert embedded == {k: v for k, v in sidecar.items() if k != "sha256"}
    np.testing.assert_array_equal(run_tflite(model, x), before)  # metadata does not touch the graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student_fp32.json", "student_fp32.tflite"]


@pytest.mark.slow
def test_embedding_again_replaces_the_entry(tflite_file, tmp_path):
    import shutil

    from ai_edge_litert.tools import flatbuffer_utils

    model = tmp_path / "m.tflite"
    shutil.copy(tflite_file, model)
    assert read_metadata(model) is None
    embed_metadata(model, {"version": "1"})
    embed_metadata(model, {"version": "2"})
    assert read_metadata(model) == {"version": "2"}
    names = [m.name.decode() for m in flatbuffer_utils.read_model(str(model)).metadata]
    assert names.count(METADATA_NAME) == 1


def test_card_thresholds_cover_every_far_the_set_supports():
    a, b, issame = random_pairs(1200, 600, seed=3)  # the default set: 600 negatives
    table = threshold_table(a, b, issame)
    assert table["at_far"]["1e-2"]["cosine"] is not None  # 600 >= 100 negatives: resolvable
    far3 = table["at_far"]["1e-3"]
    assert far3["cosine"] is None and "need at least 1000" in far3["reason"]
    assert table["flip_fused"] is False and "no mirror" in table["compared_as"]


# ------------------------------------------------------------------------------- card on an ONNX / engine
@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("card") / "student_fp32.onnx"
    export_onnx(Tiny().eval(), path)
    return path


def test_onnx_gets_the_same_card_inside_metadata_props(onnx_file, tmp_path):
    import shutil

    import onnx
    import onnxruntime as ort

    model = tmp_path / "student_fp32.onnx"
    shutil.copy(onnx_file, model)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 112, 112)).astype(np.float32)

    def run(path):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    before = run(model)
    a, b, issame = random_pairs(1200, 200)
    card = write_model_card(
        tmp_path / "student_fp32.json",
        model,
        version="0.1.0+test",
        thresholds=threshold_table(a, b, issame),
        precision="fp32",
    )
    graph = onnx.load(str(model)).graph  # the card states what the file itself declares
    assert card["input"]["name"] == graph.input[0].name and card["input"]["layout"] == "NCHW"
    assert card["input"]["shape"][1:] == [3, 112, 112] and card["input"]["dtype"] == "float32"
    assert (
        card["embedding"]["size"] == EMB and card["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    )
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(props[METADATA_NAME]) == {k: v for k, v in card.items() if k != "sha256"}
    assert read_metadata(model) == json.loads(props[METADATA_NAME])
    np.testing.assert_array_equal(run(model), before)  # metadata does not touch the graph
    embed_metadata(model, {"version": "2"})  # replaced, not added twice
    assert [p.key for p in onnx.load(str(model)).metadata_props].count(METADATA_NAME) == 1


def test_engine_card_is_its_onnx_card_naming_the_engine(onnx_file, tmp_path):
    import shutil

    from deploy.artifacts import Artifact, add_model_cards

    shutil.copy(onnx_file, tmp_path / "student_fp32.onnx")
    (tmp_path / "student_fp32.engine").write_bytes(b"not really an engine: the card only hashes it")
    arts = [
        Artifact(
            name="e",
            format="tensorrt",
            precision="fp32",
            file="student_fp32.engine",
            batch_size=1,
            parity=None,
        ),
        Artifact(
            name="o", format="onnx", precision="fp32", file="student_fp32.onnx", batch_size=1, parity=None
        ),
    ]
    add_model_cards(arts, tmp_path, thresholds={"at_far": {}}, version="t")
    onnx_card = json.loads((tmp_path / "student_fp32.json").read_text())
    engine_card = json.loads((tmp_path / "student_fp32.engine.json").read_text())
    assert arts[0].companions == ["student_fp32.engine.json"] and arts[1].companions == ["student_fp32.json"]
    assert engine_card["file"] == "student_fp32.engine" and engine_card["built_from"] == "student_fp32.onnx"
    assert (
        engine_card["sha256"] == hashlib.sha256((tmp_path / "student_fp32.engine").read_bytes()).hexdigest()
    )
    assert engine_card["input"] == onnx_card["input"] and engine_card["metadata_embedded"] is None
