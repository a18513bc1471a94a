"""The data-throughput benchmark in its tiny mode, the optional simplejpeg decoder path (same pixels as
Pillow) and the training batch transform (same values as before it moved the float work)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.data import recordio
from distill.data.recordio import JPEG_DECODER_ENV, decode_rgb, jpeg_decoder
from distill.data.transforms import hflip_nchw, to_model_input, train_input
from distill.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_tiny_writes_stages_and_rates(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "dt.json", tmp_path / "dt.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "data_throughput.py"), "--tiny", "--workers", "0,1"]
    proc = subprocess.run(
        [*cmd, "--json", str(out_json), "--md", str(out_md)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out_json.read_text())
    assert "pil" in res["stages"]
    for stages in res["stages"].values():
        want = {"a_read", "b_decode", "c_augment_float_flip", "c_augment", "d_loader_w0", "d_loader_w1"}
        assert want | {"e_gpu_host_w1"} <= set(stages)
        for stage in stages.values():
            assert stage["per_core_median"] > 0 and stage["wall_median"] > 0
    pil = res["decoders"]["pil"]
    assert pil["available"] and pil["per_core_median"] > 0
    assert pil["pixels_vs_pil"]["max_abs_diff"] == 0
    assert res["target"]["per_core"] == 2500
    rows = res["gpu_estimates"]["rows"]
    assert rows and all(r["label"] == "estimated" and r["train_images_per_s"] > 0 for r in rows)
    assert all("extrapolated" in f["label"] for f in res["feed_16_core"].values())
    assert "What a 16-core box would feed" in out_md.read_text()


def _jpeg(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _samples() -> dict[str, bytes]:
    from distill.data.synth import SynthSpec, _train_items

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    out = {f"synth{i}": data for i, (_, data) in enumerate(_train_items(SynthSpec.tiny(), False)) if i < 12}
    for q in (30, 75, 95):
        for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
            out[f"noise q{q} s{sub}"] = _jpeg(noise, quality=q, subsampling=sub)
    out["progressive"] = _jpeg(noise, quality=80, progressive=True)
    out["gray"] = _jpeg(noise.convert("L"), quality=85)
    out["cmyk"] = _jpeg(noise.convert("CMYK"), quality=85)
    out["odd size"] = _jpeg(noise.crop((0, 0, 101, 97)), quality=85)
    out["png"] = (lambda b: (noise.save(b, format="PNG"), b.getvalue())[1])(io.BytesIO())
    return out


def test_simplejpeg_path_gives_pillows_pixels() -> None:
    pytest.importorskip("simplejpeg")
    for name, data in _samples().items():
        want = decode_rgb(data, name, None, decoder="pil")
        got = decode_rgb(data, name, None, decoder="simplejpeg")
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_simplejpeg_path_keeps_the_errors() -> None:
    pytest.importorskip("simplejpeg")
    good = _samples()["synth0"]
    for bad in (good[: len(good) // 2], b"\xff\xd8not a jpeg", b"junk"):
        for decoder in ("pil", "simplejpeg"):
            with pytest.raises(InputError, match="does not decode"):
                decode_rgb(bad, "x", decoder=decoder)
    with pytest.raises(InputError, match="expected 64x64"):
        decode_rgb(good, "x", 64, decoder="simplejpeg")


def test_decoder_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(JPEG_DECODER_ENV, "pil")
    assert jpeg_decoder() == "pil"
    monkeypatch.setenv(JPEG_DECODER_ENV, "libjpeg")
    with pytest.raises(InputError, match=JPEG_DECODER_ENV):
        jpeg_decoder()
    monkeypatch.setattr(recordio, "_simplejpeg", lambda: None)
    monkeypatch.setenv(JPEG_DECODER_ENV, "auto")
    assert jpeg_decoder() == "pil"
    monkeypatch.setenv(JPEG_DECODER_ENV, "simplejpeg")
    with pytest.raises(InputError, match="not installed"):
        jpeg_decoder()


def test_train_input_matches_float_mirror() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 112, 112, 3), dtype=torch.uint8, generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    before = images.clone()
    x = (images.permute(0, 3, 1, 2).float() - 127.5) / 127.5  # the old to_model_input
    want = torch.where(flip[:, None, None, None], hflip_nchw(x), x)
    got = train_input(images, flip)
    assert got.dtype == torch.float32 and got.shape == (16, 3, 112, 112)
    assert torch.equal(got, want)
    assert torch.equal(to_model_input(images), x)
    assert torch.equal(images, before)  # input untouched
    f = torch.full((2, 112, 112, 3), 7.0)
    to_model_input(f)
    assert bool((f == 7.0).all())  # a float input is copied, not normalised in place
