"""Stopping the child processes recloop starts (Airflow components, the BentoML service)."""

from __future__ import annotations

import contextlib
import signal
import subprocess


def stop_tree(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process and everything under it, then SIGKILL what is left after
    ``timeout``. Children are found by ancestry, not process group: BentoML's and Airflow's
    workers may start sessions of their own."""
    import psutil

    if process.poll() is not None:
        return
    try:
        root = psutil.Process(process.pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=timeout)
    process.wait(timeout=timeout)
