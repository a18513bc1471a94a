"""Device catalogue: one YAML data file per device, so users add a device by adding a file.

A device file says which artifact formats and precisions the device runs, its runtime versions, and its
published peak figures, each with the document it comes from and a ``basis``:

* ``datasheet``: quoted from the named vendor document;
* ``derived``: computed from datasheet figures (the formula is in ``note``);
* ``nominal``: a typical value, not from a datasheet;
* ``run-time``: computed or measured on this machine when needed (host-cpu, see devices/estimate.py);
* ``user``: left empty for the user to fill in (an estimate refuses to use an empty figure).

Files are read from the built-in folder ``devices/catalogue/``, then from each folder in the
``FACEKD_DEVICES`` environment variable (``os.pathsep``-separated), then from ``extra_dirs``
(``--devices-dir``); a later file with the same device name replaces an earlier one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from distill.errors import InputError

BUILTIN_DIR = Path(__file__).resolve().parent / "catalogue"
ENV_VAR = "FACEKD_DEVICES"

TARGETS = ("host", "jetson", "android")
CONNECTIONS = ("local", "ssh", "adb")
FORMATS = ("onnx", "tensorrt", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
BASES = ("datasheet", "derived", "nominal", "run-time", "user")
UNITS = ("gpu", "cpu")

# Figure names end with their unit; the factor turns the value into base units (op/s, B/s, ...).
UNIT_SUFFIXES: dict[str, float] = {
    "_tops_dense": 1e12,
    "_tops_sparse": 1e12,
    "_tops": 1e12,
    "_tflops": 1e12,
    "_gflops": 1e9,
    "_gops": 1e9,
    "_gbs": 1e9,
    "_cores": 1.0,
    "_mhz": 1e6,
    "_w_max": 1.0,
    "_w": 1.0,
}

_TOP_KEYS = {
    "name",
    "description",
    "target",
    "connection",
    "formats",
    "precisions",
    "runtime",
    "figures",
    "estimate",
    "notes",
}
_FIGURE_KEYS = {"value", "basis", "source", "note"}
_ESTIMATE_KEYS = {
    "unit",
    "peak",
    "bandwidth",
    "cores",
    "compute_efficiency",
    "bandwidth_efficiency",
    "node_overhead_us",
}


@dataclass(frozen=True)
class Figure:
    """One published (or computed) number, with where it comes from."""

    value: float | None
    basis: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class EstimateSpec:
    """Which figures a roofline estimate uses on this device, and its knobs."""

    unit: str  # gpu | cpu: the compute unit the deployed runtime uses
    peak: dict[str, str]  # precision -> figure name
    bandwidth: str  # figure name
    cores: str | None = None  # cpu unit: figure with the core count (peak scales with threads)
    compute_efficiency: float = 1.0
    bandwidth_efficiency: float = 1.0
    node_overhead_us: float = 0.0


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    target: str  # facekd export target: host | jetson | android
    connection: str  # local | ssh | adb
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    runtime: dict[str, str]
    figures: dict[str, Figure]
    estimate: EstimateSpec
    notes: str = ""
    path: Path | None = field(default=None, compare=False)

    def figure_value(self, name: str) -> float:
        """A figure in base units (op/s, B/s, cores, Hz, W); InputError if it is missing or empty."""
        fig = self.figures.get(name)
        where = self.path or self.name
        if fig is None:
            raise InputError(f"{where}: device '{self.name}' has no figure '{name}'")
        if fig.value is None:
            raise InputError(
                f"{where}: figure '{name}' of device '{self.name}' has no value ({fig.basis}: {fig.source})"
            )
        return float(fig.value) * unit_factor(name)

    def with_figures(self, values: Mapping[str, Figure]) -> Device:
        """A copy with some figures replaced (run-time figures filled in)."""
        return replace(self, figures={**self.figures, **values})


def unit_factor(figure_name: str) -> float:
    for suffix, factor in UNIT_SUFFIXES.items():
        if figure_name.endswith(suffix):
            return factor
    raise ValueError(f"figure name '{figure_name}' does not end with a known unit suffix")


# ------------------------------------------------------------------------------------------ loading
def catalogue_dirs(extra_dirs: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Built-in folder, then FACEKD_DEVICES folders, then ``extra_dirs`` (later ones win)."""
    dirs = [BUILTIN_DIR]
    env = os.environ.get(ENV_VAR, "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p.strip()]
    dirs += [Path(p) for p in extra_dirs]
    return dirs


def load_catalogue(extra_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, Device]:
    """All devices by name; InputError naming the file and field for any invalid file."""
    devices: dict[str, Device] = {}
    for folder in catalogue_dirs(extra_dirs):
        if not folder.is_dir():
            raise InputError(f"{folder}: device catalogue folder not found")
        seen_here: dict[str, Path] = {}
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            device = load_device_file(path)
            if device.name in seen_here:
                raise InputError(
                    f"{path}: device name '{device.name}' is also used by {seen_here[device.name]}"
                )
            seen_here[device.name] = path
            devices[device.name] = device
    return devices


def get_device(name: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> Device:
    devices = load_catalogue(extra_dirs)
    if name not in devices:
        raise InputError(f"--target: unknown device '{name}'; known devices: {', '.join(sorted(devices))}")
    return devices[name]


def load_device_file(path: str | os.PathLike) -> Device:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not valid YAML ({first})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read device file ({exc.strerror})") from exc
    return parse_device(data, path)


def parse_device(data: Any, path: Path) -> Device:
    """Validate one device mapping; every error names the file and the field."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: a device file must be a mapping of fields, got {type(data).__name__}")
    _no_unknown(data, _TOP_KEYS, path, "")
    name = _string(data, "name", path)
    if name != path.stem:
        raise InputError(f"{path}: field 'name' is '{name}' but the file is named '{path.name}'")
    target = _choice(data, "target", TARGETS, path)
    connection = _choice(data, "connection", CONNECTIONS, path)
    formats = _choices(data, "formats", FORMATS, path)
    precisions = _choices(data, "precisions", PRECISIONS, path)
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int | float) for k, v in runtime.items()
    ):
        raise InputError(f"{path}: field 'runtime' must map names to version strings")
    figures = _figures(data.get("figures"), path)
    estimate = _estimate(data.get("estimate"), figures, precisions, path)
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        raise InputError(f"{path}: field 'notes' must be text")
    return Device(
        name=name,
        description=_string(data, "description", path),
        target=target,
        connection=connection,
        formats=formats,
        precisions=precisions,
        runtime={k: str(v) for k, v in runtime.items()},
        figures=figures,
        estimate=estimate,
        notes=notes.strip(),
        path=path,
    )


def _no_unknown(data: dict, allowed: set[str], path: Path, prefix: str) -> None:
    unknown = sorted(str(k) for k in set(data) - allowed)
    if unknown:
        raise InputError(
            f"{path}: unknown field '{prefix}{unknown[0]}' (allowed: {', '.join(sorted(allowed))})"
        )


def _string(data: dict, key: str, path: Path, prefix: str = "") -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{path}: field '{prefix}{key}' must be a non-empty string")
    return value.strip()


def _choice(data: dict, key: str, allowed: tuple[str, ...], path: Path) -> str:
    value = data.get(key)
    if value not in allowed:
        raise InputError(f"{path}: field '{key}' is {value!r}; expected one of {', '.join(allowed)}")
    return value


def _choices(data: dict, key: str, allowed: tuple[str, ...], path: Path) -> tuple[str, ...]:
    values = data.get(key)
    if not isinstance(values, list) or not values:
        raise InputError(f"{path}: field '{key}' must be a non-empty list")
    for v in values:
        if v not in allowed:
            raise InputError(f"{path}: field '{key}' has {v!r}; expected values from {', '.join(allowed)}")
    return tuple(values)


def _figures(raw: Any, path: Path) -> dict[str, Figure]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{path}: field 'figures' must be a non-empty mapping of named figures")
    figures = {}
    for name, spec in raw.items():
        field_name = f"figures.{name}"
        try:
            unit_factor(str(name))
        except ValueError:
            raise InputError(
                f"{path}: figure name '{name}' must end with a unit ({', '.join(UNIT_SUFFIXES)})"
            ) from None
        if not isinstance(spec, dict):
            raise InputError(f"{path}: field '{field_name}' must be a mapping with value, basis, source")
        _no_unknown(spec, _FIGURE_KEYS, path, f"{field_name}.")
        value = spec.get("value")
        basis = spec.get("basis")
        if basis not in BASES:
            raise InputError(f"{path}: field '{field_name}.basis' is {basis!r}; expected one of {BASES}")
        if value is None:
            if basis not in ("run-time", "user"):
                raise InputError(
                    f"{path}: field '{field_name}.value' is empty; only run-time or user figures may be"
                )
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{path}: field '{field_name}.value' must be a number, got {value!r}")
        elif value <= 0:
            raise InputError(f"{path}: field '{field_name}.value' must be positive, got {value}")
        source = _string(spec, "source", path, f"{field_name}.")
        note = spec.get("note", "")
        if not isinstance(note, str):
            raise InputError(f"{path}: field '{field_name}.note' must be text")
        figures[str(name)] = Figure(None if value is None else float(value), basis, source, note.strip())
    return figures


def _estimate(raw: Any, figures: dict[str, Figure], precisions: tuple[str, ...], path: Path) -> EstimateSpec:
    if not isinstance(raw, dict):
        raise InputError(f"{path}: field 'estimate' must be a mapping (unit, peak, bandwidth, ...)")
    _no_unknown(raw, _ESTIMATE_KEYS, path, "estimate.")
    unit = raw.get("unit")
    if unit not in UNITS:
        raise InputError(f"{path}: field 'estimate.unit' is {unit!r}; expected one of {UNITS}")
    peak = raw.get("peak")
    if not isinstance(peak, dict) or not peak:
        raise InputError(f"{path}: field 'estimate.peak' must map precisions to figure names")
    for precision, fig in peak.items():
        if precision not in PRECISIONS:
            raise InputError(f"{path}: field 'estimate.peak' has unknown precision '{precision}'")
        if fig not in figures:
            raise InputError(f"{path}: field 'estimate.peak.{precision}' names unknown figure '{fig}'")
    missing = [p for p in precisions if p not in peak]
    if missing:
        raise InputError(f"{path}: field 'estimate.peak' has no figure for precision '{missing[0]}'")
    bandwidth = raw.get("bandwidth")
    if bandwidth not in figures:
        raise InputError(f"{path}: field 'estimate.bandwidth' names unknown figure {bandwidth!r}")
    cores = raw.get("cores")
    if cores is not None and cores not in figures:
        raise InputError(f"{path}: field 'estimate.cores' names unknown figure {cores!r}")
    if unit == "cpu" and cores is None:
        raise InputError(f"{path}: field 'estimate.cores' is required when estimate.unit is cpu")
    knobs = {}
    for key, default, low_ok in (
        ("compute_efficiency", 1.0, False),
        ("bandwidth_efficiency", 1.0, False),
        ("node_overhead_us", 0.0, True),
    ):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{path}: field 'estimate.{key}' must be a number, got {value!r}")
        if (value < 0) if low_ok else not 0 < value <= 1:
            rule = ">= 0" if low_ok else "in (0, 1]"
            raise InputError(f"{path}: field 'estimate.{key}' must be {rule}, got {value}")
        knobs[key] = float(value)
    return EstimateSpec(unit=unit, peak=dict(peak), bandwidth=bandwidth, cores=cores, **knobs)
