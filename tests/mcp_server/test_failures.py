"""A stopped, a slow, an unresolvable runtime and a URL pointing at another service each give
a clear error in time, and a full queue gives a busy error; the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from mcp import Client

from scripts.servers import ServerProcess, start_mcp_server
from tests.helpers import SMALL
from tests.mcp_server.conftest import LateRuntime

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A TCP server that accepts connections and never answers: a hung runtime."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    listener.close()


class NotARuntime(BaseHTTPRequestHandler):
    """Some other web service answering 200 with HTML: a DIFFUSERS_RUNTIME_URL typo."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def other_service_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotARuntime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def failing(
    silent_port: int,
    other_service_port: int,
    late_runtime: LateRuntime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    runtimes = [
        {"name": "stopped", "url": late_runtime.url},
        {"name": "wrong", "url": f"http://127.0.0.1:{other_service_port}"},
        {"name": "slow", "url": f"http://127.0.0.1:{silent_port}"},
        {"name": "nodns", "url": "http://no-such-runtime.invalid:8080"},
    ]
    with start_mcp_server(
        tmp_path_factory.mktemp("failing"),
        DIFFUSERS_RUNTIMES=json.dumps(runtimes),
        GENERATION_TIMEOUT_SECONDS=str(TIMEOUT),
        RUNTIME_CONNECT_TIMEOUT_SECONDS="1",
        MAX_CONCURRENT_PER_RUNTIME="1",
        MAX_QUEUE_PER_RUNTIME="0",
    ) as server:
        yield server


CASES = [
    ("stopped", "refused the connection"),
    ("slow", f"did not answer within {TIMEOUT:g} s"),
    ("nodns", "does not resolve"),
    ("wrong", "unexpected answer"),
]


@pytest.mark.parametrize(("model", "expected"), CASES)
def test_rest_error_names_the_runtime_and_what_failed(
    failing: ServerProcess, model: str, expected: str
) -> None:
    started = time.monotonic()
    response = httpx.post(
        f"{failing.url}/v1/images/generations",
        json={"prompt": "x", "model": model, "size": "64x64"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 3
    assert response.status_code in (502, 504)
    message = response.json()["error"]["message"]
    assert expected in message
    assert "check" in message
    if model != "nodns":
        assert "http://127.0.0.1:" in message
    else:
        assert "no-such-runtime.invalid" in message


@pytest.mark.parametrize(("model", "expected"), CASES)
def test_mcp_error_is_a_tool_error_in_time(
    failing: ServerProcess, model: str, expected: str
) -> None:
    async def scenario():
        async with Client(f"{failing.url}/mcp") as client:
            started = time.monotonic()
            result = await client.call_tool(
                "generate_image", {"prompt": "x", **SMALL, "model": model}
            )
            return result, time.monotonic() - started

    result, elapsed = asyncio.run(scenario())
    assert result.is_error
    assert expected in result.content[0].text
    assert elapsed < TIMEOUT + 3


def test_health_details_report_each_runtime_and_the_server_stays_ready(
    failing: ServerProcess,
) -> None:
    """Runtime outages show in /health?details=true; /ready stays 200 so that the Service
    keeps routing to this server and users get its message naming the runtime, not the
    router's bare 503."""
    details = httpx.get(f"{failing.url}/health", params={"details": "true"}, timeout=30)
    assert details.status_code == 200
    assert details.json()["ready"] is False
    states = {entry["model"]: entry for entry in details.json()["runtimes"]}
    assert set(states) == {"stopped", "slow", "nodns", "wrong"}
    assert not any(state["ready"] for state in states.values())
    assert "does not resolve" in states["nodns"]["error"]
    assert httpx.get(f"{failing.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{failing.url}/ready", timeout=30).status_code == 200


def test_a_full_queue_answers_busy_with_retry_after(failing: ServerProcess) -> None:
    """One slot, no queue: while the slow runtime holds the slot, the next call is refused."""

    def post() -> httpx.Response:
        return httpx.post(
            f"{failing.url}/v1/images/generations",
            json={"prompt": "x", "model": "slow", "size": "64x64"},
            timeout=30,
        )

    holder = threading.Thread(target=post)
    holder.start()
    time.sleep(0.5)
    busy = post()
    holder.join()
    assert busy.status_code == 429
    assert int(busy.headers["retry-after"]) > 0
    assert "busy" in busy.json()["error"]["message"]
