"""Bounded multi-process runs for the distributed tests: a free loopback port, and
``torch.multiprocessing`` ranks that are terminated when they run past a deadline."""

from __future__ import annotations

import socket
import time

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_gloo() -> None:
    """Skip unless ``torch.distributed`` with the gloo backend is available."""
    torch_dist = pytest.importorskip("torch.distributed")
    if not (torch_dist.is_available() and torch_dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")


def spawn(worker, args: tuple, nprocs: int, timeout: float) -> None:
    """Run ``worker(rank, *args)`` on ``nprocs`` spawned processes; fail (and terminate
    them) if they have not all finished after ``timeout`` seconds."""
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f"{nprocs} ranks did not finish within {timeout} s")
