"""A throw-away OpenSSH server on 127.0.0.1 for tests: fresh host key, fresh client key, free port.

The server runs as the current user (root in CI) with key authentication only, from files in a temp
folder; ``known_hosts`` holds its real host key and ``wrong_known_hosts`` another key for the same
address, so tests can check that host-key checking refuses a mismatch.

    with start_sshd(tmp_path) as server:
        SshRunner("dev", server.target, SshOptions(key=server.client_key, known_hosts=server.known_hosts))
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    wrong_known_hosts: Path
    log: Path
    process: subprocess.Popen

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def sshd_missing_reason() -> str | None:
    """Why an sshd test cannot run here, or None."""
    if not SSHD.is_file():
        return f"{SSHD} is not installed (apt-get install -y openssh-server)"
    for tool in ("ssh", "scp", "ssh-keygen"):
        if not any((Path(d) / tool).is_file() for d in os.environ.get("PATH", "").split(os.pathsep)):
            return f"'{tool}' is not on PATH"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()


def _wait_for_banner(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


@contextlib.contextmanager
def start_sshd(folder: Path, attempts: int = 3) -> Iterator[SshServer]:
    """Start sshd in ``folder``; stop it (its whole process group) on exit."""
    reason = sshd_missing_reason()
    if reason:
        raise RuntimeError(reason)
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "host_ed25519"
    host_pub = _keygen(host_key, "facekd-test-host")
    other_pub = _keygen(folder / "other_host_ed25519", "facekd-test-other-host")
    client_key = folder / "client_ed25519"
    (folder / "authorized_keys").write_text(_keygen(client_key, "facekd-test-client") + "\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation dir
    user = getpass.getuser()
    last_log = ""
    for _ in range(attempts):
        port = free_port()
        config = folder / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
                    "",
                ]
            )
        )
        log = folder / f"sshd-{port}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if _wait_for_banner(port, proc, timeout=10):
            break
        _stop(proc)
        last_log = log.read_text(errors="replace")
    else:
        raise RuntimeError(f"sshd did not start after {attempts} attempts:\n{last_log[-2000:]}")
    key_type, key_b64 = host_pub.split()[:2]
    other_type, other_b64 = other_pub.split()[:2]
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    wrong = folder / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} {other_type} {other_b64}\n")
    server = SshServer("127.0.0.1", port, user, client_key, known, wrong, log, proc)
    try:
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group created for this sshd only
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
