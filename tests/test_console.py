"""Other libraries' output goes to the stage's log file; ours stays on the console (real descriptors)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys, warnings
    from pathlib import Path
    from tqdm import tqdm
    from pipeline.console import third_party_to_log

    with third_party_to_log(Path(sys.argv[1]), verbose=sys.argv[2] == "1"):
        print("ours: a stage line")
        for _ in tqdm(range(3), desc="ours-bar"):
            pass
        os.write(2, b"native: oneDNN says hello\\n")      # what C++ code writes, below Python
        os.write(1, b"native: [START] /tmp/xyz\\n")
        warnings.warn("library: LeafSpec is deprecated", FutureWarning)
        logging.getLogger("torchao").warning("library: Failed to load _C_mxfp8.so")
        subprocess.run(["sh", "-c", "echo child: a tool we ran"], check=True)
    print("ours: after the stage")
    logging.getLogger("torchao").warning("library: after the stage")
    """
)


def run(tmp_path: Path, verbose: bool) -> tuple[str, str]:
    log = tmp_path / "logs" / "export.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), "1" if verbose else "0"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return proc.stdout + proc.stderr, (log.read_text() if log.exists() else "")


def test_third_party_output_goes_to_the_log_and_ours_to_the_console(tmp_path):
    console, log = run(tmp_path, verbose=False)
    assert "ours: a stage line" in console and "ours-bar" in console and "ours: after the stage" in console
    for line in ("native: oneDNN", "native: [START]", "LeafSpec", "_C_mxfp8", "child: a tool"):
        assert line in log and line not in console, line
    assert "ours" not in log
    assert "library: after the stage" in console  # outside a stage nothing is hidden


def test_verbose_keeps_everything_on_the_console(tmp_path):
    console, log = run(tmp_path, verbose=True)
    for line in (
        "ours: a stage line",
        "native: oneDNN",
        "native: [START]",
        "LeafSpec",
        "_C_mxfp8",
        "child: a tool",
    ):
        assert line in console, line
    assert log == ""


def test_a_quiet_stage_leaves_no_log_file(tmp_path):
    from pipeline.console import third_party_to_log

    with third_party_to_log(tmp_path / "logs" / "data.log"):
        pass
    assert not (tmp_path / "logs").exists()


def test_a_stage_that_fails_quietly_leaves_no_log_either(tmp_path):
    import pytest

    from pipeline.console import third_party_to_log

    with pytest.raises(ValueError), third_party_to_log(tmp_path / "logs" / "data.log"):
        raise ValueError("bad input")
    assert not (tmp_path / "logs").exists()


def test_litert_torch_progress_is_off_inside_a_stage_and_back_after(monkeypatch, tmp_path):
    """The switch is litert-torch's own variable (read at every print): a rename would fail here."""
    import os

    from litert_torch import progress

    from pipeline.console import LITERT_PROGRESS_ENV, third_party_to_log

    monkeypatch.delenv(LITERT_PROGRESS_ENV, raising=False)
    assert progress.config.show_progress is True
    with third_party_to_log(tmp_path / "logs" / "export.log"):
        assert progress.config.show_progress is False
    assert progress.config.show_progress is True and LITERT_PROGRESS_ENV not in os.environ
    with third_party_to_log(tmp_path / "logs" / "export.log", verbose=True):
        assert progress.config.show_progress is True  # --verbose: the converter's own lines
