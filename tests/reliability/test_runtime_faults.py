"""The runtime fails under a running MCP server: killed in the middle of a generation, too
slow, answering garbage, resetting connections. Every MCP and REST call ends with a clear error
within the configured timeout, the server keeps serving, and once the runtime is healthy again
the next call succeeds on the same server process, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp import Client

from scripts.proxy import FaultProxy, fault_proxy
from scripts.servers import ServerProcess, free_port, start_mcp_server, start_runtime
from tests.helpers import LONG, SMALL

TIMEOUT = 20.0
FAST_TIMEOUT = 3.0


class RestartableRuntime:
    """The real runtime on one fixed port, so it can die and come back at the same address."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.incarnations = 0
        self._stack = contextlib.ExitStack()
        self.server: ServerProcess | None = None

    def start(self) -> ServerProcess:
        self.incarnations += 1
        log_dir = self.log_dir / f"incarnation-{self.incarnations}"
        log_dir.mkdir()
        self.server = self._stack.enter_context(start_runtime(log_dir, port=self.port))
        return self.server

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def restartable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableRuntime]:
    runtime = RestartableRuntime(tmp_path_factory.mktemp("restartable"))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def server(
    restartable: RestartableRuntime, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("faults"),
        DIFFUSERS_RUNTIME_URL=restartable.url,
        GENERATION_TIMEOUT_SECONDS=str(TIMEOUT),
        RUNTIME_CONNECT_TIMEOUT_SECONDS="2",
    ) as mcp:
        yield mcp


def rest_generate(url: str, **fields: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{url}/v1/images/generations",
        json={"prompt": "a lighthouse", "response_format": "b64_json", **fields},
        timeout=TIMEOUT + 30,
    )
    return response, time.monotonic() - started


def runtime_state(url: str) -> dict:
    """The one runtime as the server's /health?details=true reports it."""
    details = httpx.get(f"{url}/health", params={"details": "true"}, timeout=10).json()
    (state,) = details["runtimes"]
    return state


async def mcp_generate(url: str, arguments: dict, on_progress=None):
    async with Client(f"{url}/mcp") as client:
        # The client checks structuredContent against the tool's outputSchema; listing first
        # means it needs no second request after the result (the server may be draining).
        await client.list_tools()
        return await client.call_tool(
            "generate_image", {"prompt": "a lighthouse", **arguments}, progress_callback=on_progress
        )


def test_runtime_killed_mid_generation_then_back(
    server: ServerProcess, restartable: RestartableRuntime
) -> None:
    rest_answer: dict[str, object] = {}

    def rest_call() -> None:
        response, elapsed = rest_generate(server.url, size="256x256", num_inference_steps=100)
        rest_answer.update(response=response, done=time.monotonic(), elapsed=elapsed)

    async def scenario():
        stepping = asyncio.Event()

        async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
            if done >= 2:
                stepping.set()

        call = asyncio.create_task(mcp_generate(server.url, LONG, on_progress))
        await asyncio.wait_for(stepping.wait(), 60)
        # The REST call queues in the runtime behind the MCP one.
        rest = threading.Thread(target=rest_call)
        rest.start()
        await asyncio.sleep(0.5)
        # Both calls are now inside the runtime; kill it as the OOM killer would.
        assert restartable.server is not None
        killed_at = time.monotonic()
        restartable.server.stop(signal.SIGKILL)
        result = await call
        mcp_seconds = time.monotonic() - killed_at
        await asyncio.to_thread(rest.join, TIMEOUT + 30)
        return result, mcp_seconds, rest_answer["done"] - killed_at

    result, mcp_seconds, rest_seconds = asyncio.run(scenario())
    print(f"runtime killed: MCP answered {mcp_seconds:.2f} s, REST {rest_seconds:.2f} s later")
    assert mcp_seconds < TIMEOUT and rest_seconds < TIMEOUT
    assert result.is_error
    message = result.content[0].text
    assert "unavailable" in message and restartable.url in message, message
    response = rest_answer["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 503, response.text
    assert "unavailable" in response.json()["error"]["message"]
    assert restartable.url in response.json()["error"]["message"]

    # The server keeps serving and stays ready; while the runtime is down it says so at once.
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200
    down_state = runtime_state(server.url)
    assert down_state["ready"] is False and "refused the connection" in down_state["error"]
    down = asyncio.run(mcp_generate(server.url, SMALL))
    assert down.is_error and "refused the connection" in down.content[0].text

    restartable.start()
    pid = server.process.pid
    back = asyncio.run(mcp_generate(server.url, SMALL))
    assert not back.is_error, back.content
    response, _ = rest_generate(server.url, size="64x64", num_inference_steps=4)
    assert response.status_code == 200, response.text
    assert server.process.pid == pid and server.process.poll() is None
    assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200
    assert runtime_state(server.url)["ready"] is True


@pytest.fixture(scope="module")
def proxy(small_runtime: ServerProcess) -> Iterator[FaultProxy]:
    with fault_proxy(int(small_runtime.url.rsplit(":", 1)[1])) as faulty:
        yield faulty


@pytest.fixture(scope="module")
def proxied(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_mcp_server(
        tmp_path_factory.mktemp("proxied"),
        DIFFUSERS_RUNTIME_URL=proxy.url,
        GENERATION_TIMEOUT_SECONDS=str(FAST_TIMEOUT),
        RUNTIME_CONNECT_TIMEOUT_SECONDS="1",
    ) as mcp:
        yield mcp


FAULTS = [
    ("hang", (f"did not answer within {FAST_TIMEOUT:g} s",), (504,)),
    ("garbage", ("unexpected answer",), (502,)),
    ("sse_garbage", ("unexpected answer",), (502,)),
    # A reset at accept looks like a closed port; on a pooled connection, like a dead runtime.
    ("reset", ("refused the connection", "became unavailable"), (502, 503)),
]


@pytest.mark.parametrize(("mode", "expected", "statuses"), FAULTS)
def test_faulty_runtime_gives_a_clear_error_then_recovers(
    proxied: ServerProcess,
    proxy: FaultProxy,
    mode: str,
    expected: tuple[str, ...],
    statuses: tuple[int, ...],
) -> None:
    proxy.set_mode(mode)  # type: ignore[arg-type]
    try:
        started = time.monotonic()
        result = asyncio.run(mcp_generate(proxied.url, SMALL))
        mcp_seconds = time.monotonic() - started
        response, rest_seconds = rest_generate(proxied.url, size="64x64", num_inference_steps=2)
    finally:
        proxy.set_mode("pass")
    # Within the configured timeout (plus the connection setup and the client's own work).
    assert mcp_seconds < FAST_TIMEOUT + 3 and rest_seconds < FAST_TIMEOUT + 3
    text = result.content[0].text
    assert result.is_error and any(e in text for e in expected), text
    assert proxy.url in text
    assert response.status_code in statuses, response.text
    assert any(e in response.json()["error"]["message"] for e in expected), response.text
    assert httpx.get(f"{proxied.url}/health", timeout=5).status_code == 200

    healthy = asyncio.run(mcp_generate(proxied.url, SMALL))
    assert not healthy.is_error, healthy.content
    response, _ = rest_generate(proxied.url, size="64x64", num_inference_steps=2)
    assert response.status_code == 200, response.text


# --- SIGTERM during a generation: drain, finish what is in flight, exit 0 -------------------

MEDIUM = {"width": 128, "height": 128, "num_inference_steps": 30}


def _generate_while(signal_target, url: str) -> tuple[object, httpx.Response, float]:
    """An MCP and a REST generation in flight through URL; SIGTERM to SIGNAL_TARGET once both
    are running. Returns both answers and how long after SIGTERM the process exited."""
    rest_answer: dict[str, httpx.Response] = {}

    def rest_call() -> None:
        rest_answer["response"], _ = rest_generate(url, size="128x128", num_inference_steps=30)

    async def scenario():
        stepping = asyncio.Event()

        async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
            stepping.set()

        call = asyncio.create_task(mcp_generate(url, MEDIUM, on_progress))
        await asyncio.wait_for(stepping.wait(), 60)
        rest = threading.Thread(target=rest_call)
        rest.start()
        await asyncio.sleep(0.5)
        signal_target.process.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        await asyncio.sleep(0.5)
        # Draining: the listening socket is closed, new work is refused at once.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{signal_target.url}/", timeout=2)
        result = await call
        await asyncio.to_thread(rest.join, 120)
        await asyncio.to_thread(signal_target.process.wait, 120)
        return result, time.monotonic() - terminated

    result, exit_seconds = asyncio.run(scenario())
    return result, rest_answer["response"], exit_seconds


def test_sigterm_to_the_server_finishes_in_flight_generations_and_exits_0(
    restartable: RestartableRuntime, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mcp_server.__main__ import SHUTDOWN_GRACE_SECONDS

    with start_mcp_server(
        tmp_path_factory.mktemp("sigterm-server"), DIFFUSERS_RUNTIME_URL=restartable.url
    ) as mcp:
        result, response, exit_seconds = _generate_while(mcp, mcp.url)
        assert not result.is_error, result.content
        assert response.status_code == 200, response.text
        assert mcp.process.returncode == 0, mcp.log()[-2000:]
        print(f"server SIGTERM: both calls completed, exit 0 after {exit_seconds:.1f} s")
        assert exit_seconds < SHUTDOWN_GRACE_SECONDS


def test_sigterm_to_the_runtime_finishes_in_flight_generations_and_exits_0(
    server: ServerProcess, restartable: RestartableRuntime
) -> None:
    """Last in this module: the runtime stays down afterwards."""
    assert restartable.server is not None
    result, response, exit_seconds = _generate_while(restartable.server, server.url)
    assert not result.is_error, result.content
    assert response.status_code == 200, response.text
    assert restartable.server.process.returncode == 0, restartable.server.log()[-2000:]
    print(f"runtime SIGTERM: both calls completed, exit 0 after {exit_seconds:.1f} s")
    # SHUTDOWN_GRACE_SECONDS, the runtime's drain bound, is 30 s by default.
    assert exit_seconds < 30
    # The server now reports the runtime gone, and still serves.
    down = asyncio.run(mcp_generate(server.url, SMALL))
    assert down.is_error and "refused the connection" in down.content[0].text
