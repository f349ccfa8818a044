"""Start and stop a real ``python -m visual_search.service serve`` on 127.0.0.1 for tests.

Bounded everywhere: start-up waits at most ``timeout`` seconds for /health, and
stopping sends SIGTERM, waits, then SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from visual_search import config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: urllib without any proxy from the environment: the server is on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get_json(url: str, timeout: float = 5.0) -> dict:
    with OPENER.open(url, timeout=timeout) as r:
        return json.loads(r.read())


def start_server(data_dir: Path, gallery: str = "sample", timeout: float = 120.0, extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start the service; returns ``(process, base_url)`` once /health answers ok."""
    port = free_port()
    Path(data_dir).parent.mkdir(parents=True, exist_ok=True)
    log = open(Path(data_dir).parent / f"server-{port}.log", "w")  # a file, not a pipe: a pipe nobody reads fills up and blocks the server
    cmd = [sys.executable, "-m", "visual_search.service", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir), "--gallery", gallery, "--log-level", "warning", *(extra or [])]
    env = {**os.environ, "PYTHONPATH": str(config.REPO_ROOT / "lib")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log.name  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()[-3000:]}")
        try:
            if get_json(base + "/health", timeout=2)["status"] == "ok":
                return proc, base
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server not healthy after {timeout} s:\n{Path(log.name).read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM (a clean shutdown saves the index), then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
