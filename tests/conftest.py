"""Test-session setup: NNCF's kernels where a pipeline run builds them, and cores shared between workers."""

import os

from distill.cpu_sharing import share_cores_gracefully

# before torch loads here or in the xdist workers (they inherit it): a worker that trains at 2 threads
# beside the other worker shares the 2 cores instead of spinning through its time slices
share_cores_gracefully()

import pytest  # noqa: E402

from compress.nncf_extension import configure_environment  # noqa: E402

configure_environment()


def _share_cores_between_xdist_workers() -> None:
    """Under pytest-xdist, each worker gets its share of the cores: no oversubscribed spinning threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # for the subprocesses tests start
        import torch

        torch.set_num_threads(threads)


_share_cores_between_xdist_workers()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session) -> None:
    """Build (or load) NNCF's CPU kernels once, in the process that starts the workers, before any test.

    Tests that call NNCF directly would otherwise build through torch's own lock only, and two workers could
    meet in one build folder (ensure_nncf_kernels serialises only its own callers).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a worker: the controller has built them
    try:
        import nncf  # noqa: F401
    except ImportError:
        return  # tests that need NNCF skip themselves
    from compress.nncf_extension import ensure_nncf_kernels

    seconds = ensure_nncf_kernels(log=lambda line: print(line.replace("[qat]", "[tests]"), flush=True))
    if seconds > 5:
        print(f"[tests] NNCF's C++ kernels ready in {seconds:.0f} s", flush=True)
