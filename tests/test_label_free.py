"""Label-free distillation (configs/label-free.yaml): the student depends on the teacher, never on labels.

Proof by experiment: the same images with their identity labels permuted train bit-identical students
under the label-free terms, and different ones under a margin loss (so the check can fail).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distill.config import LossSpec, TrainConfig
from distill.data.faces import open_train_set
from distill.data.synth import SynthSpec, synthesize
from distill.engine.train import TeacherTargets
from distill.fit import fit_model
from pipeline.config import load_config, validate

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class _Relabelled:
    """The same images under other labels (a permutation of the identities)."""

    def __init__(self, base, perm: np.ndarray) -> None:
        self.base, self.perm = base, perm
        self.labels = perm[np.asarray(base.labels)]
        self.num_classes = base.num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, int(self.perm[label])


def _student(tmp: Path, dataset, losses: list[LossSpec], teacher: TeacherTargets) -> dict[str, torch.Tensor]:
    _, _ = fit_model(
        name="student", arch="mobilefacenet", embedding_dim=16, arch_params={}, losses=losses,
        train_cfg=TrainConfig(batch_size=8, max_steps=3, checkpoint_every=100, lr=0.05), dataset=dataset,
        num_classes=dataset.num_classes, val_sets=[], out_dir=tmp, teacher=teacher, progress=False,
    )  # fmt: skip
    return torch.load(tmp / "student.pt", weights_only=True)["state_dict"]


def test_label_free_recipe_ignores_labels_and_a_margin_loss_does_not(tmp_path):
    recipe = yaml.safe_load((ROOT / "configs" / "label-free.yaml").read_text())
    cfg = load_config(ROOT / "configs" / "label-free.yaml")
    validate(cfg)
    assert [s.name for s in cfg.distill.losses] == [s["name"] for s in recipe["distill"]["losses"]]
    assert not {"arcface", "cosface"} & {s.name for s in cfg.distill.losses}  # no margin head

    synthesize(tmp_path / "data", SynthSpec.tiny(), progress=False)
    train = open_train_set(tmp_path / "data")
    rng = np.random.default_rng(0)
    teacher = TeacherTargets(
        rng.normal(size=(len(train), 24)).astype(np.float32),
        rng.normal(size=(len(train), 24)).astype(np.float32),
    )
    perm = rng.permutation(train.num_classes)
    relabelled = _Relabelled(train, perm)

    free = cfg.distill.losses
    a = _student(tmp_path / "a", train, free, teacher)
    b = _student(tmp_path / "b", relabelled, free, teacher)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    margin = [LossSpec("cosface", 1.0, {"scale": 32.0, "margin": 0.3}), LossSpec("feature_l2", 10.0)]
    c = _student(tmp_path / "c", train, margin, teacher)
    d = _student(tmp_path / "d", relabelled, margin, teacher)
    assert any(not torch.equal(c[k], d[k]) for k in c if c[k].is_floating_point())
