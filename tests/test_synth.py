"""The synthetic identity generator: formats, determinism, identity structure, the difficulty knob."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import KFold

from distill.data import synth
from distill.data.faces import open_train_set, open_verification
from distill.data.synth import SynthSpec, identity_for, render_face, render_identity_images, synthesize

FILES = ["train.rec", "train.idx", "property", "synth_val.bin", "synth_dev.bin", "synth_meta.json"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(out, SynthSpec.tiny(), progress=False)
    return out


def test_tiny_set_layout(tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(FILES)
    assert (tiny_dir / "property").read_text() == "12,112,112\n"
    ds = open_train_set(tiny_dir)
    assert len(ds) == 72
    assert ds.labels.tolist() == np.repeat(np.arange(12), 6).tolist()
    img, label = ds[7]
    assert img.dtype == np.uint8 and img.shape == (112, 112, 3) and label == 1
    assert ds.read_encoded(7)[:2] == b"\xff\xd8"  # JPEG like InsightFace packs
    vs = open_verification(tiny_dir / "synth_val.bin")
    assert vs.images.shape == (80, 112, 112, 3)
    assert vs.issame.sum() == 20 and len(vs.issame) == 40
    meta = json.loads((tiny_dir / "synth_meta.json").read_text())
    assert meta["spec"] == json.loads(json.dumps(dataclasses.asdict(SynthSpec.tiny())))
    assert meta["train_images"] == 72 and meta["val_pairs"] == 40
    dev = open_verification(tiny_dir / "synth_dev.bin")
    assert dev.images.shape == (80, 112, 112, 3) and dev.issame.sum() == 20
    assert meta["dev_pairs"] == 40 and meta["dev_identities_used"] == 10
    assert not np.array_equal(dev.images, vs.images)


def test_the_dev_set_leaves_train_and_val_byte_identical(tiny_dir: Path, tmp_path: Path) -> None:
    """Adding the dev split (its own seed streams) changed no byte of the files runs were compared on."""
    spec = dataclasses.replace(SynthSpec.tiny(), dev_pairs=0)
    synthesize(tmp_path / "no-dev", spec, progress=False, workers=1)
    assert not (tmp_path / "no-dev" / "synth_dev.bin").exists()
    for name in ("train.rec", "train.idx", "property", "synth_val.bin"):
        assert (tmp_path / "no-dev" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    # and its pairs follow the val set's plan (balanced folds) over its own identities
    pairs, issame = synth.val_pair_plan(SynthSpec(dev_identities=30, dev_pairs=300), "dev")
    val_pairs, _ = synth.val_pair_plan(SynthSpec(val_identities=30, val_pairs=300))
    assert issame.sum() == 150 and (pairs[issame, 0] == pairs[issame, 1]).all()
    assert len(np.unique(pairs[issame, 0])) == 30 and not np.array_equal(pairs, val_pairs)


def test_the_test_split_is_written_alone_and_leaves_every_other_file_as_it_was(tiny_dir: Path, tmp_path):
    """``synthesize_split``: the val set it writes is synthesize's to the byte; a test set comes only on
    request, over its own identities, and the data stage's files are unchanged by the split's existence."""
    val = synth.synthesize_split(tmp_path / "val", SynthSpec.tiny(), "val", progress=False, workers=1)
    assert val.read_bytes() == (tiny_dir / "synth_val.bin").read_bytes()
    assert "synth_test.bin" not in {p.name for p in tiny_dir.iterdir()}  # never by default
    spec = SynthSpec.tiny()
    test = synth.synthesize_split(tmp_path / "test", spec, "test", (10, 40), progress=False, workers=1)
    vs, val_set = open_verification(test), open_verification(val)
    assert len(vs.issame) == 40 and vs.issame.sum() == 20
    assert not {im.tobytes() for im in vs.images} & {im.tobytes() for im in val_set.images}
    with pytest.raises(ValueError, match="the test split needs sizes"):
        synth.synthesize_split(tmp_path / "none", SynthSpec.tiny(), "test", progress=False, workers=1)
    with pytest.raises(ValueError, match="the test split needs sizes"):
        synth.synthesize_split(
            tmp_path / "odd", SynthSpec.tiny(), "test", (10, 41), progress=False, workers=1
        )


def test_same_seed_gives_identical_files(tiny_dir: Path, tmp_path: Path) -> None:
    summary = synthesize(tmp_path / "again", SynthSpec.tiny(), progress=False)
    assert summary["train_images"] == 72
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    synthesize(tmp_path / "other", SynthSpec.tiny(seed=1), progress=False)
    assert (tmp_path / "other" / "train.rec").read_bytes() != (tiny_dir / "train.rec").read_bytes()


def test_one_process_and_two_write_the_same_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    """Faces are rendered by worker processes; each identity and pair has its own seeded generator."""
    synthesize(tmp_path / "one", SynthSpec.tiny(), progress=False, workers=1)
    synthesize(tmp_path / "two", SynthSpec.tiny(), progress=False, workers=2)
    for name in FILES:
        one = (tmp_path / "one" / name).read_bytes()
        assert one == (tmp_path / "two" / name).read_bytes() == (tiny_dir / name).read_bytes(), name


def test_val_folds_are_balanced() -> None:
    spec = SynthSpec(train_identities=1, images_per_identity=1, val_identities=30, val_pairs=300)
    pairs, issame = synth.val_pair_plan(spec)
    assert issame.sum() == 150
    for _, test in KFold(n_splits=10, shuffle=False).split(np.arange(len(issame))):
        assert issame[test].sum() == len(test) // 2  # 30-pair folds: exactly 15 positives
    assert (pairs[issame, 0] == pairs[issame, 1]).all()
    assert (pairs[~issame, 0] != pairs[~issame, 1]).all()
    assert pairs.min() >= 0 and pairs.max() < 30
    assert len(np.unique(pairs[issame, 0])) == 30  # positives spread over all held-out identities


@pytest.mark.parametrize("split", ["val", "dev", "test"])
def test_held_out_identities_are_not_training_or_val_identities(split: str) -> None:
    train = [identity_for(0, "train", i, 0.5) for i in range(300)]
    if split == "dev":  # the dev set chooses; it must share no identity with the val set it must not bias
        train += [identity_for(0, "val", i, 0.5) for i in range(200)]
    if split == "test":  # the report-only third set: none of train, val or dev
        train += [identity_for(0, other, i, 0.5) for other in ("val", "dev") for i in range(200)]
    val = [identity_for(0, split, j, 0.5) for j in range(200)]

    def traits(ident: synth.Identity) -> np.ndarray:
        return np.array(
            [ident.face_rx, ident.face_ry, ident.eye_dx, ident.mouth_w, *ident.skin, *ident.hair_color]
        )

    t = np.stack([traits(x) for x in train])
    v = np.stack([traits(x) for x in val])
    nearest = np.sqrt(((v[:, None] - t[None]) ** 2).sum(-1)).min(1)
    assert nearest.min() > 1e-3  # no held-out identity reappears in training
    assert len({x.detail for x in train} & {x.detail for x in val}) == 0


def _features(images: np.ndarray) -> np.ndarray:
    """Blurred, normalised face-centre pixels: a crude but independent similarity."""
    out = []
    for im in images:
        small = Image.fromarray(im[24:100, 22:90]).resize((17, 19), Image.BILINEAR)
        f = np.asarray(small, np.float32).ravel()
        out.append((f - f.mean()) / (f.std() + 1e-6))
    return np.stack(out)


def _nn_accuracy(difficulty: float, ids: int = 10, per: int = 6) -> tuple[float, float, float]:
    feats, labels = [], []
    for k in range(ids):
        ident = identity_for(3, "train", k, difficulty)
        imgs, _ = render_identity_images(ident, per, difficulty, np.random.default_rng([3, k]))
        feats.append(_features(imgs))
        labels += [k] * per
    x, y = np.concatenate(feats), np.array(labels)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    same, off = y[:, None] == y[None], ~np.eye(len(y), dtype=bool)
    intra, inter = d[same & off].mean(), d[~same].mean()
    np.fill_diagonal(d, np.inf)
    return float((y[np.argmin(d, 1)] == y).mean()), float(intra), float(inter)


def test_same_identity_images_are_closer_than_different_identities() -> None:
    acc, intra, inter = _nn_accuracy(0.3)
    assert intra < inter
    assert acc > 0.4  # chance is 0.1


def test_difficulty_makes_the_task_harder() -> None:
    easy, _, _ = _nn_accuracy(0.0)
    hard, _, _ = _nn_accuracy(1.0)
    assert easy > hard + 0.15


def test_difficulty_widens_variation_and_pulls_identities_together() -> None:
    rng = np.random.default_rng(0)
    ident = identity_for(0, "train", 0, 0.5)
    yaw = {d: np.std([synth.sample_variation(rng, ident, d).yaw for _ in range(400)]) for d in (0.0, 1.0)}
    assert yaw[1.0] > 2 * yaw[0.0]

    def spread(d: float) -> float:
        skins = np.array([identity_for(0, "train", i, d).eye_dx for i in range(300)])
        return float(skins.std())

    assert spread(1.0) < spread(0.0)


def test_render_shape_dtype_and_determinism() -> None:
    ident = identity_for(0, "train", 4, 0.5)
    a, va = render_identity_images(ident, 3, 0.5, np.random.default_rng(9))
    b, vb = render_identity_images(ident, 3, 0.5, np.random.default_rng(9))
    assert a.shape == (3, 112, 112, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert va == vb
    assert not np.array_equal(a[0], a[1])  # photos of one person differ
    assert identity_for(0, "train", 4, 0.5) == ident


def _neutral(ident: synth.Identity) -> synth.Variation:
    v = synth.sample_variation(np.random.default_rng(0), ident, 0.0)
    return dataclasses.replace(
        v, yaw=0.0, pitch=0.0, roll=0.0, scale=1.0, tx=0.0, ty=0.0, gaze=(0.0, 0.0), eye_open=1.0,
        light_strength=0.0, brightness=1.0, cast=(1.0, 1.0, 1.0), contrast=1.0, blur=0.0, noise=0.0,
        occlusion=0, wear_glasses=False, mouth_open=0.0,
    )  # fmt: skip


def test_faces_sit_on_the_arcface_template() -> None:
    """With a neutral pose the pupils are dark pixels within a few pixels of the template eye points."""
    template_eyes = [(38.2946, 51.6963), (73.5318, 51.5014)]
    for k in range(12):
        ident = identity_for(11, "train", k, 0.5)
        img = render_face(ident, _neutral(ident)).astype(int)
        for s, (tx, ty) in zip((-1, 1), template_eyes, strict=True):
            x, y = synth.CX + s * ident.eye_dx, synth.EYE_Y + ident.eye_dy
            assert abs(x - tx) < 3.5 and abs(y - ty) < 3.5
            r, c = int(round(y)), int(round(x))
            pupil = img[r - 1 : r + 2, c - 1 : c + 2].sum(axis=2).min()  # darkest pixel near the eye point
            cheek = img[r + 16, c].sum()
            assert pupil < 120 and pupil < cheek - 150


def test_neutral_face_is_left_right_balanced() -> None:
    ident = identity_for(2, "train", 1, 0.0)
    img = render_face(ident, _neutral(ident)).astype(float)
    face = img[30:100, 20:92]
    mirrored = face[:, ::-1]
    other = render_face(identity_for(2, "train", 2, 0.0), _neutral(identity_for(2, "train", 2, 0.0)))
    assert np.abs(face - mirrored).mean() < np.abs(face - other[30:100, 20:92].astype(float)).mean()


def test_spec_validation() -> None:
    for bad in (
        SynthSpec(difficulty=1.5),
        SynthSpec(train_identities=0),
        SynthSpec(val_identities=1, val_pairs=10),
        SynthSpec(jpeg_quality_range=(90, 60)),
    ):
        with pytest.raises(ValueError):
            bad.validate()


def test_render_speed() -> None:
    ident = identity_for(0, "train", 0, 0.5)
    rng = np.random.default_rng(0)
    render_face(ident, synth.sample_variation(rng, ident, 0.5), rng)
    t0 = time.perf_counter()
    for _ in range(50):
        var = synth.sample_variation(rng, ident, 0.5)
        synth.encode_jpeg(render_face(ident, var, rng), var.jpeg_quality)
    per_image = (time.perf_counter() - t0) / 50
    assert per_image < 0.015  # ~2 ms here; generous for slow or busy machines


def test_contact_sheet(tmp_path: Path) -> None:
    path = synth.contact_sheet(tmp_path / "sheet.png", identities=2, per_identity=3)
    with Image.open(path) as im:
        assert im.size == (3 * 116, 2 * 116)
