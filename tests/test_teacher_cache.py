"""The teacher-embedding cache: every image once, plain and mirrored, sharded across ranks, atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.teacher import Teacher, cache_teacher_embeddings, open_teacher_cache, shard_batches


class Faces:
    def __init__(self, n: int = 10) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(n, 112, 112, 3), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], 0


def left_half_mean(x: torch.Tensor) -> torch.Tensor:
    """A teacher whose answer changes under a mirror: per-channel mean of the left half of the image."""
    return x[:, :, :, :56].mean(dim=(2, 3))


def test_shard_batches_deals_batches_round_robin():
    # 10 images, batches of 3, 2 ranks: batches [0:3] [3:6] [6:9] [9:10] dealt 0, 1, 0, 1
    assert shard_batches(10, 3, 0, 2) == [range(0, 3), range(6, 9)]
    assert shard_batches(10, 3, 1, 2) == [range(3, 6), range(9, 10)]
    assert shard_batches(10, 3) == [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]
    assert shard_batches(2, 4, 1, 2) == []  # more ranks than batches: a rank may have nothing to do
    for n, b, w in [(1, 1, 3), (100, 7, 3), (64, 64, 2), (65, 8, 4)]:
        seen = [i for r in range(w) for batch in shard_batches(n, b, r, w) for i in batch]
        assert sorted(seen) == list(range(n))  # every image exactly once


def test_cache_holds_plain_and_mirrored_embeddings(tmp_path):
    faces = Faces()
    teacher = Teacher(embed=left_half_mean, embedding_dim=3, source="test")
    cache_teacher_embeddings(teacher, faces, tmp_path, batch_size=4, progress=False)
    plain, flipped = open_teacher_cache(tmp_path)
    x = (faces.images.astype(np.float64) - 127.5) / 127.5  # NHWC in [-1, 1]
    np.testing.assert_allclose(plain, x[:, :, :56].mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(flipped, x[:, :, 56:].mean(axis=(1, 2)), atol=1e-5)  # mirror: right half
    assert isinstance(plain, np.memmap) and plain.dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flipped.npy", "plain.npy"]


def test_crash_leaves_no_cache_that_looks_complete(tmp_path):
    calls = {"n": 0}

    def failing(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("GPU fell off the bus")
        return left_half_mean(x)

    teacher = Teacher(embed=failing, embedding_dim=3, source="test")
    with pytest.raises(RuntimeError):
        cache_teacher_embeddings(teacher, Faces(), tmp_path, batch_size=4, progress=False)
    assert not (tmp_path / "plain.npy").exists() and not (tmp_path / "flipped.npy").exists()


def _pytorch_teacher(model: torch.nn.Module, dim: int) -> Teacher:
    model.eval()

    def embed(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x).float()

    return Teacher(embed=embed, embedding_dim=dim, source="checkpoint:test", module=model)


def test_native_bf16_reads_the_cpu_flags():
    from distill.engine.device import native_bf16

    cpu = torch.device("cpu")
    assert native_bf16(cpu, "processor: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert native_bf16(cpu, "flags : fpu avx512_bf16\n")
    assert not native_bf16(cpu, "flags : fpu sse2 avx2 avx512f\n")  # bf16 would be emulated: slower
    assert not native_bf16(cpu, "")


def test_bf16_cache_stays_within_its_cosine_of_fp32(tmp_path):
    from distill.models.iresnet import iresnet18

    torch.manual_seed(0)
    teacher = _pytorch_teacher(iresnet18(embedding_dim=64, base_width=16), 64)
    faces = Faces(12)
    chosen = cache_teacher_embeddings(
        teacher, faces, tmp_path, batch_size=4, progress=False, precision="bf16", min_cosine=0.99
    )
    assert chosen["precision"] == "bf16" and chosen["checked_images"] == 8  # 4 images and their mirrors
    plain, flipped = open_teacher_cache(tmp_path)
    # the second way: fp32 embeddings computed here, without the cache
    x = torch.from_numpy((faces.images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    for cached, ref in ((plain, teacher.embed(x)), (flipped, teacher.embed(torch.flip(x, dims=[3])))):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(np.array(cached)), ref, dim=1)
        assert cos.min() >= 0.99
        assert not np.allclose(np.array(cached), ref.numpy(), rtol=0, atol=1e-6)  # really bf16
    fp32_dir = tmp_path / "fp32"
    assert (
        cache_teacher_embeddings(teacher, faces, fp32_dir, batch_size=4, progress=False)["precision"]
        == "fp32"
    )
    np.testing.assert_allclose(open_teacher_cache(fp32_dir)[0], teacher.embed(x).numpy(), atol=1e-5)


class OffsetCancel(torch.nn.Module):
    """Small features riding on a large offset that a second layer removes: bf16 keeps ~3 digits of 300,
    so the features are lost in bf16 and intact in fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.up = torch.nn.Linear(3, 8)
        self.down = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(8, 3) * 0.1)
            self.up.bias.fill_(300.0)
            self.down.weight.copy_(torch.eye(8))
            self.down.bias.fill_(-300.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.up(self.pool(x).flatten(1)))


def test_bf16_that_changes_the_embeddings_falls_back_to_fp32(tmp_path):
    torch.manual_seed(0)
    teacher = _pytorch_teacher(OffsetCancel(), 8)
    faces = Faces(6)
    chosen = cache_teacher_embeddings(
        teacher, faces, tmp_path, batch_size=4, progress=False, precision="bf16", min_cosine=0.999
    )
    assert chosen["precision"] == "fp32" and chosen["min_cosine_to_fp32"] < 0.999
    assert "below 0.999" in chosen["why"]
    x = torch.from_numpy((faces.images.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
    np.testing.assert_allclose(open_teacher_cache(tmp_path)[0], teacher.embed(x).numpy(), atol=1e-5)


def test_teacher_without_a_pytorch_module_stays_fp32(tmp_path):
    teacher = Teacher(embed=left_half_mean, embedding_dim=3, source="onnx:test")
    chosen = cache_teacher_embeddings(
        teacher, Faces(), tmp_path, batch_size=4, progress=False, precision="auto"
    )
    assert chosen == {"precision": "fp32", "why": "the teacher is not a PyTorch model"}


def test_bf16_copy_feeds_like_the_teacher_and_leaves_it_fp32():
    """The bf16 copy goes through the teacher's input contract (here BGR, raw 0..255 pixels) and its
    folded BatchNorms; the teacher's own module stays fp32 with all its BatchNorms."""
    from distill.models.iresnet import iresnet18
    from distill.teacher import bf16_embed
    from distill.teacher_input import InputContract

    torch.manual_seed(0)
    model = iresnet18(embedding_dim=32, base_width=16).eval()
    contract = InputContract(channels="BGR", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = torch.rand(6, 3, 112, 112) * 2 - 1

    def embed(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(contract.feed(batch)).float()

    teacher = Teacher(embed, 32, "checkpoint:test", contract=contract, module=model)
    got = bf16_embed(teacher)(x)
    # the second way: BGR raw pixels by hand, into the fp32 module
    raw = (x * 127.5 + 127.5).flip(1)
    with torch.no_grad():
        ref = model(raw)
    assert torch.nn.functional.cosine_similarity(got.double(), ref.double(), dim=1).min() >= 0.999
    assert got.dtype == torch.float32 and not torch.allclose(got, ref, rtol=0, atol=1e-6)  # really bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 30
