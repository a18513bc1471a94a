"""NNCF's C++ quantization kernels for CPU: built once per install, up front, never blocked by a stale lock.

Used when ``FACEKD_NNCF_CPU_KERNELS=1`` (NNCF as it ships) and by the tests that compare facekd's port
(``compress/fake_quant.py``, the default, which needs no build) against these kernels.

NNCF compiles them with torch's JIT extension builder on first use, into torch's shared extensions folder,
and gives up after 60 s (``NNCF_EXTENSION_LOAD_TIMEOUT``). On a loaded 2-core machine the build alone can
take longer; the process then dies with the build half done and torch's ``lock`` file left behind, and
every later run waits on that file until it times out as well (torch's ``FileBaton`` takes it even when
nothing needs building). So stage two:

1. uses a private extensions folder per install (``TORCH_EXTENSIONS_DIR`` below ``sys.prefix``) unless the
   user chose one, so no other process's lock or build applies;
2. gives the load a timeout that fits a slow build (``NNCF_EXTENSION_LOAD_TIMEOUT``, unless set);
3. builds under an ``flock`` that the OS releases when its holder dies, so it never goes stale; holding it,
   a torch ``lock`` file in the private folder can only be a killed build's leftover, and is removed;
4. does this at the start of the stage, with one line saying so, not minutes into calibration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

EXTENSIONS_ENV = "TORCH_EXTENSIONS_DIR"
TIMEOUT_ENV = "NNCF_EXTENSION_LOAD_TIMEOUT"
LOAD_TIMEOUT_S = 1800  # a cold build on a busy 2-core machine has taken several minutes


def private_extensions_dir() -> Path:
    """This install's own extensions folder: inside the venv when writable, else under ~/.cache."""
    inside = Path(sys.prefix) / "facekd-torch-extensions"
    try:
        inside.mkdir(parents=True, exist_ok=True)
        if os.access(inside, os.W_OK):
            return inside
    except OSError:
        pass
    tag = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "facekd" / f"torch-extensions-{tag}"


# NNCF sends usage telemetry (openvino_telemetry: Google Analytics, posted from a forked process, which is
# also what printed "os.fork() was called ... JAX is multithreaded" in the export stage). Its own switch is
# this variable (nncf/telemetry/wrapper.py replaces the sender with a stub when it is set); nothing of a
# facekd run leaves the machine, so it is set unless the user set it or asks for telemetry.
TELEMETRY_OFF_ENV = "NNCF_CI"
TELEMETRY_OPT_IN_ENV = "FACEKD_NNCF_TELEMETRY"  # "1": leave NNCF's telemetry as NNCF ships it


def configure_environment() -> dict[str, str]:
    """Set NNCF's variables where the user has not; returns what is in force. Call before NNCF loads."""
    os.environ.setdefault(EXTENSIONS_ENV, str(private_extensions_dir()))
    os.environ.setdefault(TIMEOUT_ENV, str(LOAD_TIMEOUT_S))
    if os.environ.get(TELEMETRY_OPT_IN_ENV) != "1":
        os.environ.setdefault(TELEMETRY_OFF_ENV, "1")
    keys = (EXTENSIONS_ENV, TIMEOUT_ENV, TELEMETRY_OFF_ENV)
    return {k: os.environ[k] for k in keys if k in os.environ}


def nncf_cpu_build_dir() -> Path:
    """Where NNCF builds its CPU kernels (NNCF's loader class: private API, isolated here)."""
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    return Path(QuantizedFunctionsCPULoader.get_build_dir())


def load_nncf_cpu_kernels() -> None:
    """Make NNCF load (building if needed) its CPU kernels now (NNCF's namespace object: private API)."""
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU

    QuantizedFunctionsCPU.get("Quantize_forward")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on ``path``: released by the OS when the holder exits, however it exits."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, torch's own baton still applies
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_nncf_kernels(
    log: Callable[[str], None] = print, load: Callable[[], None] = load_nncf_cpu_kernels
) -> float:
    """Configure, clear a leftover lock, and load NNCF's CPU kernels; returns the seconds it took."""
    settings = configure_environment()
    build = nncf_cpu_build_dir()
    private = Path(settings[EXTENSIONS_ENV]).resolve() in build.resolve().parents
    started = time.time()
    with _exclusive(build / "facekd-build.flock"):
        baton = build / "lock"
        if private and baton.exists():
            log(f"[qat] removing a build lock left by an interrupted build: {baton}")
            baton.unlink()
        if not any(build.glob("*.so")):
            log(
                "[qat] building NNCF's C++ kernels once for this install "
                f"(in {build}; a minute or more on a busy machine)"
            )
        load()
    return time.time() - started
