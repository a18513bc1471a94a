"""``python -m pipeline``: distill a face-recognition student, export it and measure it, in one command.

Exit codes: 0 success, 1 a check failed (parity, non-finite loss), 2 bad input (file, config, name).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from distill.errors import InputError

EPILOG = """\
examples:
  python -m pipeline all --target jetson --out runs/demo     # whole chain on generated data
  python -m pipeline all --preset tiny --out runs/smoke       # smoke run (a few minutes)
  python -m pipeline distill --out runs/demo                  # one stage (earlier ones skipped if current)
  python -m pipeline data synth --out data/synth              # only generate the synthetic data set
  python -m pipeline data info data/synth/train.rec --json
  python -m pipeline evaluate --model runs/demo/export/student_fp32.tflite --data data/synth/synth_val.bin
  python -m pipeline verify --model runs/demo/export/student_int8.onnx   # against its golden vectors
  python -m pipeline check --model runs/demo/export/student_fp16.tflite --target android --delegate gpu

exit codes: 0 ok, 1 a check failed (parity, diverged training), 2 bad input.
"""


def _run_args(p: argparse.ArgumentParser, devices: bool = True) -> None:
    p.add_argument(
        "--out",
        default="runs/demo",
        help="run folder (created; re-runs skip stages whose inputs did not change) [default: runs/demo]",
    )
    p.add_argument(
        "--config",
        help="YAML or TOML config file (overrides the preset); on an existing run folder it adds to the "
        "run's earlier settings (run.json keeps the preset, target and every config given)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="size preset: default (the CPU recipe, 10-13 min on 2 cores by the hour, 2026-12-05), tiny "
        "(smoke test), gpu (real data on a GPU box)",
    )
    p.add_argument(
        "--target",
        default=None,
        choices=["host", "jetson", "android"],
        help="deployment target: chooses the artifact formats and where latency is measured [default: host]",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="re-run the named stage even if it is up to date; also allow settings that replace this "
        "run's artifacts (another --target, qat.enabled: false)",
    )
    p.add_argument(
        "--allow-parity-failure",
        action="store_true",
        help="keep going when an exported artifact disagrees with PyTorch (marked failed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (CI logs)")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show other libraries' output (exporters, runtimes, warnings) on the console; without it, "
        "it is kept in <out>/logs/<stage>.log",
    )
    if devices:
        _device_args(p)


def _device_args(p: argparse.ArgumentParser) -> None:
    """Where the measure stage runs the target's artifacts; without a connection it estimates latency."""
    g = p.add_argument_group(
        "device (measure stage)",
        "Without --ssh/--adb-serial no device is used: device rows carry the host's accuracy and a latency "
        "estimate from the catalogue figures, labelled 'estimated'. See 'python -m pipeline devices list'.",
    )
    g.add_argument(
        "--device",
        default="",
        metavar="NAME",
        help="catalogue device for the target [jetson: jetson-orin-nano, android: android-arm64-generic]",
    )
    g.add_argument(
        "--devices-dir", action="append", default=[], metavar="DIR", help="extra device .yaml folder"
    )
    g.add_argument(
        "--ssh", default="", metavar="USER@HOST[:PORT]", help="Jetson reachable over ssh (key auth)"
    )
    g.add_argument("--key", default="", help="ssh private key file")
    g.add_argument("--known-hosts", default="", help="known_hosts holding the device's host key (strict)")
    g.add_argument("--remote-python", default="python3", help="Python on the device for the harness")
    g.add_argument("--adb-serial", default="", metavar="SERIAL", help="Android phone serial (adb devices)")
    g.add_argument("--adb", default="adb", help="adb executable [adb]")
    g.add_argument("--benchmark-model", default="", help="LiteRT benchmark_model binary for the phone")
    g.add_argument(
        "--delegate",
        default="xnnpack",
        choices=["cpu", "xnnpack", "gpu", "nnapi"],
        help="LiteRT delegate on the phone (with --adb-serial); a silent fallback to CPU is flagged "
        "[default: xnnpack]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Distill a MobileFaceNet face-recognition student from a big teacher, export it for "
        "the host, Jetson (ONNX/TensorRT) or Android (TFLite), and measure the exact artifacts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stage_help = {
        "all": "run every stage: data -> teacher -> distill -> qat -> export -> measure -> report",
        "teacher": "train the teacher on the data (or register the given ONNX/checkpoint teacher)",
        "cache": "embed every training image and its mirror with the teacher, once (memory-mapped)",
        "distill": "cache teacher embeddings and distill the student (stage one)",
        "qat": "INT8 with NNCF: post-training quantization baseline, then quantization-aware "
        "distillation with the teacher still teaching (stage two); export gets the QAT model unless the "
        "PTQ one scores higher on the dev set (qat.keep; qat.keep: ptq skips QAT and ships PTQ)",
        "export": "export the student for the target and check each artifact against PyTorch",
        "measure": "measure accuracy and latency of every artifact; writes results.json",
        "report": "write report.md and report.html (tables, ROC, accuracy-vs-latency, training curves)",
    }
    for name, text in stage_help.items():
        p = sub.add_parser(name, help=text, description=text)
        # device options only where the measure stage can run (all, measure, and report, which runs it)
        _run_args(p, devices=name in ("all", "measure", "report"))
    from pipeline.ci_cli import add_ci_commands
    from pipeline.devices_cli import add_devices_commands

    add_ci_commands(sub)
    add_devices_commands(sub)

    data = sub.add_parser("data", help="generate or inspect face data sets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = dsub.add_parser(
        "synth",
        help="write a synthetic face data set (train.rec/.idx + synth_val.bin + synth_dev.bin)",
        description="Generate face-like identities: train.rec/train.idx (InsightFace "
        "RecordIO), held-out identities as synth_val.bin (reported) and other held-out identities as "
        "synth_dev.bin (what stage two chooses PTQ or QAT by).",
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--preset", default="default", help="size preset (default, tiny, gpu)")
    synth.add_argument("--identities", type=int, help="training identities")
    synth.add_argument("--images-per-identity", type=int, help="images per training identity")
    synth.add_argument("--val-identities", type=int, help="held-out identities for verification")
    synth.add_argument("--val-pairs", type=int, help="verification pairs (even)")
    synth.add_argument(
        "--dev-identities", type=int, help="other held-out identities, for a stage's choices (synth_dev.bin)"
    )
    synth.add_argument("--dev-pairs", type=int, help="pairs of the dev set (even; 0 = no synth_dev.bin)")
    synth.add_argument("--difficulty", type=float, help="0 (easy) .. 1 (hard) intra-identity variation")
    synth.add_argument("--seed", type=int, help="random seed (same seed, same bytes)")
    synth.add_argument("--no-progress", action="store_true")
    info = dsub.add_parser("info", help="count images, identities and pairs of a .rec, image folder or .bin")
    info.add_argument("path")
    info.add_argument(
        "--json", action="store_true", help="print JSON (keys: images, identities, pairs, image_size)"
    )

    ev = sub.add_parser(
        "evaluate",
        help="verification accuracy of a .pt, .onnx or .tflite model",
        description="10-fold verification accuracy (InsightFace protocol), TAR@FAR, AUC, EER "
        "of a model file on a .bin or a pairs folder. Ends with one warning line (stderr; 'warning' in "
        "--json) when the model does not tell the faces apart (at chance, or near-constant embeddings): "
        "for an .onnx from elsewhere usually pixels fed wrongly, see the input contract flags.",
    )
    ev.add_argument("--model", required=True, help=".pt checkpoint, .onnx or .tflite")
    ev.add_argument("--data", required=True, help="verification .bin or folder with pairs.txt")
    ev.add_argument("--no-flip", action="store_true", help="do not fuse the mirrored image's embedding")
    ev.add_argument("--threads", type=int, default=2, help="runtime threads [default: 2]")
    ev.add_argument("--json", action="store_true", help="print JSON")
    feed = ev.add_argument_group(
        "input contract (.onnx from elsewhere)",
        "How to feed a model this project did not export, as teacher.input in a config. Layout, size and "
        "a leading Sub/Mul normalisation are read from the file; declare the rest.",
    )
    feed.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NHWC"], help="[default: auto]")
    feed.add_argument("--channels", default="RGB", choices=["RGB", "BGR"], help="[default: RGB]")
    feed.add_argument(
        "--mean", type=float, default=None, help="pixel mean on 0..255 (raw pixels: --mean 0 --std 1)"
    )
    feed.add_argument("--std", type=float, default=None, help="pixel std on 0..255")
    feed.add_argument("--size", type=int, default=0, help="input side in pixels [default: from the file]")

    ver = sub.add_parser(
        "verify",
        help="check a shipped model against its golden vectors",
        description="Run a .onnx or .tflite on the face crops of its golden file (<model>.golden.json, "
        "written by export beside every artifact) and compare each embedding with the one recorded at "
        "export by cosine. Exit 0: every crop matches; 1: the file computes something else (wrong build, "
        "runtime or delegate); 2: no golden file, or one written for another file.",
    )
    ver.add_argument("--model", required=True, help="the .onnx or .tflite to check")
    ver.add_argument("--golden", default=None, help="golden file [default: <model>.golden.json]")
    ver.add_argument("--threads", type=int, default=1, help="runtime threads [default: 1]")
    ver.add_argument("--json", action="store_true", help="print JSON")

    from deploy.contract import DELEGATES, TARGETS

    chk = sub.add_parser(
        "check",
        help="check a model file's contract (input, dynamic batch, output, precision, ops per runtime)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The checks insightface's model-zoo tooling applies before accepting an ONNX, on a "
        ".onnx or .tflite: input name/shape/layout/dtype; a symbolic batch axis run at batch 1 and 2 "
        "(must work and give the same rows); output (embedding) size; normalisation inside or outside the "
        "model; the precision its card or name promises against the stored weights (fp16 weights in an "
        "fp32 file); the ops the target's runtime or delegate cannot run (deploy/contract.py RUNTIMES, "
        "each with its source). The measure stage runs it on every artifact.",
        epilog="exit codes: 0 no violation (warnings allowed), 1 a violation, 2 bad input (no such file, "
        "not a model).",
    )
    chk.add_argument("--model", required=True, help="the .onnx or .tflite to check")
    chk.add_argument(
        "--target",
        default=None,
        choices=list(TARGETS),
        help="where it will run: host (onnxruntime / LiteRT XNNPACK), jetson (TensorRT), android (LiteRT "
        "with --delegate) [default: none: every runtime's op table, as warnings]",
    )
    chk.add_argument(
        "--delegate",
        default="xnnpack",
        choices=list(DELEGATES),
        help="the LiteRT delegate for --target android [default: xnnpack]",
    )
    chk.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        from deploy.artifacts import ParityError
        from deploy.onnx_qdq import QdqLintError
        from devices.runners.base import DeviceError
        from distill.engine.train import NonFiniteLoss

        if isinstance(exc, (ParityError, NonFiniteLoss, QdqLintError, DeviceError)):
            print(f"failed: {exc}", file=sys.stderr)
            return 1
        raise


def _dispatch(args: argparse.Namespace) -> int:
    from pipeline.ci_cli import run_ci_command
    from pipeline.devices_cli import run_devices_command

    for command in (run_ci_command, run_devices_command):
        code = command(args)
        if code is not None:
            return code
    if args.command == "data":
        return _data(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "check":
        return _check(args)
    import torch

    from compress.nncf_extension import configure_environment
    from distill.engine.distributed import setup_distributed

    configure_environment()  # NNCF's kernels in this install's own folder, with a timeout that fits
    from pipeline.stages import STAGES, run_until

    setup_distributed("cuda" if torch.cuda.is_available() else "cpu")  # no-op unless run by torchrun
    ctx = _context(args)
    last = "report" if args.command == "all" else args.command
    run_until(ctx, last)
    from distill.engine.distributed import current_dist

    if not current_dist().is_main:
        return 0  # rank 0 speaks for the run
    if last in ("measure", "report", "all"):
        print(f"results: {ctx.run.root / 'results.json'}")
    if last == "report":
        print((ctx.run.root / "report.md").read_text())
    assert last in STAGES
    return 0


def _context(args: argparse.Namespace) -> Any:
    """Config and target for a run folder; a stage re-run without flags reuses the folder's settings."""
    from distill.atomic import write_json
    from distill.config import from_dict, read_config_file, to_dict
    from pipeline.config import Config, config_from_layers, validate
    from pipeline.runfolder import RunFolder
    from pipeline.stages import Context, refuse_discarding

    run = RunFolder(args.out)
    saved = run.root / "run.json"
    stored = json.loads(saved.read_text()) if saved.exists() else None
    layers = list((stored or {}).get("layers") or [])
    if args.config:  # a new config adds to what the run already had
        layers.append(read_config_file(args.config))
    preset = args.preset or (stored or {}).get("preset") or "default"
    if stored is not None and "layers" not in stored and not args.config and not args.preset:
        cfg = from_dict(Config, stored["config"], str(saved))  # a run folder from before layers were kept
    else:
        try:
            cfg = config_from_layers(preset, layers)
        except InputError as exc:
            raise InputError(f"{args.config}: {exc}" if args.config else str(exc)) from None
    target = args.target or (stored or {}).get("target") or "host"
    validate(cfg)
    from devices.targets import get_target

    get_target(target)
    if stored is not None and not args.force:
        refuse_discarding(run.root, stored, target, cfg)
    run.root.mkdir(parents=True, exist_ok=True)
    info = {"config": to_dict(cfg), "target": target, "preset": preset, "layers": layers}
    write_json(saved, info)
    run.describe(info)
    return Context(
        run=run,
        cfg=cfg,
        target=target,
        progress=not args.no_progress,
        verbose=args.verbose,
        force=args.force,
        allow_parity_failure=args.allow_parity_failure,
        connection=_connection(args),
    )


def _connection(args: argparse.Namespace) -> Any:
    """The device settings of the command line (stages without device options: none connected)."""
    from devices.connect import DeviceConnection

    if not hasattr(args, "ssh"):
        return DeviceConnection()
    return DeviceConnection(
        device=args.device,
        ssh=args.ssh,
        key=args.key,
        known_hosts=args.known_hosts,
        remote_python=args.remote_python,
        adb_serial=args.adb_serial,
        adb=args.adb,
        benchmark_model=args.benchmark_model,
        delegate=args.delegate,
        devices_dirs=tuple(args.devices_dir),
    )


def _data(args: argparse.Namespace) -> int:
    if args.data_command == "info":
        from distill.data.info import dataset_info

        info = dataset_info(args.path)
        if args.json:
            print(json.dumps(info))
        else:
            for k, v in info.items():
                print(f"{k}: {v}")
        return 0
    from dataclasses import asdict

    from distill.data.synth import SynthSpec, synthesize
    from pipeline.config import load_config, validate

    cfg = load_config(preset=args.preset)
    spec = asdict(cfg.data.synth)
    for arg, key in (
        ("identities", "train_identities"),
        ("images_per_identity", "images_per_identity"),
        ("val_identities", "val_identities"),
        ("val_pairs", "val_pairs"),
        ("dev_identities", "dev_identities"),
        ("dev_pairs", "dev_pairs"),
        ("difficulty", "difficulty"),
        ("seed", "seed"),
    ):
        if getattr(args, arg) is not None:
            spec[key] = getattr(args, arg)
    cfg.data.synth = SynthSpec(**spec)
    validate(cfg)
    summary = synthesize(Path(args.out), cfg.data.synth, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from deploy.golden import verify_file
    from devices.accuracy import HOST_LABEL

    check = verify_file(args.model, args.golden, threads=args.threads, where=HOST_LABEL)
    if args.json:
        print(json.dumps({"model": str(args.model), **check.to_dict()}))
    else:
        print(f"{args.model}: {check.summary()}")
        for i, c in enumerate(check.cosines):
            if c < check.tolerance:
                print(f"  crop {i}: cosine {c:.6f} < {check.tolerance}")
    return 0 if check.passed else 1


def _check(args: argparse.Namespace) -> int:
    from deploy.contract import check_model

    report = check_model(args.model, args.target, args.delegate)
    if args.json:
        print(json.dumps({"model": str(args.model), **report.to_dict()}))
    else:
        print(f"{args.model}: {report.summary()}")
        print(report.table())
    return 0 if report.passed else 1


def _evaluate(args: argparse.Namespace) -> int:
    from distill.data.faces import open_verification
    from distill.evaluation import evaluate_sets, pixel_floor, verification_fields

    vs = open_verification(args.data)
    embedder, contract = _evaluation_embedder(args)
    results = evaluate_sets(lambda x: embedder.embed(x.numpy()), [vs], flip=not args.no_flip)
    result = verification_fields(results)["sets"][vs.name]
    result.pop("roc")
    result["pixel_floor"] = pixel_floor([vs])[vs.name]["accuracy"]
    warning = _blind_warning(results, contract)
    if args.json:
        extra = {"input": contract.to_dict()} if contract is not None else {}
        if warning:
            extra["warning"] = warning
        print(
            json.dumps({"model": args.model, "data": args.data, "flip": not args.no_flip, **result, **extra})
        )
    else:
        if contract is not None:
            print(contract.describe())
        print(
            f"{vs.name}: accuracy {100 * result['accuracy']:.2f} ± {100 * result['accuracy_std']:.2f} % "
            f"over {result['pairs']} pairs (10 folds, flip {'on' if not args.no_flip else 'off'})"
        )
        for far, tar in result["tar_at_far"].items():
            print(f"  TAR@FAR={far}: {'not computable' if tar is None else f'{100 * tar:.2f} %'}")
        print(f"  ROC AUC {result['roc_auc']:.4f}, EER {100 * result['eer']:.2f} %")
        cos = result["cosine"]
        print(
            f"  cosine: genuine mean {cos['genuine_mean']:.3f} (min {cos['genuine_min']:.3f}), "
            f"impostor mean {cos['impostor_mean']:.3f} (max {cos['impostor_max']:.3f})"
        )
        print(f"  floor: raw pixels compared by cosine {100 * result['pixel_floor']:.2f} %")
    if warning:  # after the figures it explains, on stderr
        sys.stdout.flush()
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _blind_warning(results: dict[str, Any], contract: Any) -> str | None:
    """One line when the model does not tell these faces apart, with what to try (None when it does)."""
    from distill.evaluation import blind_to_faces

    what = blind_to_faces(results)
    if what is None:
        return None
    if contract is None:  # this project's own file: its input is fixed, so the file or the faces are off
        return f"{what}: an untrained or wrong file, or faces not aligned as its training data was"
    return (
        f"{what}: the model is most likely fed wrongly. It was fed as {contract.summary()}; declare how it "
        "expects its pixels: --mean/--std (raw 0..255: --mean 0 --std 1), --channels BGR, --layout, --size"
    )


def _evaluation_embedder(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Embedder, InputContract or None): an ONNX from elsewhere is fed by its contract."""
    from deploy.runtimes import FedEmbedder, load_embedder

    declared = (args.layout, args.channels, args.mean, args.std, args.size) != ("auto", "RGB", None, None, 0)
    if Path(args.model).suffix.lower() != ".onnx" or not Path(args.model).is_file():
        if declared:
            raise InputError("--layout/--channels/--mean/--std/--size: apply to .onnx models only")
        return load_embedder(args.model, num_threads=args.threads), None
    from distill.config import TeacherInputConfig
    from distill.models.onnx_teacher import OnnxTeacher

    cfg = TeacherInputConfig(args.layout, args.channels, args.mean, args.std, args.size)
    model = OnnxTeacher(args.model, input_cfg=cfg, num_threads=args.threads)
    if model.contract.is_native and not declared:  # this project's own layout: the artifact as it ships
        return load_embedder(args.model, num_threads=args.threads), None
    return FedEmbedder(model, "onnx", Path(args.model).name, args.threads), model.contract
