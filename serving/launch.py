"""Starting the service as a child process and waiting for it: what the integration tests, the
serving benchmark and the demo share."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """``/readyz``'s JSON once it answers 200. RuntimeError when the process exits first or
    ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass  # not listening yet
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode} while starting")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service was not ready within {timeout:.0f} s")
        time.sleep(0.5)
