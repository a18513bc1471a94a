"""The portable facekd model checkpoint: round trip, weights_only safety, and every refusal."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from distill.errors import InputError
from distill.models.checkpoint import FORMAT, load_model, save_model
from distill.models.iresnet import IResNet
from distill.models.mobilefacenet import MobileFaceNet


def _trained_mfn(dim=32) -> MobileFaceNet:
    torch.manual_seed(0)
    model = MobileFaceNet(dim)
    with torch.no_grad():  # move BN running stats away from their defaults so buffers are checked too
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def test_round_trip_reproduces_outputs_and_meta(tmp_path):
    model = _trained_mfn()
    head_w = torch.randn(10, 32)
    extra = {
        "head_weight": head_w,
        "epoch": 3,
        "metrics": {"lfw": 0.91},
        "note": "x",
        "ids": [1, 2],
        "none": None,
    }
    path = tmp_path / "sub" / "student.pt"
    save_model(path, model, "mobilefacenet", {"embedding_dim": 32}, extra=extra)
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.pt"]  # no temp file left behind

    raw = torch.load(path, weights_only=True)  # the on-disk format itself is weights_only-loadable
    assert set(raw) == {"format", "arch", "arch_kwargs", "state_dict", "extra"}
    assert raw["format"] == "facekd-model/1" == FORMAT

    loaded, meta = load_model(path)
    assert isinstance(loaded, MobileFaceNet) and not loaded.training
    assert meta["arch"] == "mobilefacenet" and meta["arch_kwargs"] == {"embedding_dim": 32}
    assert torch.equal(meta["extra"]["head_weight"], head_w)
    assert meta["extra"]["metrics"] == {"lfw": 0.91} and meta["extra"]["ids"] == [1, 2]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_iresnet_kwargs_round_trip(tmp_path):
    model = IResNet((1, 1, 1, 1), embedding_dim=8, base_width=4)
    path = tmp_path / "t.pt"
    # arch_kwargs must rebuild the same shape; base_width is carried through
    save_model(path, model, "iresnet18", {"embedding_dim": 8, "base_width": 4})
    with pytest.raises(InputError, match=r"t.pt: weights do not fit iresnet18.*missing keys: layer1.1\."):
        load_model(path)  # iresnet18 has 2 blocks per stage, the saved model 1: missing keys are named
    # whereas a matching architecture loads
    ir18 = IResNet((2, 2, 2, 2), embedding_dim=8, base_width=4)
    save_model(path, ir18, "iresnet18", {"embedding_dim": 8, "base_width": 4})
    loaded, _ = load_model(path)
    assert loaded.conv1.out_channels == 4


def test_wrapped_model_saved_without_prefix(tmp_path):
    model = _trained_mfn(16)
    path = tmp_path / "dp.pt"
    save_model(path, nn.DataParallel(model), "mobilefacenet", {"embedding_dim": 16})
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert not any(k.startswith("module.") for k in keys)
    load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.pt: checkpoint file not found"):
        load_model(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="junk.pt: not a facekd checkpoint"):
        load_model(junk)
    plain = tmp_path / "plain.pt"
    torch.save(MobileFaceNet(8).state_dict(), plain)  # a bare state_dict is not our format
    with pytest.raises(InputError, match="plain.pt: not a facekd checkpoint"):
        load_model(plain)


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save(
        {"format": FORMAT, "arch": "mobilefacenet", "arch_kwargs": {}, "state_dict": {}, "x": _Evil()}, path
    )
    with pytest.raises(InputError, match="evil.pt: not a facekd checkpoint"):
        load_model(path)
    assert "pickled code ran" not in capsys.readouterr().out
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(InputError, match="raw.pkl"):
        load_model(raw)


def test_unknown_arch(tmp_path):
    path = tmp_path / "u.pt"
    payload = {"format": FORMAT, "arch": "resnet9000", "arch_kwargs": {"embedding_dim": 8}, "state_dict": {}}
    torch.save(payload | {"extra": None}, path)
    with pytest.raises(InputError, match="u.pt: unknown model 'resnet9000'; choose one of"):
        load_model(path)
    with pytest.raises(InputError, match="unknown model 'resnet9000'"):
        save_model(tmp_path / "v.pt", MobileFaceNet(8), "resnet9000", {"embedding_dim": 8})


def test_state_dict_mismatch_names_keys(tmp_path):
    model = MobileFaceNet(16)
    path = tmp_path / "m.pt"
    save_model(path, model, "mobilefacenet", {"embedding_dim": 16})
    payload = torch.load(path, weights_only=True)

    payload["state_dict"].pop("linear.weight")
    torch.save(payload, path)
    with pytest.raises(
        InputError, match=r"m.pt: weights do not fit mobilefacenet.*missing keys: linear.weight"
    ):
        load_model(path)

    save_model(path, model, "mobilefacenet", {"embedding_dim": 16})
    payload = torch.load(path, weights_only=True)
    payload["arch_kwargs"] = {"embedding_dim": 32}  # the weights are 16-d
    torch.save(payload, path)
    with pytest.raises(InputError, match=r"shape mismatch .*linear.weight \(16, 512\) vs \(32, 512\)"):
        load_model(path)


def test_extra_must_be_weights_only_loadable(tmp_path):
    model = MobileFaceNet(8)
    with pytest.raises(TypeError, match=r"extra\['cfg'\]: object is not allowed"):
        save_model(tmp_path / "x.pt", model, "mobilefacenet", {"embedding_dim": 8}, extra={"cfg": object()})
    with pytest.raises(TypeError, match="dict keys must be str"):
        save_model(tmp_path / "x.pt", model, "mobilefacenet", {"embedding_dim": 8}, extra={1: 2})
    assert not (tmp_path / "x.pt").exists()
