"""The stages of a run, in order, each a function of the run context.

Every stage runs through ``RunFolder.run`` with a key built from its config section and the hashes of
its upstream outputs, so changing the teacher re-runs everything after it and nothing before it.
Calling a later stage runs the earlier ones first (each is skipped when current), like ``make``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devices.connect import DeviceConnection
from distill.atomic import write_json, write_text
from distill.config import config_hash
from distill.errors import InputError
from pipeline.config import Config
from pipeline.runfolder import RunFolder, StageOutcome, fingerprint

STAGES = ["data", "teacher", "cache", "distill", "qat", "export", "measure", "report"]


@dataclass
class Context:
    run: RunFolder
    cfg: Config
    target: str = "host"
    progress: bool = True
    force: bool = False
    allow_parity_failure: bool = False
    verbose: bool = False  # other libraries' output on the console instead of logs/<stage>.log
    log: Callable[[str], None] = print
    connection: DeviceConnection = field(default_factory=DeviceConnection)


# ------------------------------------------------------------------------------- saved evaluations
EVALUATION_FILE = "evaluation.json"


def evaluate_and_record(
    ctx: Context,
    work: Path,
    models: dict[str, tuple[Path, Any]],
    vals: list[Any],
    done: dict | None = None,
    how: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate each model once where it is made and save the verification fields beside it.

    ``models`` maps a name to (the file the fields belong to, an embedding function); ``done`` holds
    results a stage already computed (name -> ``evaluate_sets`` output); ``how`` says, per name, what
    computed them when it is not the file itself (an onnxruntime copy of a checkpoint). The file's sha256
    goes with the fields, so the measure stage uses them only for that very file, fed the same way
    (``measure.flip``); the first set's unmirrored embeddings are kept for the model card's thresholds.
    """
    from distill.engine.distributed import current_dist
    from distill.evaluation import evaluate_sets, verification_fields

    if not current_dist().is_main:
        return {}
    done = dict(done or {})
    fields, plain = {}, {}
    for name, (_, embed) in models.items():
        if not vals:  # no verification set configured: nothing to evaluate
            break
        plain[name] = {}
        results = done.get(name) or evaluate_sets(
            embed, vals, flip=ctx.cfg.measure.flip, keep_plain=plain[name]
        )
        fields[name] = verification_fields(results)
        if how and name in how:
            fields[name]["accuracy_via"] = how[name]
    files = {name: path for name, (path, _) in models.items() if name in fields}
    write_evaluation(ctx, work, fields, files, plain, vals)
    return fields


def write_evaluation(
    ctx: Context,
    work: Path,
    fields: dict[str, Any],
    files: dict[str, Path],
    plain: dict[str, dict[str, Any]],
    vals: list[Any],
) -> None:
    """``evaluation.json`` (fields, file hashes, sets, flip) and each model's unmirrored embeddings of the
    first set (``plain_<name>.npy``), which export's card thresholds read instead of computing again."""
    import numpy as np

    from distill.atomic import atomic_path
    from pipeline.runfolder import sha256_file

    saved = {}
    for name, by_set in plain.items():
        emb = by_set.get(vals[0].name) if vals else None
        if emb is None:
            continue
        with atomic_path(work / f"plain_{name}.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(emb, dtype=np.float32), allow_pickle=False)
        saved[name] = f"plain_{name}.npy"
    record = {
        "flip": ctx.cfg.measure.flip,
        "val_sets": [v.name for v in vals],
        "models": fields,
        "sha256": {name: sha256_file(path) for name, path in files.items()},
        "plain_embeddings": {"set": vals[0].name, "files": saved} if saved else None,
    }
    write_json(work / EVALUATION_FILE, record)


def saved_evaluation(
    ctx: Context, stage: str, name: str, path: Path, vals: list[Any]
) -> dict[str, Any] | None:
    """The fields ``stage`` saved for ``name``, when they are of this file on these sets with this flip."""
    from pipeline.runfolder import sha256_file

    record = ctx.run.stage_dir(stage) / EVALUATION_FILE
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    fields = (saved.get("models") or {}).get(name)
    same_sets = saved.get("val_sets") in (None, [v.name for v in vals])  # None: a record from before
    if fields is None or saved.get("flip") != ctx.cfg.measure.flip or not same_sets:
        return None
    recorded = (saved.get("sha256") or {}).get(name)
    if recorded is None:  # a QAT record from before hashes were kept: its own files, in its own folder
        return fields if stage == "qat" else None
    return fields if recorded == sha256_file(path) else None


def saved_plain_embeddings(ctx: Context, stage: str, name: str, path: Path, val: Any) -> Any:
    """The unmirrored embeddings ``stage`` saved for ``name`` on ``val``: only for this very file and set
    (sha256 and set name checked) and of the set's shape; else None."""
    import numpy as np

    from pipeline.runfolder import sha256_file

    record = ctx.run.stage_dir(stage) / EVALUATION_FILE
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    kept = saved.get("plain_embeddings") or {}
    file = (kept.get("files") or {}).get(name)
    if (
        file is None
        or kept.get("set") != val.name
        or (saved.get("sha256") or {}).get(name) != sha256_file(path)
    ):
        return None
    emb = np.load(ctx.run.stage_dir(stage) / file, allow_pickle=False)
    return emb if emb.ndim == 2 and emb.shape[0] == len(val.images) else None


# ---------------------------------------------------------------------------------------------- data
def stage_data(ctx: Context) -> dict[str, Any]:
    d = ctx.cfg.data
    if d.train:
        key = {
            "train": d.train,
            "train_fp": fingerprint(_train_anchor(Path(d.train))),
            "val": [(v, fingerprint(Path(v))) for v in d.val],
            "dev": [(v, fingerprint(Path(v))) for v in d.dev],
        }

        def fn(work: Path) -> StageOutcome:
            from distill.data.faces import open_train_set, open_verification

            train = open_train_set(d.train)
            if not d.val:
                raise InputError("data.val: give at least one verification set (.bin or pairs folder)")
            vals = [open_verification(v) for v in d.val]
            devs = [open_verification(v) for v in d.dev]
            clash = {v.name for v in vals} & {v.name for v in devs}
            if clash:  # a set chosen by cannot also be the set reported on
                raise InputError(f"data.dev: {sorted(clash)[0]} is also in data.val; choose by another set")
            info = {
                "train": str(Path(d.train).resolve()),
                "val": [str(Path(v).resolve()) for v in d.val],
                "dev": [str(Path(v).resolve()) for v in d.dev],
                "dev_pairs": {vs.name: int(len(vs.issame)) for vs in devs},
                "images": len(train),
                "identities": int(train.num_classes),
                "val_pairs": {vs.name: int(len(vs.issame)) for vs in vals},
                "val_sets": _val_set_ids([Path(v) for v in d.val], vals),
                "pixel_floor": _pixel_floor(ctx, vals),
            }
            write_json(work / "data.json", info)
            return StageOutcome(["data.json"], info)
    else:
        key = {"synth": asdict(d.synth)}

        def fn(work: Path) -> StageOutcome:
            from distill.data.faces import open_verification
            from distill.data.synth import synthesize

            summary = synthesize(work, d.synth, progress=ctx.progress)
            dev = ["synth_dev.bin"] if (work / "synth_dev.bin").is_file() else []
            info = {"train": "train.rec", "val": ["synth_val.bin"], "dev": dev, "synthetic": True}
            info.update(_plain(summary))
            val = open_verification(work / "synth_val.bin")
            info["val_sets"] = _val_set_ids([work / "synth_val.bin"], [val])
            info["pixel_floor"] = _pixel_floor(ctx, [val])
            write_json(work / "data.json", info)
            files = ["train.rec", "train.idx", "property", "synth_val.bin", *dev, "synth_meta.json"]
            files.append("data.json")
            return StageOutcome(files, info)

    return ctx.run.run("data", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose)


def _val_set_ids(paths: list[Path], vals: list[Any]) -> dict[str, Any]:
    """name -> pairs and content hash of each verification set: what a baseline's figures came from."""
    import hashlib

    from pipeline.runfolder import sha256_file

    out = {}
    for path, vs in zip(paths, vals, strict=True):
        if path.is_dir():  # a pairs folder: pairs.txt and every file under it, by content
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(f"{f.relative_to(path)}:{sha256_file(f)}\n".encode())
            digest = h.hexdigest()
        else:
            digest = sha256_file(path)
        out[vs.name] = {"pairs": int(len(vs.issame)), "sha256": digest}
    return out


def _pixel_floor(ctx: Context, vals: list[Any]) -> dict[str, Any]:
    """Raw pixels compared by cosine on each verification set, printed: the score to beat."""
    from distill.evaluation import pixel_floor

    floor = pixel_floor(vals)
    for name, f in floor.items():
        ctx.log(
            f"[data] {name}: {f['pairs']} pairs; raw pixels compared by cosine score "
            f"{100 * f['accuracy']:.2f} % (the floor every model must clear)"
        )
    return floor


def _train_anchor(path: Path) -> Path:
    if path.is_dir() and (path / "train.rec").exists():
        return path / "train.rec"
    if not path.exists():
        raise InputError(f"{path}: training data not found")
    return path


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def load_data(ctx: Context) -> tuple[Any, list[Any]]:
    """The training set and verification sets the data stage recorded."""
    from distill.data.faces import open_train_set, open_verification

    info = json.loads((ctx.run.stage_dir("data") / "data.json").read_text())
    base = ctx.run.stage_dir("data")

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else base / q

    train_path = resolve(info["train"])
    train = open_train_set(train_path.parent if train_path.name == "train.rec" else train_path)
    return train, [open_verification(resolve(v)) for v in info["val"]]


def load_dev(ctx: Context) -> list[Any]:
    """The verification sets a stage may choose by (data.dev, or the synthetic dev set): never the val
    sets, never reported; [] for a run folder from before the data stage kept one."""
    from distill.data.faces import open_verification

    base = ctx.run.stage_dir("data")
    info = json.loads((base / "data.json").read_text())
    return [open_verification(p if Path(p).is_absolute() else base / p) for p in info.get("dev") or []]


def _data_key(ctx: Context) -> dict[str, Any]:
    rec = ctx.run.record("data")
    assert rec is not None
    return {"data": rec["key"]}


# ------------------------------------------------------------------------------------------- teacher
def stage_teacher(ctx: Context) -> dict[str, Any]:
    t = ctx.cfg.teacher
    if t.onnx or t.checkpoint:
        src = Path(t.onnx or t.checkpoint)
        if not src.is_file():
            raise InputError(f"{src}: teacher file not found")
        key = {
            "teacher": str(src),
            "fp": fingerprint(src),
            # how it is fed and (for a plain state_dict) what it is: both change every embedding
            "input": asdict(t.input),
            "arch": [t.arch, t.embedding_dim, t.arch_params] if t.checkpoint else None,
            "flip": ctx.cfg.measure.flip,
            **_data_key(ctx),
        }

        def fn(work: Path) -> StageOutcome:
            from distill.teacher import fed_wrongly, load_teacher

            teacher = load_teacher(t)
            ctx.log(f"[teacher] {teacher.contract.describe()}")
            results = _evaluate_teacher(ctx, teacher)
            problem = fed_wrongly(results, teacher.contract)
            if problem and not t.allow_chance:
                raise InputError(f"{src}: {problem}")
            if problem:
                ctx.log(f"[teacher] warning: {problem}")
            from distill.evaluation import summary_metrics

            info = {**teacher.descriptor(src), **summary_metrics(results)}
            write_json(work / "teacher.json", info)
            _, vals = load_data(ctx)
            models = {"teacher": (src, lambda x: teacher.embed(x).numpy())}
            evaluate_and_record(ctx, work, models, vals, done={"teacher": results})  # measure reads it
            return StageOutcome(["teacher.json", EVALUATION_FILE], info)
    else:
        trained_fields = {k: v for k, v in asdict(t).items() if k not in ("input", "allow_chance")}
        # measure.flip decides how its evaluations fuse embeddings: part of what it writes
        key = {"teacher_cfg": config_hash(trained_fields), "flip": ctx.cfg.measure.flip, **_data_key(ctx)}

        def fn(work: Path) -> StageOutcome:
            from distill.fit import fit_model
            from distill.teacher_input import InputContract

            train, vals = load_data(ctx)
            _, summary = fit_model(
                name="teacher",
                arch=t.arch,
                embedding_dim=t.embedding_dim,
                arch_params=t.arch_params,
                losses=t.losses,
                train_cfg=t.train,
                dataset=train,
                num_classes=train.num_classes,
                val_sets=vals,
                out_dir=work,
                flip_eval=ctx.cfg.measure.flip,
                workers=ctx.cfg.data.workers,
                progress=ctx.progress,
                where="teacher.losses",
                evaluate_at_end=False,  # _record_trained evaluates the checkpoint, once
            )
            contract = InputContract(
                origin={k: "trained here" for k in ("layout", "scaling", "size", "batch")}
            )
            metrics = {
                "source": f"trained:{t.arch}",
                "kind": "trained",
                "embedding_dim": t.embedding_dim,
                "input": contract.to_dict(),
                "images_per_second": summary.images_per_second,
                "steps": summary.steps,
                "train_precision": summary.precision,  # teacher.train.amp as this machine resolved it
            }
            recorded, final = _record_trained(ctx, work, "teacher", vals, stage="teacher")
            metrics.update(final)
            write_json(work / "teacher.json", metrics)
            return StageOutcome(["teacher.pt", "teacher.json", "history.json", *recorded], metrics)

    trains = not (t.onnx or t.checkpoint)
    return ctx.run.run(
        "teacher", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose, collective=trains
    )


def _record_trained(
    ctx: Context, work: Path, name: str, vals: list[Any], stage: str
) -> tuple[list[str], dict[str, Any]]:
    """Evaluate the checkpoint a training stage wrote (``<name>.pt``), once, for the measure stage.

    Through :func:`checkpoint_embed_fn` (on a CPU an onnxruntime copy proven equal to it). Returns the
    files written and the flat ``<set>/accuracy`` figures for the stage's own record and console line.
    """
    from distill.engine.distributed import current_dist
    from distill.evaluation import fields_summary
    from distill.models.checkpoint import load_model

    path = work / f"{name}.pt"
    if not (path.is_file() and current_dist().is_main and vals):  # rank 0 evaluates; the others wait
        return [], {}
    embed, how = checkpoint_embed_fn(load_model(path)[0], vals[0].images, name)
    ctx.log(f"[{stage}] evaluating {path.name}: {how}")

    fields = evaluate_and_record(ctx, work, {name: (path, embed)}, vals, how={name: how})
    written = [f for f in (EVALUATION_FILE, f"plain_{name}.npy") if (work / f).is_file()]
    return written, fields_summary(fields[name])


def checkpoint_embed_fn(
    model: Any, images: Any, name: str, *, quantized: bool = False
) -> tuple[Callable[[Any], Any], str]:
    """The fast exact way to embed with a trained module: (embedding function, how it computes).

    On a GPU box, PyTorch on the GPU. On a CPU, an onnxruntime copy checked on the first
    ``EVAL_TWIN_SAMPLE`` of ``images`` (uint8 HWC): for a float module a copy that reproduces it to
    ``TWIN_RTOL`` (about twice as fast for MobileFaceNet: ``module_evaluation_twin``), else the module
    itself; for a fake-quant module (``quantized``) its INT8 Q/DQ ONNX (``quantized_evaluation_copy``):
    1.8x faster, and the very computation of the export stage's INT8 ONNX, which then takes this
    evaluation instead of making it again.
    """
    import numpy as np
    import torch

    from deploy.runtimes import EVAL_TWIN_SAMPLE, module_evaluation_twin, quantized_evaluation_copy
    from distill.data.transforms import to_model_input
    from distill.evaluation import torch_embed_fn

    model = model.eval()
    if torch.cuda.is_available():  # a GPU box: PyTorch on the GPU is the fast way
        what = "the fake-quant module" if quantized else "the checkpoint"
        return torch_embed_fn(model.cuda()), f"{what} in PyTorch on the GPU"
    sample = to_model_input(torch.from_numpy(np.ascontiguousarray(images[:EVAL_TWIN_SAMPLE])))
    copy = quantized_evaluation_copy if quantized else module_evaluation_twin
    embedder, how = copy(model, sample.numpy(), torch.get_num_threads(), name)

    def embed(x: Any) -> np.ndarray:
        return embedder.embed(x.numpy())

    return embed, how


def _quantized_embed_fn(ctx: Context, model: Any, images: Any, name: str) -> tuple[Callable[[Any], Any], str]:
    """Stage two's evaluation of a fake-quant model (``checkpoint_embed_fn``), with a line saying how."""
    embed, how = checkpoint_embed_fn(model, images, name, quantized=True)
    ctx.log(f"[qat] evaluating {name}.pt: {how}")
    return embed, how


def _evaluate_teacher(ctx: Context, teacher: Any) -> dict[str, Any]:
    from distill.evaluation import evaluate_sets

    _, vals = load_data(ctx)
    return evaluate_sets(
        lambda x: teacher.embed(x).numpy(), vals, flip=ctx.cfg.measure.flip, progress=ctx.progress
    )


def teacher_descriptor(ctx: Context) -> dict[str, Any]:
    """What the teacher stage wrote about the teacher (source, input contract, embedding size)."""
    path = ctx.run.stage_dir("teacher") / "teacher.json"
    if not path.is_file():
        raise InputError(f"{ctx.run.root}: stage 'teacher' has not run")
    return json.loads(path.read_text())


def open_teacher(ctx: Context, num_threads: int | None = None, spin: bool = False) -> Any:
    """The run's teacher, fed exactly as the teacher stage recorded (no re-detection, no re-probing).

    ``spin``: an ONNX teacher keeps onnxruntime's spinning threads (its latency is timed)."""
    from distill.teacher import load_teacher
    from distill.teacher_input import InputContract

    desc = teacher_descriptor(ctx)
    contract = InputContract.from_dict(desc["input"]) if desc.get("input") else None
    trained = ctx.run.stage_dir("teacher") / "teacher.pt"
    return load_teacher(
        ctx.cfg.teacher,
        trained if trained.exists() else None,
        contract=contract,
        num_threads=num_threads,
        spin=spin,
    )


def _upstream(ctx: Context, *stages: str) -> dict[str, Any]:
    out = {}
    for s in stages:
        rec = ctx.run.record(s)
        if rec is None:
            raise InputError(f"{ctx.run.root}: stage '{s}' has not run")
        out[s] = rec["outputs"] or rec["key"]
    return out


# --------------------------------------------------------------------------------------------- cache
def stage_cache(ctx: Context) -> dict[str, Any]:
    """Teacher embeddings of every training image (plain and mirrored), computed once per data+teacher."""
    c = ctx.cfg.cache
    key = {"cache_cfg": config_hash(c), **_upstream(ctx, "data", "teacher")}

    def fn(work: Path) -> StageOutcome:
        from distill.engine.distributed import current_dist
        from distill.teacher import cache_teacher_embeddings

        train, _ = load_data(ctx)
        teacher = open_teacher(ctx)
        dist_info = current_dist()
        chosen = cache_teacher_embeddings(
            teacher,
            train,
            work,
            batch_size=c.batch_size,
            progress=ctx.progress,
            dist_info=dist_info,
            precision=c.precision,
            min_cosine=c.min_cosine,
        )
        agree = chosen.get("min_cosine_to_fp32")
        agree = f", first batch within cosine {agree:.5f} of fp32" if agree is not None else ""
        ctx.log(f"[cache] teacher in {chosen['precision']} ({chosen['why']}{agree})")
        metrics = {
            "images": len(train),
            "dim": teacher.embedding_dim,
            "ranks": dist_info.world_size,
            **chosen,
        }
        return StageOutcome(["plain.npy", "flipped.npy"], metrics)

    # collective: under torchrun every rank embeds its share of the images (one GPU each)
    return ctx.run.run("cache", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose, collective=True)


# ------------------------------------------------------------------------------------------- distill
def stage_distill(ctx: Context) -> dict[str, Any]:
    s = ctx.cfg.distill
    key = {"distill_cfg": config_hash(s), "flip": ctx.cfg.measure.flip, **_upstream(ctx, "data", "cache")}

    def fn(work: Path) -> StageOutcome:
        from distill.engine.train import TeacherTargets
        from distill.fit import fit_model
        from distill.teacher import open_teacher_cache

        train, vals = load_data(ctx)
        plain, flipped = open_teacher_cache(ctx.run.stage_dir("cache"))
        head = teacher_head(ctx)
        _, summary = fit_model(
            name="student",
            arch=s.arch,
            embedding_dim=s.embedding_dim,
            arch_params=s.arch_params,
            losses=s.losses,
            train_cfg=s.train,
            dataset=train,
            num_classes=train.num_classes,
            val_sets=vals,
            out_dir=work,
            teacher=TeacherTargets(plain, flipped),
            flip_eval=ctx.cfg.measure.flip,
            workers=ctx.cfg.data.workers,
            progress=ctx.progress,
            where="distill.losses",
            teacher_head=head,
            evaluate_at_end=False,  # _record_trained evaluates the checkpoint, once
        )
        recorded, final = _record_trained(ctx, work, "student", vals, stage="distill")
        metrics = {
            "images_per_second": summary.images_per_second,
            "steps": summary.steps,
            "final_losses": summary.final_losses,
            **final,
        }
        write_json(work / "student.json", metrics)
        return StageOutcome(["student.pt", "student.json", "history.json", *recorded], metrics)

    return ctx.run.run("distill", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose, collective=True)


def teacher_head(ctx: Context) -> Any:
    """The teacher's class centres, for the methods that reuse its classifier (None when it has none)."""
    if teacher_descriptor(ctx).get("has_head") is False:
        return None
    return open_teacher(ctx).head_weight


# ----------------------------------------------------------------------------------------------- qat
def stage_qat(ctx: Context) -> dict[str, Any]:
    """Stage two: NNCF INT8 (PTQ baseline, then quantization-aware distillation with the teacher)."""
    q = ctx.cfg.qat
    key = {"qat_cfg": config_hash(q), "flip": ctx.cfg.measure.flip, **_upstream(ctx, "distill", "cache")}

    def fn(work: Path) -> StageOutcome:
        if not q.enabled:
            write_json(work / "qat.json", {"enabled": False})
            return StageOutcome(["qat.json"], {"enabled": False})
        from compress.fake_quant import use_torch_kernels
        from compress.nncf_extension import ensure_nncf_kernels
        from compress.qat import quantization_aware_distill
        from distill.engine.train import TeacherTargets
        from distill.teacher import open_teacher_cache

        if not use_torch_kernels():  # FACEKD_NNCF_CPU_KERNELS=1: NNCF's C++ kernels, built up front
            ensure_nncf_kernels(log=ctx.log)  # before calibration, not in the middle of it
        train, vals = load_data(ctx)
        plain, flipped = open_teacher_cache(ctx.run.stage_dir("cache"))
        outcome = quantization_aware_distill(
            student_path=ctx.run.stage_dir("distill") / "student.pt",  # arch and stage-one losses inside
            cfg=q,
            dataset=train,
            val_sets=vals,
            dev_sets=load_dev(ctx),
            out_dir=work,
            teacher=TeacherTargets(plain, flipped),
            teacher_head=teacher_head(ctx),
            flip_eval=ctx.cfg.measure.flip,
            workers=ctx.cfg.data.workers,
            progress=ctx.progress,
            evaluate_models=("ptq", "qat"),  # the fp32 student: the distill stage's evaluation.json
            embed_fn_for=lambda name, model: _quantized_embed_fn(ctx, model, vals[0].images, name),
        )
        # what export needs to re-calibrate the INT8 .tflite the same way, so it never reads qat settings
        calibration = {"images": q.calibration_images, "seed": q.train.seed}
        metrics = {"enabled": True, "calibration": calibration, **outcome.metrics}
        write_json(work / "qat.json", metrics)
        why = outcome.selection.get("why") or f"qat.keep: {q.keep}"
        ctx.log(f"[qat] INT8 model for export: {outcome.shipped}.pt ({why})")
        files = {name: work / f"{name}.pt" for name in outcome.evaluation}
        write_evaluation(ctx, work, outcome.evaluation, files, outcome.plain_embeddings, vals)
        kept = [f for f in (f"plain_{name}.npy" for name in outcome.plain_embeddings) if (work / f).is_file()]
        trained = ["qat.pt", "history.json"] if outcome.qat_path is not None else []  # none under keep: ptq
        return StageOutcome(["qat.json", "ptq.pt", *trained, EVALUATION_FILE, *kept], metrics)

    return ctx.run.run("qat", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose, collective=True)


def qat_enabled(ctx: Context) -> bool:
    """Whether stage two produced an INT8 model in this run folder (the one it chose for export)."""
    return (ctx.run.stage_dir("qat") / f"{shipped_int8(ctx)}.pt").is_file()


def shipped_int8(ctx: Context) -> str:
    """The INT8 model stage two chose for export, "qat" or "ptq" (qat.json; "qat" in older run folders)."""
    record = ctx.run.stage_dir("qat") / "qat.json"
    shipped = json.loads(record.read_text()).get("shipped", "qat") if record.is_file() else "qat"
    if shipped not in ("qat", "ptq"):
        raise InputError(f"{record}: 'shipped' must be qat or ptq, got {shipped!r}; re-run with: qat --force")
    return shipped


# -------------------------------------------------------------------------------------------- export
def stage_export(ctx: Context) -> dict[str, Any]:
    e = ctx.cfg.export
    from devices.targets import formats_for

    key = {
        "export_cfg": config_hash(e),
        "target": ctx.target,
        "formats": formats_for(ctx.target),
        # the golden crops' folder by content, so new crops make new golden files
        "golden_crops": fingerprint(Path(e.golden_crops)) if e.golden_crops else None,
        **_upstream(ctx, "distill", "qat"),
    }

    def fn(work: Path) -> StageOutcome:
        from deploy.artifacts import (
            CARD_FORMATS,
            add_golden_files,
            add_model_cards,
            add_tensorrt,
            export_artifacts,
            parity_batch,
        )
        from devices.targets import formats_for
        from distill.models.checkpoint import load_model
        from pipeline.runfolder import sha256_file, versions

        student_path = ctx.run.stage_dir("distill") / "student.pt"
        model, _ = load_model(student_path)
        train, vals = load_data(ctx)
        wanted = formats_for(ctx.target)
        artifacts = export_artifacts(
            model,
            [f for f in wanted if f[1] != "int8"],
            work,
            parity_images=parity_batch(vals[0].images, e.parity_images),
            batch_size=e.batch_size or None,
            opset=e.opset,
            allow_parity_failure=ctx.allow_parity_failure,
            pixels=_pixels(ctx),
            log=ctx.log,
        )
        int8 = [fmt for fmt, precision in wanted if precision == "int8"]
        if int8 and qat_enabled(ctx):
            artifacts += _int8_artifacts(ctx, int8, work, train, vals)
        elif int8:
            ctx.log("[export] no INT8 artifacts: stage two is disabled (qat.enabled: false)")
        if ctx.target == "jetson":
            artifacts += add_tensorrt(artifacts, work, log=ctx.log)
        # thresholds move with quantization: each card gets those of the model its artifact came from
        for source in ("distill", "qat"):
            cards = [a for a in artifacts if a.format in CARD_FORMATS and a.source == source]
            if cards:
                add_model_cards(cards, work, thresholds=_thresholds(ctx, source, vals[0]), version=_version())
        crops, names, crops_from = _golden_crops(e, vals[0])
        add_golden_files(artifacts, work, crops, names, source=crops_from)
        sources = {"distill": sha256_file(student_path)}
        checkpoints = {"distill": student_path.name}
        if qat_enabled(ctx):
            checkpoints["qat"] = f"{shipped_int8(ctx)}.pt"  # qat.pt, or ptq.pt when PTQ won on the dev set
            sources["qat"] = sha256_file(ctx.run.stage_dir("qat") / checkpoints["qat"])
        tools = versions()
        entries = []
        for a in artifacts:
            entry = a.to_dict()
            entry.update(
                target=ctx.target,
                sha256=sha256_file(work / a.file),
                size_bytes=(work / a.file).stat().st_size,
                source_checkpoint=sources.get(a.source, sources["distill"]),
                source_file=checkpoints.get(a.source, checkpoints["distill"]),
                versions=tools,
            )
            entries.append(entry)
        write_json(work / "artifacts.json", {"artifacts": entries})
        files = [f for a in artifacts for f in [a.file, *a.companions]]
        return StageOutcome(files + ["artifacts.json"], {a.name: a.parity for a in artifacts})

    return ctx.run.run("export", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose)


def _golden_crops(e: Any, val: Any) -> tuple[Any, list[str], str]:
    """The crops every artifact's golden file holds: ``export.golden_crops`` (a folder of aligned crops)
    or the first images of the verification set."""
    import numpy as np

    from deploy.golden import DEFAULT_CROPS

    if e.golden_crops:
        from distill.data.image_folder import read_aligned_crops

        crops, names = read_aligned_crops(Path(e.golden_crops), limit=e.golden_count or DEFAULT_CROPS)
        return crops, names, str(Path(e.golden_crops).resolve())
    n = min(e.golden_count or DEFAULT_CROPS, len(val.images))
    return np.asarray(val.images[:n]), [f"{val.name}[{i}]" for i in range(n)], f"verification set {val.name}"


def _qat_model(ctx: Context) -> Any:
    from compress.checkpoint import load_quantized

    return load_quantized(ctx.run.stage_dir("qat") / f"{shipped_int8(ctx)}.pt")[0]


def _int8_artifacts(ctx: Context, formats: list[str], work: Path, train: Any, vals: list[Any]) -> list[Any]:
    """Q/DQ ONNX and full-integer .tflite of stage two's shipped model (QAT, or PTQ when it won on the dev
    sets), checked against its fake-quant outputs."""
    from compress.checkpoint import float_model, load_quantized
    from compress.quantize import calibration_batches
    from deploy.artifacts import parity_batch
    from deploy.int8_artifacts import export_int8_artifacts

    e = ctx.cfg.export
    qat_path = ctx.run.stage_dir("qat") / f"{shipped_int8(ctx)}.pt"
    qmodel, _ = load_quantized(qat_path)
    recorded = json.loads((ctx.run.stage_dir("qat") / "qat.json").read_text()).get("calibration")
    if not recorded:  # a qat stage from before it recorded its calibration: run it again
        raise InputError(f"{ctx.run.root}: qat/qat.json lacks 'calibration'; re-run with: qat --force")
    calib = calibration_batches(train, int(recorded["images"]), 1, int(recorded["seed"]))
    return export_int8_artifacts(
        qmodel,
        float_model(qat_path),
        formats,
        work,
        parity_images=parity_batch(vals[0].images, e.parity_images),
        calibration=[b.numpy() for b in calib],
        batch_size=e.batch_size or None,
        opset=e.opset,
        tflite_scales=e.tflite_int8_scales,
        tflite_io=e.tflite_int8_io,
        allow_parity_failure=ctx.allow_parity_failure,
        pixels=_pixels(ctx),
        log=ctx.log,
    )


def _pixels(ctx: Context) -> str | None:
    """The pixel dtype of pixels-in artifacts (export.input resolved for the target), or None."""
    from deploy.config import input_kind

    e = ctx.cfg.export
    return e.pixel_dtype if input_kind(e, ctx.target) == "pixels" else None


def _thresholds(ctx: Context, source: str, val: Any) -> dict[str, Any]:
    """Cosine thresholds at every FAR the verification set supports, for the app's model card.

    Computed the way an app compares faces: one embedding per face, no mirror (flip fusion would give
    thresholds for scores the app never computes), with the PyTorch model the artifacts were checked
    against (cosine >= parity threshold): the embeddings its stage's evaluation kept for this very file,
    or computed here when there are none.
    """
    from deploy.model_card import fused_pairs, threshold_table
    from distill.evaluation import EVAL_BATCH, torch_embed_fn
    from distill.metrics.verification import embed_pairs

    stage, name = ("distill", "student") if source == "distill" else ("qat", shipped_int8(ctx))
    path = ctx.run.stage_dir(stage) / f"{name}.pt"
    emb = saved_plain_embeddings(ctx, stage, name, path, val)
    if emb is None:
        if source == "distill":
            from distill.models.checkpoint import load_model

            model = load_model(path)[0]
        else:
            model = _qat_model(ctx)
        emb, _ = embed_pairs(torch_embed_fn(model.eval()), val.images, batch_size=EVAL_BATCH, flip=False)
    a, b = fused_pairs(emb, None)
    return threshold_table(
        a, b, val.issame, measured_on=f"{val.name} (PyTorch reference of these artifacts)", flip_fused=False
    )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("facekd")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# ------------------------------------------------------------------------------------------- measure
def stage_measure(ctx: Context) -> dict[str, Any]:
    m = ctx.cfg.measure
    key = {
        "measure_cfg": config_hash(m),
        "target": ctx.target,
        "device": ctx.connection.key_fields(),
        **_upstream(ctx, "teacher", "distill", "qat", "export"),
    }

    def fn(work: Path) -> StageOutcome:
        from devices.accuracy import HOST_LABEL
        from devices.connect import device_reachable, open_runner, resolve_device
        from devices.measure import accuracy_line, add_host_latency, host_accuracy, measure_rows
        from devices.rows import RESULTS_SCHEMA, ResultRow
        from pipeline.runfolder import sha256_file

        device = resolve_device(ctx.target, ctx.connection)
        graphs = _estimate_graphs(ctx, work)

        _, vals = load_data(ctx)
        export_dir = ctx.run.stage_dir("export")
        artifacts = json.loads((export_dir / "artifacts.json").read_text())["artifacts"]
        _verify_artifact_hashes(export_dir, artifacts)
        rows: list[ResultRow] = []
        queue: list[tuple[ResultRow, Any]] = []  # host latency of every model, timed together below
        # Reference rows: the PyTorch teacher and student, measured on the host the same way.
        student_pt = ctx.run.stage_dir("distill") / "student.pt"
        teacher_src, teacher_model = _teacher_for_measure(ctx, m.threads)
        for role, src, model in (
            ("teacher", teacher_src, teacher_model),
            ("student", student_pt, student_pt),
        ):
            if src is None:
                continue
            fmt = "onnx" if src.suffix.lower() == ".onnx" else "pytorch"
            stage = "teacher" if role == "teacher" else "distill"
            fields = saved_evaluation(ctx, stage, role, src, vals)
            saved = None
            if fields:
                fields = dict(fields)
                via = fields.pop("accuracy_via", None)  # e.g. an onnxruntime copy proven equal to the file
                how = f"the {stage} stage's evaluation of this file (sha256 checked)"
                saved = (fields, f"{how}, through {via}" if via else how)
            fields, embedder = host_accuracy(
                model, vals, threads=m.threads, flip=m.flip, name=role, saved=saved
            )
            row = ResultRow.from_dict(
                {
                    "name": f"{role}-{fmt}-fp32",
                    "format": fmt,
                    "precision": "fp32",
                    "target": "host",
                    "role": role,
                    "stage": "teacher" if role == "teacher" else "distill",
                    "path": str(src),
                    "size_bytes": src.stat().st_size,
                    "sha256": sha256_file(src),
                    **fields,
                }
            )
            rows.append(row)
            queue.append((row, embedder))
            ctx.log(f"[measure] {row.name}: {accuracy_line(row)}")
        if qat_enabled(ctx):
            rows += _fake_quant_rows(ctx, vals)
        rows += measure_rows(
            artifacts,
            export_dir,
            vals,
            target=ctx.target,
            threads=m.threads,
            warmup=m.warmup,
            runs=m.runs,
            latency_queue=queue,
            flip=m.flip,
            progress=ctx.progress,
            device=device,
            connect=(lambda: open_runner(device, ctx.connection, work / "device_logs"))
            if device_reachable(device, ctx.connection)
            else None,
            estimate_graphs=graphs,
            log=ctx.log,
            delegate=ctx.connection.delegate,
            made_from=_source_evaluations(ctx, vals),
        )
        estimator = _estimator_queue(ctx, graphs)
        ctx.log(
            f"[measure] latency on {HOST_LABEL}: {len(queue) + len(estimator)} models in {m.rounds} "
            f"interleaved rounds, {m.runs} timed calls each"
        )
        add_host_latency(
            queue + estimator,
            warmup=m.warmup,
            runs=m.runs,
            rounds=m.rounds,
            budget_s=m.latency_budget_s or None,
        )
        for row, _ in queue:
            lat = row.latency_ms
            flag = "" if row.trustworthy_latency else " (noisy: see the report)"
            runs = (row.latency_settings or {}).get("runs")
            ctx.log(f"[measure] {row.name}: p50 {lat.p50:.2f} ms, p90 {lat.p90:.2f} ms ({runs} runs){flag}")
        results = {
            "target": ctx.target,
            "device": {"name": device.name, "connected": device_reachable(device, ctx.connection)},
            "val_sets": _val_sets(ctx, vals),
            "floors": _floors(ctx, vals, rows),
            "schema": RESULTS_SCHEMA,
            "rows": [r.to_dict() for r in rows],
            "estimator_error_on_host": _estimator_error(ctx, graphs, estimator),
        }
        write_json(work / "results.json", results)
        write_json(ctx.run.root / "results.json", results)
        return StageOutcome(["results.json"], {"rows": len(rows)})

    return ctx.run.run("measure", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose)


def _source_evaluations(ctx: Context, vals: list[Any]) -> dict[str, Any]:
    """Per source stage, the saved evaluation of the model its artifacts were exported from (fields and
    unmirrored embeddings of this very checkpoint), for files that reproduce it to reuse."""
    from devices.measure import SourceEvaluation

    out = {}
    for stage, name in (("distill", "student"), ("qat", shipped_int8(ctx))):
        path = ctx.run.stage_dir(stage) / f"{name}.pt"
        if not vals or not path.is_file():
            continue
        fields = saved_evaluation(ctx, stage, name, path, vals)
        plain = saved_plain_embeddings(ctx, stage, name, path, vals[0])
        if fields is not None and plain is not None:
            what = f"the {stage} stage's evaluation of {path.name} (sha256 checked)"
            out[stage] = SourceEvaluation(fields, plain, what)
    return out


def _val_sets(ctx: Context, vals: list[Any]) -> dict[str, Any]:
    """The data stage's record of the verification sets (pairs, hash); pairs only for older run folders."""
    info = json.loads((ctx.run.stage_dir("data") / "data.json").read_text())
    return info.get("val_sets") or {vs.name: {"pairs": int(len(vs.issame)), "sha256": None} for vs in vals}


def _floors(ctx: Context, vals: list[Any], rows: list[Any]) -> dict[str, Any]:
    """Per verification set: raw pixels by cosine (the floor) and the teacher (the ceiling to approach)."""
    info = json.loads((ctx.run.stage_dir("data") / "data.json").read_text())
    pixels = info.get("pixel_floor")
    if not pixels:  # a run folder from before the data stage recorded it
        from distill.evaluation import pixel_floor

        pixels = pixel_floor(vals)
    teacher = next((r for r in rows if r.role == "teacher"), None)
    return {
        name: {"pixels": f, "teacher": teacher.set_metrics(name).get("accuracy") if teacher else None}
        for name, f in pixels.items()
    }


def _estimate_graphs(ctx: Context, work: Path) -> dict[str, Path]:
    """fp32 ONNX graphs of the teacher and student, for latency estimates and the estimator's error.

    A .tflite row is estimated from the ONNX of the same model at the row's precision.
    """
    from deploy.onnx_export import export_onnx
    from distill.models.checkpoint import load_model

    graphs = {}
    student, _ = load_model(ctx.run.stage_dir("distill") / "student.pt")
    graphs["distill"] = export_onnx(student, work / "estimate_student.onnx", batch_size=1)
    graphs["qat"] = graphs["distill"]  # same graph; the estimate takes the row's precision
    kind, teacher = _teacher_source(ctx)
    if kind == "onnx":
        graphs["teacher"] = teacher
    elif kind == "trained" and teacher.is_file():
        graphs["teacher"] = export_onnx(load_model(teacher)[0], work / "estimate_teacher.onnx", batch_size=1)
    elif kind in ("checkpoint", "state_dict"):
        module = open_teacher(ctx).module
        graphs["teacher"] = export_onnx(module, work / "estimate_teacher.onnx", batch_size=1)
    return graphs


def _estimator_queue(ctx: Context, graphs: dict[str, Path]) -> list[tuple[Any, Any]]:
    """fp32 ONNX of teacher and student, timed beside the rows for the estimator (rows not written)."""
    from deploy.runtimes import load_embedder
    from devices.rows import ResultRow

    return [
        (
            ResultRow(name=f"{model}-estimator-onnx", target="host", stage=model),
            load_embedder(graphs[model], num_threads=ctx.cfg.measure.threads),
        )
        for model in ("teacher", "distill")
        if model in graphs
    ]


def _estimator_error(
    ctx: Context, graphs: dict[str, Path], timed: list[tuple[Any, Any]]
) -> list[dict[str, Any]]:
    """Roofline estimate against onnxruntime latency on this host, for the teacher and the student.

    Both numbers exist only on the host; the error tells how far to trust the device estimates. The
    measured latency is from the same interleaved rounds as the rows, so the two agree.
    """
    from devices.catalogue import load_catalogue
    from devices.estimate import estimator_error_on_host, with_host_figures

    try:
        host = with_host_figures(load_catalogue(ctx.connection.devices_dirs)["host-cpu"])
    except InputError as exc:
        return [{"error": f"host figures unavailable: {exc}"}]
    out = []
    for entry, _ in timed:
        model = entry.stage
        p50 = entry.latency_ms.p50
        err = estimator_error_on_host(graphs[model], p50, host, threads=ctx.cfg.measure.threads)
        graph = Path(str(err.get("onnx", graphs[model])))
        if graph.parent.name == ".measure.work":  # the work folder becomes measure/ when the stage ends
            err["onnx"] = str(ctx.run.stage_dir("measure") / graph.name)
        out.append(
            {
                "model": "student" if model == "distill" else model,
                "runtime": "onnxruntime",
                "latency_conditions": entry.latency_conditions,
                **err,
            }
        )
    return out


def _fake_quant_rows(ctx: Context, vals: list[Any]) -> list[Any]:
    """Accuracy of the PTQ baseline and the QAT model (what QAT bought), as stage two evaluated them (on a
    CPU through their INT8 Q/DQ ONNX: ``checkpoint_embed_fn(quantized=True)``).

    Their latency is not reported: fake quantization runs in float and says nothing about INT8 speed.
    """
    from deploy.runtimes import load_embedder
    from devices.accuracy import HOST_LABEL, accuracy_fields
    from devices.rows import ResultRow
    from pipeline.runfolder import sha256_file

    rows = []
    for stage in ("ptq", "qat"):
        path = ctx.run.stage_dir("qat") / f"{stage}.pt"
        if not path.is_file():  # qat.keep: ptq trains no QAT model
            continue
        saved = saved_evaluation(ctx, "qat", stage, path, vals)  # QAT evaluated this very file already
        if saved is not None:
            fields = dict(saved)
            via = fields.pop("accuracy_via", None)
            how = "the qat stage's evaluation of this file (sha256 checked)"
            fields["accuracy_via"] = f"{how}, through {via}" if via else how
        else:
            embedder = load_embedder(path, num_threads=ctx.cfg.measure.threads, name=stage)
            fields = accuracy_fields(embedder, vals, ctx.cfg.measure.flip)
        rows.append(
            ResultRow.from_dict(
                {
                    "name": f"student-{stage}-pytorch-int8",
                    "format": "pytorch",
                    "precision": "int8",
                    "target": "host",
                    "role": f"student-{stage}",
                    "stage": stage,
                    "path": str(path),
                    "size_bytes": path.stat().st_size,
                    "sha256": sha256_file(path),
                    **fields,
                    "latency_ms": None,
                    "latency_note": "fake-quant PyTorch model (float arithmetic): accuracy only",
                    "measured_on": HOST_LABEL,
                }
            )
        )
    return rows


def _teacher_source(ctx: Context) -> tuple[str, Path]:
    """(kind, file) of the run's teacher as its stage recorded it: onnx, checkpoint, state_dict or trained."""
    desc = teacher_descriptor(ctx)
    kind, _, where = str(desc.get("source", "trained:")).partition(":")
    if kind == "trained":
        return kind, ctx.run.stage_dir("teacher") / "teacher.pt"
    return kind, Path(desc.get("file") or where)


def _teacher_for_measure(ctx: Context, threads: int) -> tuple[Path | None, Any]:
    """(file, what to measure) for the teacher row: a file of this project, or the teacher as it is fed."""
    from deploy.runtimes import FedEmbedder

    kind, path = _teacher_source(ctx)
    if kind == "trained":
        return (path, path) if path.is_file() else (None, None)
    # timed with the same threads, and onnxruntime's spinning, as every other row
    teacher = open_teacher(ctx, num_threads=threads, spin=True)
    fmt = "onnx" if kind == "onnx" else "pytorch"
    return path, FedEmbedder(teacher.embed, fmt, name="teacher", num_threads=threads)


def refuse_discarding(root: Path, stored: dict[str, Any], target: str, cfg: Any) -> None:
    """InputError when the new settings would replace shipped artifacts of this run with other ones.

    A new target exports other formats, and turning stage two off drops the INT8 files: both delete
    finished artifacts. ``--force`` (or another ``--out``) says that is intended.
    """
    listing = root / "export" / "artifacts.json"
    if not listing.is_file():
        return
    files = [a["file"] for a in json.loads(listing.read_text()).get("artifacts", [])]
    old_target = stored.get("target")
    if old_target and target != old_target:
        raise InputError(
            f"{root}: this run's artifacts are for --target {old_target} ({', '.join(files)}); "
            f"--target {target} would replace them. Use another --out, or add --force to replace them"
        )
    int8 = [f for f in files if "_int8." in f]
    if int8 and not cfg.qat.enabled:
        raise InputError(
            f"{root}: qat.enabled: false would delete the INT8 artifacts ({', '.join(int8)}). "
            "Use another --out, or add --force"
        )


def _verify_artifact_hashes(export_dir: Path, artifacts: list[dict[str, Any]]) -> None:
    """Refuse to measure a file that is not the one the export stage wrote."""
    from pipeline.runfolder import sha256_file

    for a in artifacts:
        p = export_dir / a["file"]
        if not p.is_file():
            raise InputError(f"{p}: artifact listed in artifacts.json is missing")
        if sha256_file(p) != a["sha256"]:
            raise InputError(f"{p}: sha256 does not match artifacts.json (file changed after export)")


# -------------------------------------------------------------------------------------------- report
def stage_report(ctx: Context) -> dict[str, Any]:
    key = {**_upstream(ctx, "measure", "teacher", "distill", "qat")}

    def fn(work: Path) -> StageOutcome:
        from pipeline.html_report import write_reports

        names = write_reports(ctx.run.root, work)
        for name in names:  # also at the top of the run folder, where people look first
            write_text(ctx.run.root / name, (work / name).read_text())
        return StageOutcome(names, {})

    return ctx.run.run("report", key, fn, force=ctx.force, log=ctx.log, verbose=ctx.verbose)


STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "data": stage_data,
    "teacher": stage_teacher,
    "cache": stage_cache,
    "distill": stage_distill,
    "qat": stage_qat,
    "export": stage_export,
    "measure": stage_measure,
    "report": stage_report,
}


def run_until(ctx: Context, last: str) -> None:
    """Run every stage up to and including ``last`` (earlier ones are skipped when current)."""
    t = ctx.cfg.teacher
    teacher_file = t.onnx or t.checkpoint
    if STAGES.index(last) >= STAGES.index("teacher") and teacher_file and not Path(teacher_file).is_file():
        raise InputError(f"{teacher_file}: teacher file not found")  # before minutes of data generation
    for name in STAGES[: STAGES.index(last) + 1]:
        force = ctx.force and name == last
        STAGE_FUNCS[name](Context(**{**ctx.__dict__, "force": force}))
