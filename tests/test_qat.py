"""Stage two: NNCF INT8 scheme, quantized checkpoints, Q/DQ ONNX export, and QAT through the engine."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.checkpoint import float_model, is_quantized_checkpoint, load_quantized, save_quantized
from compress.config import QatConfig
from compress.qat import SCALE_PARAMS, choose_on_dev, quantization_aware_distill, restore_loss_state
from compress.quantize import (
    calibration_batches,
    quantize_model,
    quantizer_counts,
    quantizers,
    scheme_problems,
)
from deploy.onnx_qdq import QdqLintError, export_qdq_onnx
from deploy.parity import row_cosines
from deploy.qdq_lint import LintIssue, lint_qdq
from deploy.runtimes import load_embedder, quantized_evaluation_copy, twin_difference
from distill.config import LossSpec, TrainConfig
from distill.data.verification_bin import VerificationSet
from distill.engine.train import TeacherTargets, _param_groups
from distill.errors import InputError
from distill.losses import LossDims, build_losses
from distill.models.checkpoint import load_model, save_model
from distill.models.mobilefacenet import MobileFaceNet

DIM = 16


class Faces:
    """24 images of 4 identities with identity-specific colour and texture."""

    def __init__(self, n: int = 24, classes: int = 4, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.labels = np.arange(n) % classes
        base = rng.integers(30, 220, size=(classes, 1, 1, 3))
        noise = rng.integers(-25, 25, size=(n, 112, 112, 3))
        self.images = np.clip(base[self.labels] + noise, 0, 255).astype(np.uint8)
        self.num_classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def _student(data: Faces) -> MobileFaceNet:
    """A MobileFaceNet whose BatchNorm statistics come from the data (a random-stat net is chaotic)."""
    torch.manual_seed(0)
    model = MobileFaceNet(embedding_dim=DIM)
    model.train()
    with torch.no_grad():
        for b in calibration_batches(data, len(data), 8, seed=1):
            model(b)
    return model.eval()


@pytest.fixture(scope="module")
def data() -> Faces:
    return Faces()


@pytest.fixture(scope="module")
def student_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_model(path, _student(data), arch="mobilefacenet", arch_kwargs={"embedding_dim": DIM})
    return path


@pytest.fixture(scope="module")
def quantized(data, student_file):
    from distill.models.checkpoint import load_model

    fp32, _ = load_model(student_file)
    return quantize_model(fp32, calibration_batches(data, 16, 8, seed=0))


def test_calibration_batches_are_seeded_normalised_and_checked(data):
    a = calibration_batches(data, 10, 4, seed=5)
    b = calibration_batches(data, 10, 4, seed=5)
    assert [x.shape[0] for x in a] == [4, 4, 2]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert float(torch.cat(a).min()) >= -1.0 and float(torch.cat(a).max()) <= 1.0
    with pytest.raises(InputError, match="calibration_images: 100 asked, but the training set has only 24"):
        calibration_batches(data, 100, 4, seed=0)


def test_quantizers_follow_the_int8_scheme_both_targets_run(quantized):
    assert scheme_problems(quantized) == []
    model = MobileFaceNet(embedding_dim=DIM)
    layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    counts = quantizer_counts(quantized)
    assert counts["weights"] == layers  # every conv and the linear layer: per-channel weights
    for name, q in quantizers(quantized).items():
        qmin, qmax, scale, zp = q.get_parameters_for_torch_fq()
        assert torch.all(torch.as_tensor(zp) == 0), name
        assert qmin < 0 < qmax, name  # signed (TensorRT has no uint8)
        if name.startswith("post_hooks"):
            assert torch.as_tensor(scale).numel() == 1, name  # per-tensor activations


def test_quantized_checkpoint_round_trip(tmp_path, quantized, student_file):
    path = save_quantized(
        tmp_path / "q.pt", quantized, arch="mobilefacenet", arch_kwargs={"embedding_dim": DIM}
    )
    assert is_quantized_checkpoint(path) and not is_quantized_checkpoint(student_file)
    again, meta = load_quantized(path)
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(again(x), quantized.eval()(x))
    plain = float_model(path)
    assert not any("nncf" in k for k in plain.state_dict())
    for k, v in plain.state_dict().items():
        assert torch.equal(v, quantized.state_dict()[k]), k
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.pt"):
        load_quantized(tmp_path / "bad.pt")


def test_qdq_onnx_passes_the_tensorrt_linter_and_matches_fake_quant(tmp_path, quantized, data):
    path = export_qdq_onnx(quantized, tmp_path / "int8.onnx", batch_size=1)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert lint_qdq(model) == []
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    counts = quantizer_counts(quantized)
    ops = [n.op_type for n in model.graph.node]
    # every quantizer is a DequantizeLinear; weights are stored as int8, so only activations keep a Q node
    assert ops.count("DequantizeLinear") == counts["weights"] + counts["activations"]
    assert ops.count("QuantizeLinear") == counts["activations"]
    x = calibration_batches(data, 8, 8, seed=9)[0].numpy()
    ref = load_embedder(quantized).embed(x)
    got = load_embedder(path).embed(x)
    assert row_cosines(ref, got).min() >= 0.99


def test_a_linter_failure_names_the_nodes_and_writes_nothing(tmp_path, quantized, monkeypatch):
    import deploy.onnx_qdq as onnx_qdq

    issue = LintIssue("/conv1/QuantizeLinear", "dtype", "quantized type is uint8; TensorRT Q/DQ needs int8")
    monkeypatch.setattr(onnx_qdq, "lint_qdq", lambda _path: [issue])
    with pytest.raises(QdqLintError, match="/conv1/QuantizeLinear"):
        export_qdq_onnx(quantized, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_the_quantized_evaluation_copy_computes_what_the_int8_onnx_computes(tmp_path, quantized, data):
    import onnxruntime as ort

    x = calibration_batches(data, 24, 24, seed=4)[0].numpy()
    copy, how = quantized_evaluation_copy(quantized, x[:16], num_threads=2, name="qat")
    assert copy.format == "onnx" and copy.batch_size is None  # one batched session for the whole set
    got = copy.embed(x)
    # the export stage's file (batch 1), run image by image in a plain onnxruntime session
    shipped = export_qdq_onnx(quantized, tmp_path / "student_int8.onnx", batch_size=1)
    session = ort.InferenceSession(str(shipped), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0].name
    one_by_one = np.concatenate([session.run(None, {inp: x[i : i + 1]})[0] for i in range(len(x))])
    assert twin_difference(one_by_one, got)[1]  # what the measure stage requires before it reuses
    # the fake-quant module: the same model up to rounding at quantization steps, and the stated gap is it
    fake = load_embedder(quantized).embed(x[:16])
    cos_min = row_cosines(fake, got[:16]).min()
    assert cos_min >= 0.99 and f"cosine >= {cos_min:.4f} on 16 images" in how


def test_a_model_without_an_int8_onnx_is_evaluated_as_it_is(quantized, data, monkeypatch):
    import deploy.onnx_qdq as onnx_qdq

    def refuse(*_a, **_k):
        raise QdqLintError("int8.onnx: 1 TensorRT Q/DQ rule violations: /conv1")

    monkeypatch.setattr(onnx_qdq, "export_qdq_onnx", refuse)
    x = calibration_batches(data, 4, 4, seed=4)[0].numpy()
    own, how = quantized_evaluation_copy(quantized, x, name="qat")
    assert own.format == "pytorch" and "no INT8 Q/DQ ONNX: int8.onnx: 1 TensorRT" in how
    np.testing.assert_array_equal(own.embed(x), load_embedder(quantized).embed(x))


def test_scale_parameters_get_no_weight_decay(quantized):
    groups = _param_groups(quantized, SCALE_PARAMS)
    names = {id(p): n for n, p in quantized.named_parameters()}
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    free = {names[id(p)] for p in groups[1]["params"]}
    assert free and all("_scale_param_storage" in n for n in free)
    assert not any("_scale_param_storage" in names[id(p)] for p in groups[0]["params"])


def test_loss_state_restores_matching_tensors_only():
    dims = LossDims(student_dim=DIM, teacher_dim=8, num_classes=4)
    torch.manual_seed(1)
    trained = build_losses([LossSpec("cosface"), LossSpec("feature_l2")], dims)
    torch.manual_seed(2)
    fresh = build_losses([LossSpec("cosface"), LossSpec("feature_l2")], dims)
    state = dict(trained.state_dict())
    state["cosface.unrelated"] = torch.zeros(3)
    restored = restore_loss_state(fresh, state)
    assert "cosface.unrelated" not in restored
    assert restored == sorted(trained.state_dict())
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def _qat(tmp_path, data, student_file, out: str, stop=0, arch="mobilefacenet", keep="best_on_dev", **kwargs):
    rng = np.random.default_rng(3)
    teacher = TeacherTargets(
        rng.normal(size=(len(data), 8)).astype(np.float32), rng.normal(size=(len(data), 8)).astype(np.float32)
    )
    cfg = QatConfig(
        calibration_images=16,
        calibration_batch=8,
        keep=keep,
        train=TrainConfig(
            epochs=100, max_steps=4, batch_size=4, lr=0.01, freeze_bn=True, checkpoint_every=2, seed=0
        ),
    )
    return quantization_aware_distill(
        student_path=student_file,
        expected_arch=arch,
        cfg=cfg,
        stage_one_losses=[LossSpec("cosface"), LossSpec("feature_l2", 2.0)],
        dataset=data,
        out_dir=tmp_path / out,
        teacher=teacher,
        progress=False,
        stop_after_step=stop,
        **{"val_sets": [], **kwargs},
    )


COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]])


def _colour_pairs(name: str) -> VerificationSet:
    """20 pairs of flat-colour images, one colour per identity: same pairs alternate with different ones."""
    rng = np.random.default_rng(5)
    ids = []
    for i in range(20):
        a = int(rng.integers(4))
        ids += [a, a] if i % 2 == 0 else [a, (a + 1 + int(rng.integers(3))) % 4]
    images = np.broadcast_to(COLOURS[ids][:, None, None, :], (40, 112, 112, 3)).astype(np.uint8)
    return VerificationSet(name, np.ascontiguousarray(images), np.arange(20) % 2 == 0)


def _oracle(x: torch.Tensor) -> np.ndarray:
    """One-hot of the nearest identity colour: every pair right (accuracy 1.0)."""
    rgb = (x.mean(dim=(2, 3)).numpy() * 127.5 + 127.5)[:, None, :]
    return np.eye(4, dtype=np.float32)[np.argmin(((rgb - COLOURS[None]) ** 2).sum(-1), axis=1)]


def _blind(x: torch.Tensor) -> np.ndarray:
    """The same embedding for every face: one threshold for all pairs, half of them right (0.5)."""
    return np.ones((len(x), 4), dtype=np.float32)


@pytest.mark.parametrize(
    ("ptq", "qat", "shipped"), [(_oracle, _blind, "ptq"), (_blind, _oracle, "qat"), (_oracle, _oracle, "qat")]
)
def test_the_ptq_model_ships_only_when_it_beats_qat_on_the_dev_sets(ptq, qat, shipped):
    fns = {"ptq": ptq, "qat": qat}
    chosen, record = choose_on_dev([_colour_pairs("dev_a"), _colour_pairs("dev_b")], fns.__getitem__, True)
    assert chosen == shipped  # a tie keeps QAT
    expected = {name: 1.0 if fn is _oracle else 0.5 for name, fn in fns.items()}
    assert record["dev_accuracy"] == pytest.approx(expected) and record["sets"] == ["dev_a", "dev_b"]
    assert ("below PTQ" in record["why"]) == (shipped == "ptq")
    assert choose_on_dev([], fns.__getitem__, True)[0] == "qat"  # nothing to choose by: QAT


def test_qat_records_what_ships_and_embeds_each_model_once(tmp_path, data, student_file):
    calls = []

    def embed_fn_for(name, model):  # what the pipeline passes (an INT8 Q/DQ ONNX copy per model)
        calls.append(name)
        return {"ptq": _oracle, "qat": _blind}[name], f"{name} stand-in"

    sets = {"val_sets": [_colour_pairs("val")], "dev_sets": [_colour_pairs("dev")]}
    sets["embed_fn_for"] = embed_fn_for
    out = _qat(tmp_path, data, student_file, "chosen", evaluate_models=("ptq", "qat"), **sets)
    assert out.shipped == "ptq" and out.metrics["shipped"] == "ptq"
    assert out.metrics["selection"]["dev_accuracy"] == {"ptq": 1.0, "qat": 0.5}
    assert sorted(calls) == ["ptq", "qat"]  # the dev choice and the val evaluation share one copy each
    assert out.metrics["qat"]["val/accuracy"] == 0.5  # the val rows still report the QAT model as trained
    assert out.evaluation["qat"]["accuracy_via"] == "qat stand-in"
    calls.clear()
    kept = _qat(tmp_path, data, student_file, "kept", keep="qat", evaluate_models=("ptq", "qat"), **sets)
    assert kept.shipped == "qat" and kept.metrics["selection"] == {"rule": "qat"}


def test_qat_trains_scales_keeps_bn_frozen_and_resumes_exactly(tmp_path, data, student_file):
    full = _qat(tmp_path, data, student_file, "full")
    ptq, _ = load_quantized(full.ptq_path)
    qat, _ = load_quantized(full.qat_path)
    ptq_sd, qat_sd = ptq.state_dict(), qat.state_dict()
    scale_keys = [k for k in qat_sd if k.endswith(".scale") and "nncf" in k]
    assert any(not torch.equal(ptq_sd[k], qat_sd[k]) for k in scale_keys)  # the scales were trained
    assert any(
        not torch.equal(ptq_sd[k], qat_sd[k]) for k in qat_sd if "nncf" not in k and qat_sd[k].dim() == 4
    )
    for k in qat_sd:
        if k.endswith(("running_mean", "running_var")):
            assert torch.equal(ptq_sd[k], qat_sd[k]), k  # freeze_bn: statistics untouched
    # interrupted after step 2 (a checkpoint), then resumed: same final weights as the straight run
    _qat(tmp_path, data, student_file, "resumed", stop=2)
    resumed = _qat(tmp_path, data, student_file, "resumed")
    again, _ = load_quantized(resumed.qat_path)
    for k, v in again.state_dict().items():
        assert torch.equal(v, qat_sd[k]), k


def test_qat_refuses_a_checkpoint_of_another_architecture(tmp_path, data, student_file):
    with pytest.raises(InputError, match="is a 'mobilefacenet', but the config's student is 'iresnet18'"):
        _qat(tmp_path, data, student_file, "wrong", arch="iresnet18")
    assert not (tmp_path / "wrong" / "ptq.pt").exists()


def test_folded_int8_weights_give_the_same_outputs_at_a_third_of_the_size(tmp_path, quantized, data):
    import onnxruntime as ort

    from deploy.onnx_export import export_onnx
    from deploy.onnx_qdq import fold_weight_quantizers, strip_to_fake_quant

    plain = export_onnx(strip_to_fake_quant(quantized), tmp_path / "float_weights.onnx", batch_size=2)
    folded = fold_weight_quantizers(onnx.load(plain))
    onnx.checker.check_model(folded, full_check=True)
    assert lint_qdq(folded) == []
    weights_q = [n for n in onnx.load(plain).graph.node if n.op_type == "QuantizeLinear"]
    left_q = [n for n in folded.graph.node if n.op_type == "QuantizeLinear"]
    assert len(weights_q) - len(left_q) == quantizer_counts(quantized)["weights"]
    int8_weights = [
        i for i in folded.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2
    ]
    assert len(int8_weights) == quantizer_counts(quantized)["weights"]
    assert len(folded.SerializeToString()) < 0.35 * plain.stat().st_size
    x = calibration_batches(data, 2, 2, seed=4)[0].numpy()
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(folded.SerializeToString()), run(str(plain)), rtol=0, atol=1e-5)


def _distance_to_fp32(model: torch.nn.Module, fp32: torch.nn.Module, images: np.ndarray) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().sub(127.5).div(127.5)
    with torch.no_grad():
        q, r = F.normalize(model.eval()(x), dim=1), F.normalize(fp32.eval()(x), dim=1)
    return float((q - r).pow(2).sum(dim=1).mean())


def test_qat_with_the_anchor_alone_moves_the_int8_model_towards_its_fp32_version(
    tmp_path, data, student_file
):
    cfg = QatConfig(
        calibration_images=16,
        calibration_batch=8,
        losses=[LossSpec("fp32_anchor")],
        train=TrainConfig(epochs=100, max_steps=12, batch_size=8, lr=0.0005, freeze_bn=True, seed=0),
    )
    out = quantization_aware_distill(
        student_path=student_file,
        cfg=cfg,
        dataset=data,
        val_sets=[],
        out_dir=tmp_path,
        teacher=None,
        progress=False,
    )
    fp32, _ = load_model(student_file)
    ptq, _ = load_quantized(out.ptq_path)
    qat, extra = load_quantized(out.qat_path)
    before, after = (_distance_to_fp32(m, fp32, data.images) for m in (ptq, qat))
    assert 0 < after < 0.5 * before, (before, after)  # 0.00126 -> 0.00018 when written
    assert [s["name"] for s in extra["extra"]["losses"]] == ["fp32_anchor"]


def test_qat_fp32_anchor_adds_the_term_to_stage_ones_list(tmp_path, data, student_file):
    cfg = QatConfig(
        calibration_images=16,
        calibration_batch=8,
        fp32_anchor=3.0,
        train=TrainConfig(epochs=100, max_steps=2, batch_size=4, lr=0.01, freeze_bn=True, seed=0),
    )
    out = quantization_aware_distill(
        student_path=student_file,
        cfg=cfg,
        stage_one_losses=[LossSpec("cosface")],
        dataset=data,
        val_sets=[],
        out_dir=tmp_path,
        teacher=None,
        progress=False,
    )
    _, extra = load_quantized(out.qat_path)
    recorded = [(s["name"], s["weight"]) for s in extra["extra"]["losses"]]
    assert recorded == [("cosface", 1.0), ("fp32_anchor", 3.0)]
