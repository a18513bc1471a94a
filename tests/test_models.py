"""Backbones, the complexity counter, the factory and the ONNX teacher wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import InputError
from distill.models.complexity import count_macs, count_params
from distill.models.factory import BACKBONES, build_backbone
from distill.models.iresnet import IResNet, iresnet18, iresnet50, iresnet100
from distill.models.mobilefacenet import MobileFaceNet
from distill.models.onnx_teacher import OnnxTeacher

# The ONNX tests use the TorchScript exporter on purpose (dynamo=False, what users most often have).
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]

# ----------------------------------------------------------------------------- complexity counter


def test_count_macs_on_hand_computed_net():
    # conv 3->4, k3, s1, p1 on 5x5: output 4*5*5 = 100 values, each 3*3*3 = 27 MACs  -> 2700
    # depthwise conv 4->4, groups 4, k3, s2, p1 on 5x5: output 4*3*3 = 36 values, each 1*3*3 = 9 -> 324
    # linear 36 -> 10: 10 outputs, each 36 MACs -> 360
    # BatchNorm and ReLU are not counted. Total 3384 for batch 1; batch 2 doubles it.
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=1, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False),
        nn.Flatten(),
        nn.Linear(36, 10),
    )
    assert count_macs(net, (1, 3, 5, 5)) == 2700 + 324 + 360
    assert count_macs(net, (2, 3, 5, 5)) == 2 * (2700 + 324 + 360)
    # params: conv 3*4*9 + 4 bias, BN 4 + 4, dw conv 4*9, linear 36*10 + 10
    assert count_params(net) == 108 + 4 + 8 + 36 + 370


def test_count_macs_restores_mode_and_removes_hooks():
    net = nn.Sequential(nn.Linear(4, 3))
    net.train()
    count_macs(net, (1, 4))
    assert net.training
    assert not net[0]._forward_hooks


# ----------------------------------------------------------------------------- MobileFaceNet


def _mfn_analytic(dim: int) -> tuple[int, int]:
    """(MACs, params) of the paper table computed by hand, layer by layer (second implementation)."""
    macs = params = 0

    def conv(hw_out, cin, cout, k, groups=1, bn=True, prelu=True):
        nonlocal macs, params
        macs += hw_out * hw_out * cout * (cin // groups) * k * k
        params += cout * (cin // groups) * k * k + (2 * cout if bn else 0) + (cout if prelu else 0)

    conv(56, 3, 64, 3)  # conv3x3 s2
    conv(56, 64, 64, 3, groups=64)  # depthwise 3x3
    hw, cin = 56, 64
    for t, c, n, s in [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            conv(hw, cin, hidden, 1)  # expand at input resolution
            hw = hw // stride
            conv(hw, hidden, hidden, 3, groups=hidden)
            conv(hw, hidden, c, 1, prelu=False)  # linear bottleneck
            cin = c
    assert hw == 7
    conv(7, 128, 512, 1)
    conv(1, 512, 512, 7, groups=512, prelu=False)  # GDConv
    macs += 512 * dim
    params += 512 * dim + 2 * dim  # linear (no bias) + BatchNorm1d gamma/beta
    return macs, params


@pytest.mark.parametrize("dim", [128, 512])
def test_mobilefacenet_size_and_cost_match_table(dim):
    model = MobileFaceNet(embedding_dim=dim)
    macs, params = _mfn_analytic(dim)
    assert count_macs(model) == macs
    assert count_params(model) == params


def test_mobilefacenet_matches_published_numbers():
    # Paper: "less than 1 million parameters" (0.99M) and 221M MAdds at 112x112 for 128-d; losses.md §9.2
    # derives 0.995M with BN gamma/beta and 1.003M with PReLU slopes + final BN too -> band 0.99M..1.01M.
    m128 = MobileFaceNet(128)
    assert 0.99e6 <= count_params(m128) <= 1.01e6
    assert 220e6 <= count_macs(m128) <= 222e6
    # 512-d variant of the KD papers: ~1.20M params, 221.2M MAdds (losses.md §9.2).
    m512 = MobileFaceNet(512)
    assert 1.19e6 <= count_params(m512) <= 1.21e6
    assert 220.5e6 <= count_macs(m512) <= 222e6


def test_mobilefacenet_structure():
    model = MobileFaceNet(128)
    assert len(model.blocks) == 5 + 1 + 6 + 1 + 2
    # MobileNetV2 rule: shortcut on stride-1 blocks with equal channels -> 4 + 0 + 6 + 0 + 2
    assert sum(b.use_residual for b in model.blocks) == 12
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert prelus and all(p.num_parameters > 1 for p in prelus)  # per-channel
    assert isinstance(model.bn_out, nn.BatchNorm1d) and model.linear.bias is None
    seen = {}

    def hook(module, inputs, output):
        seen["gd_in"] = tuple(inputs[0].shape)

    model.gdconv.register_forward_hook(hook)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert seen["gd_in"] == (2, 512, 7, 7)
    assert out.shape == (2, 128)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))  # raw, not normalised


def test_mobilefacenet_torch_export_matches_eager():
    model = MobileFaceNet(128).eval()
    x = torch.randn(2, 3, 112, 112)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- iResNet


def _iresnet_params_analytic(layers, dim, w):
    params = 3 * 9 * w + 2 * w + w  # stem conv + BN + PReLU
    cin = w
    for i, n in enumerate(layers):
        p = w * 2**i
        for j in range(n):
            inp = cin if j == 0 else p
            params += 2 * inp + 9 * inp * p + 2 * p + p + 9 * p * p + 2 * p
            if j == 0:
                params += inp * p + 2 * p  # 1x1 stride-2 projection + BN
        cin = p
    params += 2 * cin  # final BN2d
    params += cin * 7 * 7 * dim + dim  # fc with bias
    params += 2 * dim  # features BatchNorm1d
    return params


@pytest.mark.parametrize(
    "fn,layers", [(iresnet18, (2, 2, 2, 2)), (iresnet50, (3, 4, 14, 3)), (iresnet100, (3, 13, 30, 3))]
)
def test_iresnet_param_count_analytic(fn, layers):
    assert count_params(fn(512)) == _iresnet_params_analytic(layers, 512, 64)


def test_iresnet50_matches_published_size():
    # arcface_torch r50 with a 512-d embedding is quoted as ~43.6M parameters.
    n = count_params(iresnet50(512))
    assert 43.5e6 <= n <= 43.7e6


def test_iresnet_narrow_forward_and_insightface_names():
    model = IResNet((1, 1, 1, 1), embedding_dim=32, base_width=8).eval()
    assert count_params(model) == _iresnet_params_analytic((1, 1, 1, 1), 32, 8)
    with torch.no_grad():
        out = model(torch.randn(3, 3, 112, 112))
    assert out.shape == (3, 32)
    keys = set(iresnet18().state_dict())
    # arcface_torch parameter names, so its backbone.pth files load unchanged
    for k in [
        "conv1.weight",
        "bn1.running_mean",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.weight",
        "layer1.0.prelu.weight",
        "layer1.0.conv2.weight",
        "layer1.0.bn3.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.1.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "fc.bias",
        "features.weight",
        "features.running_mean",
    ]:
        assert k in keys, k
    assert not model.features.weight.requires_grad


# ----------------------------------------------------------------------------- factory


def test_factory_builds_every_name():
    assert set(BACKBONES) == {"mobilefacenet", "iresnet18", "iresnet50", "iresnet100"}
    m = build_backbone("mobilefacenet", 64)
    assert isinstance(m, MobileFaceNet) and m.linear.out_features == 64
    r = build_backbone("iresnet18", 16, base_width=8)
    assert isinstance(r, IResNet) and r.fc.out_features == 16 and r.conv1.out_channels == 8


def test_factory_errors():
    with pytest.raises(InputError, match="unknown model 'resnet9'; choose one of iresnet100, iresnet18"):
        build_backbone("resnet9", 128)
    with pytest.raises(InputError, match="mobilefacenet"):
        build_backbone("mobilefacenet", 128, base_width=8)


# ----------------------------------------------------------------------------- ONNX teacher


class _Pool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 6)


class _Tiny(nn.Module):
    def __init__(self, dim=6):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4, dim)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


class _TwoOut(_Tiny):
    def forward(self, x):
        y = super().forward(x)
        return y, y * 2


def _export(model, path, shape=(1, 3, 112, 112), dynamic=True):
    kwargs = {}
    if dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "n"}, "output": {0: "n"}}
    torch.onnx.export(
        model.eval(), (torch.randn(*shape),), str(path), input_names=["input"], output_names=["output"],
        dynamo=False, **kwargs,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_teacher_matches_torch(tmp_path, dynamic):
    torch.manual_seed(0)
    model = _Tiny().eval()
    teacher = OnnxTeacher(_export(model, tmp_path / "t.onnx", dynamic=dynamic))
    assert teacher.embedding_dim == 6
    assert teacher.fixed_batch == (None if dynamic else 1)
    x = torch.randn(5, 3, 112, 112)
    got = teacher(x)
    assert got.shape == (5, 6) and got.dtype == torch.float32 and not got.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-5, atol=1e-5)


def test_onnx_teacher_fixed_batch_pads_last_chunk(tmp_path):
    torch.manual_seed(1)
    model = _Tiny(dim=3).eval()
    teacher = OnnxTeacher(_export(model, tmp_path / "b4.onnx", shape=(4, 3, 112, 112), dynamic=False))
    assert teacher.fixed_batch == 4
    x = torch.randn(6, 3, 112, 112)  # one full chunk + a padded chunk of 2
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,dynamic", [((1, 3, 112, 112), True), ((4, 3, 112, 112), False)])
def test_onnx_teacher_lanes_split_a_batch_and_give_one_sessions_bits(tmp_path, shape, dynamic):
    torch.manual_seed(4)
    path = _export(_Tiny(dim=5).eval(), tmp_path / "t.onnx", shape=shape, dynamic=dynamic)
    lanes = OnnxTeacher(path, num_threads=2)  # evaluation-only (spin=False) on a CPU: two sessions
    one = OnnxTeacher(path, num_threads=2, spin=True)  # a timed teacher keeps one session
    alone = OnnxTeacher(path, num_threads=1)
    assert (lanes.lanes, one.lanes, alone.lanes) == (2, 1, 1)
    assert [s.get_session_options().intra_op_num_threads for s in lanes._sessions] == [1, 1]
    seen = []
    real_run = lanes._run
    lanes._run = lambda batch, session=None: seen.append(id(session)) or real_run(batch, session)
    x = torch.randn(7, 3, 112, 112)  # odd; with batch 4: one whole chunk per lane, the second padded
    got = lanes(x)
    assert set(seen) == {id(s) for s in lanes._sessions}  # both sessions ran rows
    assert torch.equal(got, one(x)) and torch.equal(got, alone(x))  # the same bits as one session


def test_onnx_teacher_runs_exported_mobilefacenet(tmp_path):
    torch.manual_seed(2)
    model = MobileFaceNet(128).eval()
    teacher = OnnxTeacher(_export(model, tmp_path / "mfn.onnx"))
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), rtol=1e-3, atol=1e-3)


def test_onnx_teacher_rejects_bad_files(tmp_path):
    with pytest.raises(InputError, match="missing.onnx: teacher ONNX file not found"):
        OnnxTeacher(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.onnx: cannot load"):
        OnnxTeacher(junk)
    small = _export(_Tiny(), tmp_path / "small.onnx", shape=(1, 3, 64, 64))
    assert OnnxTeacher(small).contract.size == 64  # another input size: the 112 crop is resized for it
    grey = _export(_Pool(), tmp_path / "grey.onnx", shape=(1, 1, 112, 112))
    grey_msg = r"grey.onnx: teacher input 'input': has shape \['n', 1, 112, 112\], expected 3 colour"
    with pytest.raises(InputError, match=grey_msg):
        OnnxTeacher(grey)
    two = tmp_path / "two.onnx"
    torch.onnx.export(
        _TwoOut().eval(), (torch.randn(1, 3, 112, 112),), str(two), input_names=["input"],
        output_names=["a", "b"], dynamo=False,
    )  # fmt: skip
    with pytest.raises(InputError, match="two.onnx: teacher must have exactly one input and one output"):
        OnnxTeacher(two)


def test_onnx_teacher_prefers_cuda_when_listed(monkeypatch):
    from distill.models.onnx_teacher import _default_providers

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert _default_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun rank 3 of a node runs its teacher on GPU 3
    assert _default_providers(["CUDAExecutionProvider"]) == [("CUDAExecutionProvider", {"device_id": 3})]
    assert _default_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert np.all(np.asarray(_default_providers(["X"])) == ["X"])
