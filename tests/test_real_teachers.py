"""Teachers as users hold them, through ``python -m pipeline`` and a config alone (tiny preset).

The two real networks of ../shared/real/ are taken as they are; an ONNX is made the way arcface_torch's
torch2onnx.py makes one with today's exporter; a plain arcface_torch-style state_dict is loaded by name.
Bad teachers end in one ``error:`` line with exit 2 and leave no teacher output behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
MOBILEFACE = REAL / "teacher_mobileface_nhwc.onnx"
FACERES = REAL / "teacher_faceres_nhwc.onnx"
needs_real = pytest.mark.skipif(not MOBILEFACE.is_file(), reason="../shared/real/ not present")


def _config(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, as a user runs it (stderr is what they read)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "--no-progress"], cwd=ROOT, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


@needs_real
def test_real_mobileface_onnx_as_is_through_the_whole_pipeline(tmp_path, capsys):
    cfg = _config(tmp_path, "mf", {"teacher": {"onnx": str(MOBILEFACE)}})
    out = tmp_path / "run"
    assert main(["all", "--preset", "tiny", "--config", cfg, "--target", "jetson", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count("teacher input: NHWC") == 1  # printed once, by the teacher stage
    teacher = json.loads((out / "teacher" / "teacher.json").read_text())
    assert teacher["kind"] == "onnx" and teacher["embedding_dim"] == 256 and not teacher["has_head"]
    assert teacher["input"]["layout"] == "NHWC" and teacher["input"]["mean"] == [0.0] * 3
    assert teacher["input"]["std"] == [1.0] * 3
    assert "normalises inside" in teacher["input"]["origin"]["scaling"]
    results = json.loads((out / "results.json").read_text())
    row = next(r for r in results["rows"] if r["role"] == "teacher")
    assert row["format"] == "onnx" and row["accuracy"] == pytest.approx(teacher["synth_val/accuracy"])
    floors = results["floors"]["synth_val"]
    assert 0.5 <= floors["pixels"]["accuracy"] <= 1.0 and floors["teacher"] == row["accuracy"]
    assert "Floor on `synth_val`: raw pixels compared by cosine" in (out / "report.md").read_text()
    assert np.load(out / "cache" / "plain.npy").shape[1] == 256
    est = {e["model"]: e for e in results["estimator_error_on_host"]}
    assert est["teacher"]["measured_ms"] > 0  # the NHWC file is timed as it is


@needs_real
def test_real_teachers_in_lanes_give_one_sessions_bits():
    from distill.models.onnx_teacher import OnnxTeacher

    x = torch.rand(5, 3, 112, 112) * 2 - 1
    for path in (MOBILEFACE, REAL / "teacher_faceres_nhwc.onnx"):
        lanes, one = OnnxTeacher(path, num_threads=2), OnnxTeacher(path, num_threads=2, spin=True)
        assert (lanes.lanes, one.lanes) == (2, 1), path.name
        assert torch.equal(lanes(x), one(x)), path.name


@needs_real
def test_real_faceres_needs_only_its_declared_contract(tmp_path):
    cfg = _config(tmp_path, "fr", {"teacher": {"onnx": str(FACERES), "input": {"mean": 0, "std": 1}}})
    out = tmp_path / "run"
    proc = _cli("distill", "--preset", "tiny", "--config", cfg, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "teacher input: NHWC" in proc.stdout and "224x224 (resized from 112)" in proc.stdout
    teacher = json.loads((out / "teacher" / "teacher.json").read_text())
    assert teacher["input"]["size"] == 224 and teacher["input"]["origin"]["scaling"] == "declared"
    assert teacher["embedding_dim"] == 1024 and np.load(out / "cache" / "plain.npy").shape[1] == 1024
    assert (out / "distill" / "student.pt").is_file()


def _torch2onnx_today(net: torch.nn.Module, path: Path) -> Path:
    """What arcface_torch's torch2onnx.py writes with today's default exporter: input 'data', batch
    exported at 1, then the batch axis renamed to the string 'None' (the Reshape inside stays batch 1)."""
    import onnx

    img = torch.from_numpy(((np.random.default_rng(0).integers(0, 255, (112, 112, 3)) / 255.0 - 0.5) / 0.5)
                           .transpose(2, 0, 1)).unsqueeze(0).float()  # fmt: skip
    torch.onnx.export(net.eval(), img, str(path), input_names=["data"], keep_initializers_as_inputs=False,
                      verbose=False, opset_version=18)  # fmt: skip
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))
    return path


def test_arcface_torch2onnx_export_runs_at_the_batch_it_accepts(tmp_path):
    from distill.data.faces import open_train_set
    from distill.data.transforms import to_model_input
    from distill.models.iresnet import iresnet18

    torch.manual_seed(0)
    net = iresnet18(embedding_dim=64, base_width=8).eval()
    path = _torch2onnx_today(net, tmp_path / "r18.onnx")
    # random weights score at chance by construction: say so, or the fed-wrongly check stops the run
    cfg = _config(tmp_path, "t2o", {"teacher": {"onnx": str(path), "allow_chance": True}})
    out = tmp_path / "run"
    proc = _cli("all", "--preset", "tiny", "--config", cfg, "--target", "jetson", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "declares a dynamic batch but at batch 2 fails: Reshape node" in proc.stdout
    assert "every batch of N images costs N calls" in proc.stdout
    teacher = json.loads((out / "teacher" / "teacher.json").read_text())
    assert teacher["input"]["batch"] == 1 and teacher["input"]["layout"] == "NCHW"
    train = open_train_set(out / "data")
    images = np.stack([train[i][0] for i in range(5)])
    with torch.no_grad():
        want = net(to_model_input(images)).numpy()
    np.testing.assert_allclose(np.load(out / "cache" / "plain.npy")[:5], want, rtol=1e-4, atol=1e-4)


def test_arcface_torch_backbone_pth_loads_by_architecture_name(tmp_path):
    from distill.data.faces import open_verification
    from distill.evaluation import evaluate_sets, torch_embed_fn
    from distill.models.iresnet import iresnet18

    torch.manual_seed(1)
    net = iresnet18(embedding_dim=64, base_width=8).eval()
    pth = tmp_path / "backbone.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, pth)
    spec = {"checkpoint": str(pth), "arch": "iresnet18", "embedding_dim": 64}
    spec.update(arch_params={"base_width": 8}, allow_chance=True)  # random weights: at chance
    out = tmp_path / "run"
    proc = _cli("all", "--preset", "tiny", "--config", _config(tmp_path, "pth", {"teacher": spec}),
                "--target", "jetson", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    teacher = json.loads((out / "teacher" / "teacher.json").read_text())
    assert teacher["kind"] == "state_dict" and teacher["embedding_dim"] == 64
    results = json.loads((out / "results.json").read_text())  # measured and estimated like any teacher
    row = next(r for r in results["rows"] if r["role"] == "teacher")
    assert row["format"] == "pytorch" and row["accuracy"] == pytest.approx(teacher["synth_val/accuracy"])
    assert "teacher" in {e["model"] for e in results["estimator_error_on_host"]}
    vs = open_verification(out / "data" / "synth_val.bin")
    want = evaluate_sets(torch_embed_fn(net), [vs], flip=True)["synth_val"].accuracy
    assert teacher["synth_val/accuracy"] == pytest.approx(want)

    wrong = {**spec, "arch": "mobilefacenet", "arch_params": {}}
    bad = _cli("teacher", "--preset", "tiny", "--config", _config(tmp_path, "wrong", {"teacher": wrong}),
               "--out", str(tmp_path / "wrong"))  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: ") and "weights do not fit mobilefacenet" in bad.stderr
    assert not (tmp_path / "wrong" / "teacher").exists()


def _bad_onnx_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line error must say)."""

    class Grey(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 4)

    class Two(torch.nn.Module):
        def forward(self, x):
            f = x.mean(dim=(2, 3))
            return f, f * 2

    grey, two = tmp_path / "grey.onnx", tmp_path / "two.onnx"
    torch.onnx.export(Grey(), (torch.randn(1, 1, 112, 112),), str(grey), input_names=["x"], dynamo=False)
    torch.onnx.export(Two(), (torch.randn(1, 3, 112, 112),), str(two), input_names=["x"], dynamo=False)
    text = tmp_path / "model.onnx"
    text.write_text("this is not a model\n")
    return {
        "grey": (grey, "expected 3 colour channels"),
        "two outputs": (two, "exactly one input and one output, found 1 inputs and 2 outputs"),
        "not onnx": (text, "cannot load as an ONNX model"),
        "missing": (tmp_path / "nope.onnx", "teacher file not found"),
    }


def test_bad_teacher_files_end_in_one_line_and_exit_2(tmp_path):
    for name, (path, message) in _bad_onnx_files(tmp_path).items():
        out = tmp_path / f"run-{name.replace(' ', '-')}"
        cfg = _config(tmp_path, name.replace(" ", "-"), {"teacher": {"onnx": str(path)}})
        proc = _cli("teacher", "--preset", "tiny", "--config", cfg, "--out", str(out))
        assert proc.returncode == 2, (name, proc.stderr[-1500:])
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, (name, proc.stderr)
        assert message in proc.stderr, (name, proc.stderr)
        assert not (out / "teacher").exists() and not list(out.glob(".teacher.work*")), name


@needs_real
def test_a_teacher_fed_wrongly_stops_the_run_unless_told_to_go_on(tmp_path):
    twice = {"onnx": str(MOBILEFACE), "input": {"mean": 127.5, "std": 127.5}}  # normalised twice
    out = tmp_path / "run"
    proc = _cli("distill", "--preset", "tiny", "--config", _config(tmp_path, "twice", {"teacher": twice}),
                "--out", str(out))  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "barely vary" in proc.stderr and "most likely fed wrongly" in proc.stderr
    assert "pixel scaling" in proc.stderr and "NHWC RGB (x - 127.5) / 127.5 112x112" in proc.stderr
    assert not (out / "teacher").exists() and not (out / "cache").exists()
    go_on = {"teacher": {**twice, "allow_chance": True}}
    proc = _cli("teacher", "--preset", "tiny", "--config", _config(tmp_path, "go", go_on), "--out", str(out))
    assert proc.returncode == 0 and "[teacher] warning: its embeddings barely vary" in proc.stdout


@needs_real
def test_evaluate_on_real_photos_the_real_teacher_separates_people(capsys):
    assert main(["evaluate", "--model", str(MOBILEFACE), "--data", str(REAL / "photos"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["pairs"] == 35 and r["input"]["layout"] == "NHWC"
    assert r["roc_auc"] >= 0.95  # 3 genuine (Obama) pairs vs 32 impostor pairs of other people
    assert r["cosine"]["genuine_mean"] > r["cosine"]["impostor_mean"] + 0.15
    # the same photos with the normalisation applied twice: the people are no longer told apart
    assert main(["evaluate", "--model", str(MOBILEFACE), "--data", str(REAL / "photos"), "--json",
                 "--mean", "127.5", "--std", "127.5"]) == 0  # fmt: skip
    twice = json.loads(capsys.readouterr().out)
    assert twice["roc_auc"] < r["roc_auc"] - 0.1
    assert "warning" not in r  # fed right: nothing to say
    assert "barely vary" in twice["warning"] and "most likely fed wrongly" in twice["warning"]


@needs_real
def test_evaluate_warns_when_a_file_from_elsewhere_is_fed_wrongly(capsys):
    """FaceRes says nothing about its pixels (no Sub/Mul in front): fed the default (x - 127.5) / 127.5 it
    is at chance on real faces, and ``evaluate`` says so in one line that names the flags to declare."""
    lfw = ["--data", str(REAL / "lfw100")]  # report-only: a real set to show the warning on, nothing chosen
    assert main(["evaluate", "--model", str(FACERES), *lfw]) == 0
    out, err = capsys.readouterr()
    assert "accuracy" in out and err.count("\n") == 1 and err.startswith("warning: it is at chance on lfw100")
    assert "most likely fed wrongly" in err and "(x - 127.5) / 127.5" in err and "--mean 0 --std 1" in err
    assert main(["evaluate", "--model", str(FACERES), *lfw, "--mean", "0", "--std", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    declared = json.loads(out)
    assert "warning" not in declared and "warning" not in err and declared["accuracy"] > 0.85
