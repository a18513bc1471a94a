"""How an external teacher is fed: contracts, detection from the file, batch probing, plain state_dicts.

The real networks in ../shared/real/ (made by nobody on this project) are run through onnxruntime
directly, fed by hand from the photos' uint8 pixels, as the independent reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from distill.config import TeacherInputConfig
from distill.data.transforms import to_model_input
from distill.errors import InputError
from distill.metrics.verification import evaluate_verification
from distill.teacher_input import (
    Detected,
    InputContract,
    layout_from_shape,
    leading_normalisation,
    resolve_contract,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
MOBILEFACE = REAL / "teacher_mobileface_nhwc.onnx"
FACERES = REAL / "teacher_faceres_nhwc.onnx"
needs_real = pytest.mark.skipif(not MOBILEFACE.is_file(), reason="../shared/real/ not present")


def _photos(n: int = 4) -> np.ndarray:
    files = sorted((REAL / "photos").glob("*.png"))[:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _random_uint8(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ contract
def test_native_contract_feeds_the_input_unchanged():
    x = to_model_input(_random_uint8())
    assert InputContract().is_native and InputContract().feed(x) is x


def test_feed_matches_a_hand_computation_from_the_pixels():
    images = _random_uint8()
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    c = InputContract(layout="NHWC", channels="BGR", mean=mean, std=std)
    got = c.feed(to_model_input(images)).numpy()
    want = (images[..., ::-1].astype(np.float64) - np.array(mean)) / np.array(std)  # NHWC, BGR
    assert got.shape == (3, 112, 112, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_feed_resizes_like_pillow_bilinear():
    images = _random_uint8(2, seed=3)
    c = InputContract(layout="NCHW", mean=(0.0,) * 3, std=(1.0,) * 3, size=224)
    got = c.feed(to_model_input(images)).numpy()
    want = np.stack(
        [np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR), np.float64) for im in images]
    ).transpose(0, 3, 1, 2)
    assert got.shape == (2, 3, 224, 224)
    # two bilinear implementations: equal up to rounding inside, edges differ a little on random noise
    assert np.median(np.abs(got - want)) < 1.0
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert np.mean(np.abs(got[inner] - want[inner])) < 2.0


def test_contract_round_trips_through_json():
    c = InputContract("NHWC", "BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 224, 1, {"batch": "probed"})
    back = InputContract.from_dict(c.to_dict())
    assert back == c and back.origin == c.origin


# ----------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    "shape, want",
    [
        (["N", 3, 112, 112], ("NCHW", 112)),
        (["unk", 224, 224, 3], ("NHWC", 224)),
        ([1, 3, "h", "w"], ("NCHW", None)),
        (["None", 112, 112, 3], ("NHWC", 112)),
    ],
)
def test_layout_and_size_from_the_input_shape(shape, want):
    assert layout_from_shape(shape, "t") == want


@pytest.mark.parametrize(
    "shape, message",
    [
        ([1, 1, 112, 112], r"expected 3 colour channels"),
        ([1, 112, 112, 4], r"expected 3 colour channels"),
        ([1, 3, 112, 96], r"112x96, expected a square face crop"),
        ([1, 3, 112], r"expected a 4-D image batch"),
    ],
)
def test_bad_input_shapes_are_named(shape, message):
    with pytest.raises(InputError, match=message):
        layout_from_shape(shape, "t.onnx: teacher input 'x'")


def _graph(ops: list[tuple[str, float | None]], first: str = "Transpose") -> onnx.GraphProto:
    """x (NHWC) -> [first] -> ops with constants (None: the other operand is computed) -> y."""
    nodes, inits, cur = [], [], "x"
    if first:
        nodes.append(helper.make_node(first, [cur], ["t0"], perm=[0, 3, 1, 2]) if first == "Transpose"
                     else helper.make_node(first, [cur], ["t0"]))  # fmt: skip
        cur = "t0"
    for i, (op, value) in enumerate(ops):
        if value is None:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            other = f"r{i}"
        else:
            other = f"c{i}"
            inits.append(numpy_helper.from_array(np.array(value, np.float32), other))
        nodes.append(helper.make_node(op, [cur, other], [f"o{i}"]))
        cur = f"o{i}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 112, 112, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, "g", [x], [y], inits)


def test_insightface_style_sub_mul_is_found_after_a_transpose():
    inside, unit = leading_normalisation(_graph([("Sub", 127.5), ("Mul", 1 / 128)]), "x")
    assert inside == "Sub 127.5, Mul 0.0078125" and not unit


def test_constants_meant_for_unit_pixels_are_recognised():
    # ImageNet style on 0..1 pixels: (x - 0.485) / 0.229 would send 0..255 to ~1100
    inside, unit = leading_normalisation(_graph([("Sub", 0.485), ("Div", 0.229)]), "x")
    assert inside == "Sub 0.485, Div 0.229" and unit
    contract = resolve_contract(Detected("NHWC", 112, inside, unit))
    assert contract.mean == (0.0,) * 3 and contract.std == (255.0,) * 3  # feeds 0..1 pixels


def test_a_sub_of_a_computed_value_or_a_conv_first_is_no_normalisation():
    assert leading_normalisation(_graph([("Sub", None)]), "x") == (None, False)
    assert leading_normalisation(_graph([], first="Relu"), "x") == (None, False)


def test_resolve_contract_precedence_and_contradictions():
    d = Detected("NHWC", 224, "Sub 127.5, Mul 0.0078125", False)
    c = resolve_contract(d)
    assert (c.layout, c.size, c.mean, c.std) == ("NHWC", 224, (0.0,) * 3, (1.0,) * 3)
    assert c.origin["scaling"].startswith("detected") and c.origin["layout"].startswith("detected")
    declared = resolve_contract(d, mean=[1, 2, 3], std=2, channels="BGR")
    assert declared.mean == (1.0, 2.0, 3.0) and declared.std == (2.0,) * 3 and declared.channels == "BGR"
    assert declared.origin["scaling"] == "declared"
    plain = resolve_contract(Detected("NCHW", None, None, False))
    assert plain.is_native and plain.origin["size"] == "default"
    with pytest.raises(InputError, match="teacher.input.layout is NCHW but the file's input is NHWC"):
        resolve_contract(d, layout="NCHW")
    with pytest.raises(InputError, match="teacher.input.size is 112 but the file's input is 224x224"):
        resolve_contract(d, size=112)
    with pytest.raises(InputError, match="declare mean and std together"):
        resolve_contract(d, mean=0)
    with pytest.raises(InputError, match="does not say NCHW or NHWC"):
        resolve_contract(Detected(None, 112))
    with pytest.raises(InputError, match="one number or three"):
        resolve_contract(d, mean=[1, 2], std=1)


# ------------------------------------------------------------------------------- the real networks
def _session_embed(path: Path, fed: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: fed.astype(np.float32)})[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@needs_real
def test_real_mobileface_is_detected_and_fed_raw_nhwc_pixels():
    from distill.models.onnx_teacher import OnnxTeacher

    t = OnnxTeacher(MOBILEFACE)
    c = t.contract
    assert (c.layout, c.channels, c.mean, c.std, c.size, c.batch) == (
        "NHWC", "RGB", (0.0,) * 3, (1.0,) * 3, 112, None,
    )  # fmt: skip
    assert "Sub 127.5, Mul 0.0078125" in c.origin["scaling"] and t.embedding_dim == 256
    images = _photos()
    got = t(to_model_input(images)).numpy()
    want = _session_embed(MOBILEFACE, images.astype(np.float32))  # the file's own convention, by hand
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@needs_real
def test_real_faceres_needs_its_contract_declared_and_is_resized_to_224():
    from distill.models.onnx_teacher import OnnxTeacher

    default = OnnxTeacher(FACERES)  # nothing in the file says raw pixels: the project default is used
    assert default.contract.scaling == "(x - 127.5) / 127.5" and default.contract.size == 224
    t = OnnxTeacher(FACERES, input_cfg=TeacherInputConfig(mean=0, std=1))
    assert t.contract.scaling == "raw 0..255" and t.contract.origin["scaling"] == "declared"
    images = _photos(3)
    resized = np.stack(
        [np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR), np.float32) for im in images]
    )
    want = _session_embed(FACERES, resized)
    got = t(to_model_input(images)).numpy()
    assert got.shape == (3, 1024) and np.all(_cos(got, want) > 0.995)


# --------------------------------------------------------------------------------- batch probing
class _MixesRows(torch.nn.Module):
    """Output depends on the other images of the batch (a batch-1 graph in disguise would too)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.mean(dim=(2, 3))
        return f - f.mean(dim=0, keepdim=True) + f


def test_a_teacher_that_mixes_rows_at_batch_2_runs_one_image_per_call(tmp_path):
    from distill.models.onnx_teacher import OnnxTeacher

    path = tmp_path / "mix.onnx"
    torch.onnx.export(
        _MixesRows(), (torch.randn(2, 3, 112, 112),), str(path), input_names=["input"], dynamo=False,
        dynamic_axes={"input": {0: "n"}},
    )  # fmt: skip
    t = OnnxTeacher(path)
    assert t.fixed_batch == 1 and "other embeddings for 2 images" in t.contract.origin["batch"]
    x = torch.randn(3, 3, 112, 112)
    want = torch.cat([_MixesRows()(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(t(x), want, rtol=1e-5, atol=1e-5)


def test_integer_input_and_a_file_that_is_not_onnx_are_refused(tmp_path):
    from distill.models.onnx_teacher import OnnxTeacher

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 112, 112, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
         helper.make_node("Concat", ["m", "m"], ["c"], axis=1),
         helper.make_node("Slice", ["c", "s", "e", "a"], ["y"])],
        "g", [x], [y],
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 4), ("a", 1))],
    )  # fmt: skip
    path = tmp_path / "uint8.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(InputError, match=r"has type tensor\(uint8\), expected a float tensor"):
        OnnxTeacher(path)
    junk = tmp_path / "weights.onnx"
    junk.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(InputError, match="weights.onnx: cannot load as an ONNX model"):
        OnnxTeacher(junk)


# -------------------------------------------------------------------------- plain state_dict teachers
def test_plain_state_dict_with_module_prefix_loads_strictly(tmp_path):
    from distill.models.checkpoint import load_weights_file
    from distill.models.iresnet import iresnet18

    torch.manual_seed(0)
    net = iresnet18(embedding_dim=32, base_width=8).eval()
    path = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # a DDP-wrapped save
    model, meta = load_weights_file(path, "iresnet18", {"embedding_dim": 32, "base_width": 8})
    assert meta["format"] == "state_dict"
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
    with pytest.raises(InputError, match=r"weights do not fit iresnet50.*missing keys: layer1\.2") as err:
        load_weights_file(path, "iresnet50", {"embedding_dim": 32, "base_width": 8})
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match=r"shape mismatch.*the file looks like iresnet18 with base_width: 8"):
        load_weights_file(path, "iresnet18", {"embedding_dim": 32, "base_width": 16})
    with pytest.raises(InputError, match="embedding_dim: 32"):
        load_weights_file(path, "iresnet18", {"embedding_dim": 64, "base_width": 8})


def test_a_pickled_object_or_other_dict_is_not_a_state_dict(tmp_path):
    from distill.models.checkpoint import load_model, load_weights_file

    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state": {"w": torch.zeros(1)}}, path)
    with pytest.raises(InputError, match="neither a facekd checkpoint nor a plain state_dict"):
        load_weights_file(path, "iresnet18", {"embedding_dim": 32})
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(InputError, match="it is a plain state_dict: name its architecture"):
        load_model(plain)


# ------------------------------------------------------------------------------ fed-wrongly detection
def test_constant_or_chance_embeddings_are_called_fed_wrongly():
    from distill.teacher import fed_wrongly

    rng = np.random.default_rng(0)
    issame = np.tile([True, False], 50)
    base = rng.normal(size=(100, 16))
    good = np.repeat(base, 2, axis=0) + 0.1 * rng.normal(size=(200, 16))
    good[1::2][~issame] = rng.normal(size=(50, 16))  # impostor partners: other identities
    constant = np.ones((200, 16)) + 1e-6 * rng.normal(size=(200, 16))
    noise = rng.normal(size=(200, 16))
    c = InputContract()
    assert fed_wrongly({"v": evaluate_verification(good, None, issame)}, c) is None
    flat = fed_wrongly({"v": evaluate_verification(constant, None, issame)}, c)
    assert flat and "barely vary" in flat and "teacher.allow_chance" in flat and "channel order" in flat
    chance = fed_wrongly({"v": evaluate_verification(noise, None, issame)}, c)
    assert chance and "at chance on v" in chance
    # `pipeline evaluate` words the same test for its own flags, or for this project's own files
    from pipeline.cli import _blind_warning

    assert _blind_warning({"v": evaluate_verification(good, None, issame)}, c) is None
    onnx_line = _blind_warning({"v": evaluate_verification(constant, None, issame)}, c)
    assert "barely vary" in onnx_line and "--mean 0 --std 1" in onnx_line and c.summary() in onnx_line
    own = _blind_warning({"v": evaluate_verification(noise, None, issame)}, None)
    assert "at chance on v" in own and "untrained or wrong file" in own and "--mean" not in own


def test_pixel_floor_scores_identical_genuine_crops_perfectly():
    from distill.data.verification_bin import VerificationSet
    from distill.evaluation import chance_limit, pixel_floor

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(40, 112, 112, 3), dtype=np.uint8)
    issame = np.tile([True, False], 10)
    imgs[1::2][issame] = imgs[0::2][issame]  # genuine pairs: the same crop
    vs = VerificationSet(name="toy", images=imgs, issame=issame)
    floor = pixel_floor([vs])["toy"]
    assert floor["accuracy"] == 1.0 and floor["pairs"] == 20 and floor["roc_auc"] == 1.0
    assert chance_limit(100) == pytest.approx(0.6) and chance_limit(10_000) == pytest.approx(0.51)


def test_pixel_floor_equals_the_protocol_on_the_full_pixel_vectors():
    from distill.data.verification_bin import VerificationSet
    from distill.evaluation import pixel_floor

    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, size=(30, 112, 112, 3)).astype(np.int16)
    imgs = np.repeat(base, 2, axis=0) + rng.integers(-90, 90, size=(60, 112, 112, 3))
    imgs = np.clip(imgs, 0, 255).astype(np.uint8)
    issame = np.tile([True, False], 15)
    imgs[1::2][~issame] = rng.integers(0, 256, size=(15, 112, 112, 3), dtype=np.uint8)
    imgs[4] = 127  # near-grey crops: tiny centred vectors, their cosine still exact
    imgs[6] = 128
    vs = VerificationSet(name="v", images=imgs, issame=issame)
    flat = (imgs.reshape(60, -1).astype(np.float64) - 127.5) / 127.5
    want = evaluate_verification(flat, None, issame)  # the protocol on the whole pixel vectors
    got = pixel_floor([vs], chunk=7)["v"]
    assert got["accuracy"] == pytest.approx(want.accuracy, abs=1e-12)
    assert got["accuracy_std"] == pytest.approx(want.accuracy_std, abs=1e-12)
    assert got["roc_auc"] == pytest.approx(want.roc_auc, abs=1e-12)
