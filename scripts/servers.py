"""Starting, waiting for and stopping the service's processes on loopback: the one module
`make run` (scripts/local_stack.py), `make bench` and the tests use. A process's output goes to
a log file, or (the local stack) to the terminal, each line prefixed with its name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


DEFAULT_MODEL = REPO / "models" / "default"


def tiny_model_dir() -> Path:
    """The tiny model `make test` builds; built here when a test runs outside make."""
    path = Path(os.environ.get("TINY_MODEL_DIR", REPO / ".cache" / "tiny-sd"))
    if not (path / "model_index.json").exists():
        subprocess.run([sys.executable, "-m", "diffusers_runtime.tiny", str(path)], check=True)
    return path


class ServerError(RuntimeError):
    """A server exited, or was not ready in time; the message says which and shows its log."""


class Interrupted(Exception):
    """The wait for a server was given up (the local stack's Ctrl-C)."""


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    # None: the output goes to the terminal (spawn's RELAY_AS).
    log_path: Path | None
    name: str = "server"

    def log(self) -> str:
        if self.log_path is None:
            return "(its output is above)"
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


def spawn(
    args: list[str],
    env: dict[str, str],
    *,
    log_path: Path | None = None,
    relay_as: str = "",
) -> subprocess.Popen[bytes]:
    """`python ARGS` in the repository with ENV added; its output into LOG_PATH, or relayed
    to the terminal with each line prefixed `[RELAY_AS]`."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    if log_path is not None:
        with open(log_path, "wb") as log:
            return subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Own process group: the terminal's Ctrl-C reaches only the parent, which stops the
        # children in order instead of racing them.
        start_new_session=True,
    )
    threading.Thread(target=_relay, args=(relay_as, process), daemon=True).start()
    return process


def _relay(name: str, process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    for line in iter(process.stdout.readline, b""):
        sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
        sys.stdout.flush()


def wait_until_ready(
    server: ServerProcess,
    path: str,
    timeout: float,
    poll: float = 0.2,
    stopping: threading.Event | None = None,
) -> None:
    """Until PATH answers 200; ServerError when the process exits or TIMEOUT passes (the
    process is then stopped), Interrupted when STOPPING is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping is not None and stopping.is_set():
            raise Interrupted
        if server.process.poll() is not None:
            raise ServerError(
                f"the {server.name} exited with code {server.process.returncode}:\n{server.log()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
                return
        time.sleep(poll)
    server.stop()
    raise ServerError(
        f"the {server.name} was not ready at {server.url}{path} after {timeout} s:\n{server.log()}"
    )


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples of one Prometheus metric whose labels include LABELS (all of
    them when none are given); 0 when there is none."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def runtime_args(port: int) -> list[str]:
    """The runtime's command line on PORT (KServe's REST server; no gRPC)."""
    return ["-m", "diffusers_runtime", "--http_port", str(port), "--enable_grpc", "false"]


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
    process = spawn(args, env or {}, log_path=log_path)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path, args[1])
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
        runtime_args(port),
        port=port,
        ready_path="/v1/models/model",
        # JSON, as in the pods; tests/runtime/test_logs.py checks the terminal's text format.
        env={
            "MODEL_ID": str(tiny_model_dir()),
            "MODEL_NAME": "model",
            "LOG_FORMAT": "json",
            "HOST": "127.0.0.1",
            **env,
        },
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
