"""Starting and stopping real server processes for tests: loopback only, free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DEFAULT_MODEL = REPO / "models" / "default"


def tiny_model_dir() -> Path:
    """The tiny model `make test` builds; built here when a test runs outside make."""
    path = Path(os.environ.get("TINY_MODEL_DIR", REPO / ".cache" / "tiny-sd"))
    if not (path / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "diffusers_runtime.tiny", str(path)], check=True)
    return path


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def wait_until_ready(server: ServerProcess, path: str, timeout: float, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(poll)
    server.stop()
    raise RuntimeError(f"server not ready at {server.url}{path} after {timeout}s:\n{server.log()}")


@contextlib.contextmanager
def run_server(
    args: list[str],
    *,
    port: int,
    ready_path: str,
    env: dict[str, str] | None = None,
    log_path: Path,
    timeout: float = 120,
    poll: float = 0.2,
) -> Iterator[ServerProcess]:
    """Run `python ARGS` with ENV added, wait for READY_PATH to answer 200, stop it after."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_ready(server, ready_path, timeout, poll)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def start_runtime(
    log_dir: Path, poll: float = 0.2, port: int | None = None, **env: str
) -> Iterator[ServerProcess]:
    """The diffusers runtime on the tiny model, as a real process on a loopback port (a free
    one unless PORT is given: a runtime that must come back at the same address).

    ENV adds runtime settings (e.g. MAX_BATCH_SIZE="1"); the model is named `model`.
    """
    port = port or free_port()
    with run_server(
        ["-m", "diffusers_runtime", "--http_port", str(port), "--enable_grpc", "false"],
        port=port,
        ready_path="/v1/models/model",
        # JSON, as in the pods; tests/runtime/test_logs.py checks the terminal's text format.
        env={"MODEL_ID": str(tiny_model_dir()), "MODEL_NAME": "model", "LOG_FORMAT": "json", **env},
        log_path=log_dir / f"runtime-{port}.log",
        poll=poll,
    ) as server:
        yield server


@contextlib.contextmanager
def start_mcp_server(log_dir: Path, **env: str) -> Iterator[ServerProcess]:
    """`python -m mcp_server` on a free loopback port; ENV adds settings."""
    port = free_port()
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "IMAGE_STORE": "local",
        "IMAGE_STORE_DIR": str(log_dir / f"store-{port}"),
        "MCP_AUTH_TOKEN": "",
        "PUBLIC_URL": "",
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
        **env,
    }
    with run_server(
        ["-m", "mcp_server"],
        port=port,
        ready_path="/health",
        env=settings,
        log_path=log_dir / f"mcp-server-{port}.log",
        timeout=60,
    ) as server:
        yield server
