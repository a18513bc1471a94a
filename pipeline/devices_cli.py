"""``python -m pipeline devices list`` and ``devices check``: the catalogue, and whether a device is
reachable and what would run on it.

Wiring (pipeline/cli.py): ``add_devices_commands(sub)`` in build_parser, and at the top of dispatch
``rc = run_devices_command(args); if rc is not None: return rc``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

BASIS_MARK = {"datasheet": "", "derived": "*", "nominal": "~", "run-time": "@", "user": "?"}
LEGEND = (
    "figures: plain = datasheet, * = derived from datasheet figures, ~ = nominal (not a datasheet), "
    "@ = computed on this machine when used, ? = empty, fill in your own file; sources: devices check"
)


def add_devices_commands(sub: Any) -> None:
    """Register ``devices list`` and ``devices check`` on the top-level subparsers."""
    dev = sub.add_parser(
        "devices",
        help="list target devices, or check one is reachable and what would run on it",
        description="The device catalogue (devices/catalogue/*.yaml plus FACEKD_DEVICES and --devices-dir "
        "folders) and a connectivity/runtime check of one device.",
    )
    dsub = dev.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", help="table of devices: formats, runtime, peak figures")
    chk = dsub.add_parser("check", help="connectivity, runtime versions and what would run on a device")
    for p in (ls, chk):
        p.add_argument(
            "--devices-dir",
            action="append",
            default=[],
            metavar="DIR",
            help="extra folder of device .yaml files (repeatable; also env FACEKD_DEVICES)",
        )
        p.add_argument("--json", action="store_true", help="print JSON")
    # --device as in 'all'/'measure' (there --target is host/jetson/android); --target kept as an alias
    chk.add_argument(
        "--device",
        "--target",
        dest="target",
        required=True,
        metavar="NAME",
        help="device name from 'devices list'",
    )
    ssh = chk.add_argument_group("ssh (Jetson)")
    ssh.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="reach the device over ssh")
    ssh.add_argument("--key", help="private key file (key authentication only)")
    ssh.add_argument(
        "--known-hosts", help="known_hosts file holding the device's host key [~/.ssh/known_hosts]"
    )
    ssh.add_argument("--remote-python", default="python3", help="Python on the device [python3]")
    ssh.add_argument("--connect-timeout", type=int, default=10, help="seconds [10]")
    adb = chk.add_argument_group("adb (Android)")
    adb.add_argument("--adb-serial", metavar="SERIAL", help="device serial from 'adb devices'")
    adb.add_argument("--adb", default="adb", help="adb executable [adb]")
    adb.add_argument(
        "--benchmark-model", help="LiteRT benchmark_model binary for the phone (android_aarch64)"
    )
    adb.add_argument(
        "--delegate",
        default="xnnpack",
        choices=["cpu", "xnnpack", "gpu", "nnapi"],
        help="LiteRT delegate to check [default: xnnpack]",
    )


def run_devices_command(args: argparse.Namespace) -> int | None:
    """Run a ``devices`` command; None when ``args`` is another command."""
    if getattr(args, "command", None) != "devices":
        return None
    from devices.catalogue import load_catalogue
    from devices.runners.base import DeviceError

    catalogue = load_catalogue(args.devices_dir)
    if args.devices_command == "list":
        _print_list(catalogue, as_json=args.json)
        return 0
    from distill.errors import InputError

    if args.target not in catalogue:
        raise InputError(f"--target: unknown device '{args.target}'; known: {', '.join(sorted(catalogue))}")
    device = catalogue[args.target]
    try:
        report = check_device(device, args)
    except DeviceError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_check(report)
    return 0


# --------------------------------------------------------------------------------------------- list
_UNITS = {"tops": "TOPS", "tflops": "TFLOPS", "gops": "GOPS", "gflops": "GFLOPS"}


def _fig_unit(device: Any, *names: str) -> str:
    """``_fig`` of the first figure present, with its unit (TOPS for a GPU, GOPS for a CPU, ...)."""
    for name in names:
        if device.figures.get(name) is not None:
            value = _fig(device, name)
            unit = next((u for k, u in _UNITS.items() if name.endswith(k) or f"_{k}_" in name), "")
            return f"{value} {unit}".strip()
    return "-"


def _fig(device: Any, *names: str) -> str:
    for name in names:
        f = device.figures.get(name)
        if f is not None:
            if f.value is None:
                return BASIS_MARK.get(f.basis, "?")  # "@" computed when used, "?" to fill in
            return f"{f.value:g}{BASIS_MARK.get(f.basis, '')}"
    return "-"


def list_rows(catalogue: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name in sorted(catalogue):
        d = catalogue[name]
        key = next((k for k in ("tensorrt", "litert", "onnxruntime") if d.runtime.get(k)), None)
        runtime = f"{key}: {d.runtime[key]}" if key else ""
        rows.append(
            {
                "name": name,
                "via": d.connection,
                "formats": ",".join(d.formats),
                "precisions": ",".join(d.precisions),
                "runtime": runtime.split(" (")[0],
                "int8_tops": _fig_unit(d, "gpu_int8_tops_dense", "int8_tops_dense", "cpu_int8_gops"),
                "fp16_tflops": _fig_unit(d, "gpu_fp16_tflops", "cpu_fp16_gflops"),
                "fp32": _fig_unit(d, "gpu_fp32_tflops", "cpu_fp32_gflops"),
                "mem_gb_s": _fig(d, "memory_bandwidth_gbs"),
                "cpu_cores": _fig(d, "cpu_cores"),
            }
        )
    return rows


def _print_list(catalogue: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out = {}
        for name, d in sorted(catalogue.items()):
            out[name] = {
                "description": d.description,
                "target": d.target,
                "connection": d.connection,
                "formats": list(d.formats),
                "precisions": list(d.precisions),
                "runtime": d.runtime,
                "figures": {k: vars(v) for k, v in d.figures.items()},
                "file": str(d.path),
            }
        print(json.dumps(out, indent=2))
        return
    rows = list_rows(catalogue)
    headers = {
        "name": "device",
        "via": "via",
        "formats": "formats",
        "precisions": "precisions",
        "runtime": "runtime",
        "int8_tops": "INT8 peak",
        "fp16_tflops": "FP16 peak",
        "fp32": "FP32 peak",
        "mem_gb_s": "mem GB/s",
        "cpu_cores": "cores",
    }
    from pipeline.report import text_table

    print("\n".join(text_table(list(headers.values()), [[r[k] for k in headers] for r in rows], rule=False)))
    print()
    print("Peaks: the GPU's dense figures on Jetsons, the CPU's on phones and hosts, each with its unit.")
    print(LEGEND)


# -------------------------------------------------------------------------------------------- check
def check_device(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Connectivity, runtime versions and the plan for one device (raises DeviceError if unreachable)."""
    report: dict[str, Any] = {
        "device": device.name,
        "description": device.description,
        "file": str(device.path),
        "connection": device.connection,
        "formats": list(device.formats),
        "runtime": dict(device.runtime),
        "figures": {k: vars(v) for k, v in device.figures.items()},
        "notes": device.notes,
    }
    if device.connection == "local":
        report.update(_check_local(device))
    elif device.connection == "ssh":
        report.update(_check_ssh(device, args))
    else:
        report.update(_check_adb(device, args))
    return report


def _check_local(device: Any) -> dict[str, Any]:
    from deploy.tensorrt import tensorrt_available
    from devices import harness

    probe = harness.probe()
    trt_ok, trt_why = tensorrt_available()
    plan = []
    if "onnx" in device.formats:
        providers = ", ".join(probe.get("onnxruntime_providers", []))
        plan.append(f"onnx: onnxruntime {probe.get('onnxruntime')} ({providers})")
    if "tflite" in device.formats:
        plan.append(f"tflite: {probe.get('litert') or 'no LiteRT interpreter installed'}")
    if "tensorrt" in device.formats:
        plan.append(f"tensorrt: {'engine built and timed here' if trt_ok else 'not possible'} ({trt_why})")
    return {"reachable": True, "versions": probe, "plan": plan}


def _check_ssh(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    if not args.ssh:
        return {"reachable": None, "plan": [_estimate_plan(device, "--ssh USER@HOST[:PORT]")]}
    from devices.runners.ssh import SshOptions, SshRunner

    options = SshOptions(
        key=Path(args.key) if args.key else None,
        known_hosts=Path(args.known_hosts) if args.known_hosts else None,
        connect_timeout=args.connect_timeout,
        remote_python=args.remote_python,
    )
    runner = SshRunner(device.name, args.ssh, options)
    caps = runner.probe()
    return {
        "reachable": True,
        "ssh": str(runner.target),
        "versions": {
            "machine": caps.machine,
            "l4t": caps.l4t,
            "jetpack": caps.jetpack,
            "tensorrt (trtexec)": caps.tensorrt_version,
            "python": caps.python,
            "harness": caps.harness or caps.harness_error or None,
            "tegrastats": caps.tegrastats,
            "nvpmodel": caps.nvpmodel,
            "jetson_clocks": caps.jetson_clocks,
        },
        "plan": runner.plan(".onnx"),
    }


def _check_adb(device: Any, args: argparse.Namespace) -> dict[str, Any]:
    if not args.adb_serial:
        return {
            "reachable": None,
            "plan": [_estimate_plan(device, "--adb-serial SERIAL --benchmark-model PATH")],
        }
    from devices.runners.adb import AdbOptions, AdbRunner, benchmark_flags
    from distill.errors import InputError

    if not args.benchmark_model:
        raise InputError("--benchmark-model: give the LiteRT benchmark_model binary to push to the phone")
    options = AdbOptions(
        serial=args.adb_serial,
        benchmark_model=Path(args.benchmark_model),
        adb=args.adb,
        delegate=args.delegate,
    )
    runner = AdbRunner(device.name, options)
    props = runner.device_properties()
    flags = " ".join(benchmark_flags(args.delegate, options))
    return {
        "reachable": True,
        "adb_serial": args.adb_serial,
        "versions": props,
        "plan": [
            f"latency: benchmark_model {flags} --num_threads=N (log checked for a silent CPU fallback)",
            "accuracy: the host's run of the same .tflite (no Python on the phone)",
            "note: the adb runner has not been run against a real phone by the facekd authors",
        ],
    }


def _estimate_plan(device: Any, flags: str) -> str:
    return (
        f"no device given ({flags}): rows for {device.name} carry no device latency, only a roofline "
        "estimate from the graph (labelled estimated) and the host's accuracy"
    )


def _print_check(report: dict[str, Any]) -> None:
    print(f"{report['device']}: {report['description']}")
    print(f"  file: {report['file']}")
    print(f"  connection: {report['connection']}, formats: {', '.join(report['formats'])}")
    for k, v in report["runtime"].items():
        print(f"  runtime {k}: {v}")
    if report.get("reachable"):
        print("  reachable: yes")
        for k, v in (report.get("versions") or {}).items():
            print(f"  {k}: {v}")
    for line in report.get("plan", []):
        print(f"  {line}")
    print("  figures:")
    for name, f in report["figures"].items():
        value = "(empty)" if f["value"] is None else f"{f['value']:g}"
        note = f" [{f['note']}]" if f.get("note") else ""
        print(f"    {name} = {value} ({f['basis']}: {f['source']}){note}")
