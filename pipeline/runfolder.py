"""The run folder: one sub-folder per stage, a manifest, and the skip/resume rules.

A stage writes into ``.<stage>.work/`` and only a finished stage is renamed to ``<stage>/`` and entered
in ``manifest.json``, so a crash never leaves a folder that looks complete. Training checkpoints live in
the work folder, so re-running after a crash resumes. A stage is skipped when its key (config section +
the hashes of its inputs) equals the manifest's and its outputs are still there, unchanged.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.atomic import write_json, write_text
from distill.errors import InputError
from pipeline.console import third_party_to_log

MANIFEST = "manifest.json"
_FULL_HASH_LIMIT = 512 * 1024 * 1024  # bigger inputs (MS1M-size .rec) get a fingerprint, not a full hash


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: Path) -> str:
    """sha256 of a file; for files over 512 MiB, of (size, first and last MiB) — stated in the value."""
    path = Path(path)
    if path.is_dir():
        items = sorted(p for p in path.rglob("*") if p.is_file())
        h = hashlib.sha256()
        for p in items:
            h.update(f"{p.relative_to(path)}:{p.stat().st_size}:{int(p.stat().st_mtime)}".encode())
        return f"dir-listing:{h.hexdigest()}"
    size = path.stat().st_size
    if size <= _FULL_HASH_LIMIT:
        return sha256_file(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(size - (1 << 20))
        h.update(fh.read(1 << 20))
    return f"head-tail:{h.hexdigest()}"


def versions() -> dict[str, str]:
    """Versions of the tools that shape the artifacts, read from package metadata.

    Never imports them: importing litert-torch pulls TensorFlow-style runtimes into the process, which
    must not share it with a torch training loop.
    """
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "facekd",
        "torch",
        "numpy",
        "onnx",
        "onnxruntime",
        "litert-torch",
        "ai-edge-litert",
        "pillow",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class StageOutcome:
    """What a stage function returns: the files it wrote (relative to its folder) and its numbers."""

    files: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class RunFolder:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.run_info: dict[str, Any] | None = None

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        p = self.root / MANIFEST
        if not p.exists():
            return {"tool": "facekd", "stages": {}}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{p}: manifest is not valid JSON; delete it to re-run every stage") from None

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        if self.run_info is not None:
            manifest["run"] = self.run_info
        write_json(self.root / MANIFEST, manifest)

    def describe(self, run_info: dict[str, Any]) -> None:
        """Config and target to record at the top of the manifest when the next stage completes."""
        self.run_info = run_info

    def stage_dir(self, name: str) -> Path:
        return self.root / name

    def record(self, name: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(name)

    def output_hash(self, stage: str, file: str) -> str:
        rec = self.record(stage)
        if rec is None or file not in rec["outputs"]:
            raise InputError(f"{self.root}: stage '{stage}' has not produced '{file}' yet; run it first")
        return rec["outputs"][file]

    # -- running ------------------------------------------------------------------------------
    def is_current(self, name: str, key: str) -> bool:
        """Same key, and every output has the content it was written with.

        Content is compared by sha256, hashed again only when a file's size or mtime moved since it was
        written (an edit that keeps the size is seen; an untouched multi-GB cache is not re-read).
        """
        rec = self.record(name)
        if rec is None or rec.get("key") != key:
            return False
        folder = self.stage_dir(name)
        mtimes = rec.get("mtimes") or {}
        for rel, digest in rec["outputs"].items():
            p = folder / rel
            if not p.is_file():
                return False
            st = p.stat()
            if st.st_size != rec["sizes"][rel]:
                return False
            if mtimes.get(rel) != st.st_mtime_ns and sha256_file(p) != digest:
                return False
        return True

    def run(
        self,
        name: str,
        key_material: dict[str, Any],
        fn: Callable[[Path], StageOutcome],
        force: bool = False,
        log: Callable[[str], None] = print,
        collective: bool = False,
        verbose: bool = False,
    ) -> dict[str, Any]:
        """Run ``fn(work_dir)`` unless the stage is current; return its manifest record.

        Other libraries' output while ``fn`` runs goes to ``logs/<name>.log`` (``verbose``: to the console).

        Under torchrun, a ``collective`` stage (training) runs ``fn`` on every rank in the same work
        folder; any other stage runs on rank 0 while the others wait. Rank 0 alone writes the manifest.
        """
        from distill.engine.distributed import barrier, current_dist

        dist_info = current_dist()
        if not dist_info.is_main:
            log = _quiet
        key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:20]
        if not force and self.is_current(name, key):
            log(f"[{name}] up to date, skipped")
            return self.record(name)  # type: ignore[return-value]
        work = self.root / f".{name}.work"
        if dist_info.is_main:
            self._prepare(name, work, key, log)
        barrier(dist_info)
        if dist_info.is_main or collective:
            started = time.time()
            log_file = (
                self.root / "logs" / (name + ("" if dist_info.is_main else f".rank{dist_info.rank}") + ".log")
            )
            try:
                with third_party_to_log(log_file, verbose=verbose):
                    outcome = fn(work)
            except InputError:
                # Bad input: leave nothing behind, unless it surfaced mid-training with checkpoints to resume.
                if (
                    dist_info.is_main
                    and not (work / ".resumed").exists()
                    and not (work / "checkpoints").exists()
                ):
                    shutil.rmtree(work, ignore_errors=True)
                raise
            if collective:
                barrier(dist_info)  # every rank's share of the training is done
            if dist_info.is_main:
                self._finalise(name, work, key, key_material, outcome, started, log)
        barrier(dist_info)
        return self.record(name)  # type: ignore[return-value]

    def _prepare(self, name: str, work: Path, key: str, log: Callable[[str], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        key_file = work / ".stage-key"
        if work.exists() and (not key_file.exists() or key_file.read_text() != key):
            shutil.rmtree(work)  # leftovers of a different configuration: not resumable
        resumed = work.exists()
        work.mkdir(parents=True, exist_ok=True)
        write_text(key_file, key)
        if resumed:
            write_text(work / ".resumed", "")
        log(f"[{name}] {'resuming' if resumed else 'running'}")

    def _finalise(
        self,
        name: str,
        work: Path,
        key: str,
        key_material: dict[str, Any],
        outcome: StageOutcome,
        started: float,
        log: Callable[[str], None],
    ) -> None:
        seconds = time.time() - started
        outputs, sizes, mtimes = {}, {}, {}
        for rel in outcome.files:
            p = work / rel
            if not p.is_file():
                raise RuntimeError(f"stage '{name}' declared output '{rel}' but did not write it")
            outputs[rel] = sha256_file(p)
            sizes[rel] = p.stat().st_size
            mtimes[rel] = p.stat().st_mtime_ns  # a rename keeps it
        for marker in (".stage-key", ".resumed"):
            (work / marker).unlink(missing_ok=True)
        final = self.stage_dir(name)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        manifest = self.manifest()
        record = {
            "key": key,
            "inputs": key_material,
            "outputs": outputs,
            "sizes": sizes,
            "mtimes": mtimes,
            "metrics": outcome.metrics,
            "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "seconds": round(seconds, 2),
            "versions": versions(),
        }
        manifest["stages"][name] = record
        self._save_manifest(manifest)
        log(f"[{name}] done in {seconds:.1f}s{headline(outcome.metrics)}")


def _quiet(message: str) -> None:
    """Ranks other than 0 keep the log to rank 0."""


def headline(metrics: dict[str, Any]) -> str:
    """The figures a person wants on the console when a stage ends: verification accuracies."""
    found = []
    for key, value in (metrics or {}).items():
        if isinstance(value, dict):  # qat: per model ("ptq", "qat") -> {"<set>/accuracy": ...}
            found += [f"{key} {f}" for f in _accuracies(value)]
        found += _accuracies({key: value})
    return (": " + ", ".join(found)) if found else ""


def _accuracies(metrics: dict[str, Any]) -> list[str]:
    return [
        f"{key.rsplit('/', 1)[0]} accuracy {100 * value:.2f} %"
        for key, value in metrics.items()
        if key.endswith("/accuracy") and isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
