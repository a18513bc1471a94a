"""Stage two starts on a loaded machine: a slow kernel build fits the timeout, a stale lock cannot block.

NNCF's own loader and timeout code run here (a stand-in loader for the slow build, the real kernels for
the stale lock), so a change in NNCF's private layout fails these tests loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress import nncf_extension as ext

ROOT = Path(__file__).resolve().parents[1]


def test_environment_defaults_respect_the_user(monkeypatch, tmp_path):
    monkeypatch.delenv(ext.EXTENSIONS_ENV, raising=False)
    monkeypatch.delenv(ext.TIMEOUT_ENV, raising=False)
    got = ext.configure_environment()
    assert got[ext.TIMEOUT_ENV] == str(ext.LOAD_TIMEOUT_S)
    assert Path(got[ext.EXTENSIONS_ENV]) == ext.private_extensions_dir()
    monkeypatch.setenv(ext.EXTENSIONS_ENV, str(tmp_path))
    monkeypatch.setenv(ext.TIMEOUT_ENV, "7")
    monkeypatch.setenv(ext.TELEMETRY_OFF_ENV, "yes")
    assert ext.configure_environment() == {
        ext.EXTENSIONS_ENV: str(tmp_path),
        ext.TIMEOUT_ENV: "7",
        ext.TELEMETRY_OFF_ENV: "yes",
    }


@pytest.mark.parametrize(
    "configure, opt_in, sender",
    [(True, "", "MagicMock"), (False, "", "NNCFTelemetry"), (True, "1", "NNCFTelemetry")],  # stub: MagicMock
)
def test_nncf_telemetry_is_off_unless_asked_for(configure, opt_in, sender):
    """Outside pytest (NNCF stubs its telemetry under pytest), NNCF's own switch decides what it sends."""
    env = {k: v for k, v in os.environ.items() if k not in (ext.TELEMETRY_OFF_ENV, "NNCF_DEV", "CI")}
    env[ext.TELEMETRY_OPT_IN_ENV] = opt_in
    code = (
        "from compress import nncf_extension as ext\n"
        + ("ext.configure_environment()\n" if configure else "")
        + "import nncf.telemetry.wrapper as w\nprint(type(w.telemetry).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == sender


def test_nncf_build_dir_follows_the_private_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(ext.EXTENSIONS_ENV, str(tmp_path))
    build = ext.nncf_cpu_build_dir()  # NNCF's loader reads torch's setting at call time
    assert tmp_path.resolve() in build.resolve().parents and "quantized_functions_cpu" in str(build)


class _SlowLoader:
    """Stands in for a C++ build on a busy machine: NNCF's namespace times its load()."""

    @classmethod
    def name(cls) -> str:
        return "slow"

    @classmethod
    def get_build_dir(cls) -> str:
        return "/nonexistent"

    @classmethod
    def load(cls):
        time.sleep(1.5)
        return type("Namespace", (), {"f": staticmethod(lambda: 42)})


def test_a_slow_build_fails_under_nncfs_default_and_loads_under_ours(monkeypatch):
    from nncf.torch.extensions import ExtensionLoaderTimeoutException, ExtensionNamespace

    monkeypatch.setenv(ext.TIMEOUT_ENV, "1")  # NNCF's 60 s default against a >60 s build, scaled down
    with pytest.raises(ExtensionLoaderTimeoutException, match="failed to execute within 1 seconds"):
        ExtensionNamespace(_SlowLoader).get("f")
    monkeypatch.delenv(ext.TIMEOUT_ENV)
    ext.configure_environment()
    assert ExtensionNamespace(_SlowLoader).get("f")() == 42


@pytest.mark.slow
def test_a_stale_lock_from_a_killed_build_does_not_block_the_next_run(tmp_path):
    """Real NNCF kernels in a fresh private folder: this install's (built once by the test session, see
    conftest.py) copied there with their times, or built there when it has none; then torch's lock left as a
    killed build would, and a new process (a new pipeline run) still loads them, well inside the time a
    wait would take."""
    installed = Path(ext.configure_environment()[ext.EXTENSIONS_ENV])
    if installed.is_dir():
        shutil.copytree(installed, tmp_path, dirs_exist_ok=True)  # copy2: mtimes kept, so no rebuild
    env = {**os.environ, ext.EXTENSIONS_ENV: str(tmp_path), ext.TIMEOUT_ENV: "600"}
    code = (
        "import time; from compress.nncf_extension import ensure_nncf_kernels, nncf_cpu_build_dir;"
        "s = ensure_nncf_kernels(log=print); print('BUILD', nncf_cpu_build_dir(), round(s, 1))"
    )
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    build = Path(first.stdout.split("BUILD ", 1)[1].rsplit(" ", 1)[0])
    assert any(build.glob("*.so"))
    (build / "lock").write_text("")  # what a build killed mid-way leaves behind
    env[ext.TIMEOUT_ENV] = "60"
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert "removing a build lock left by an interrupted build" in second.stdout
    assert not (build / "lock").exists()
