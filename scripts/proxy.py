"""A loopback TCP proxy that injects faults between the MCP server and what it talks to (the
runtime, the S3 store): pass traffic through, hang, answer garbage, or refuse. Given several
upstreams it spreads connections over them round-robin, as a Kubernetes Service spreads them
over its pods (per connection; a dead upstream's connections are closed unanswered)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Literal

Mode = Literal["pass", "hang", "garbage", "sse_garbage", "reset"]

# What a broken upstream might send: a 200 whose body is not what the client expects.
GARBAGE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n"
    b"Connection: close\r\n\r\n" + bytes(range(192, 256))
)
SSE_GARBAGE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    b'event: progress\ndata: {"step": 1, "total": 2}\n\n'
    b"event: result\ndata: {this is not json\n\n"
)


class FaultProxy:
    """Listens on 127.0.0.1:<port>; each new connection is handled by the current mode.
    Switching modes closes the connections already open, so pooled keep-alive connections of
    the client cannot bypass the new fault."""

    def __init__(self, *upstream_ports: int) -> None:
        self.upstream_ports = upstream_ports
        self.mode: Mode = "pass"
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_upstreams(self, *ports: int) -> None:
        """What kube-proxy does when a pod leaves the Service's endpoints: new connections go
        to the others only."""
        self.upstream_ports = ports

    def set_mode(self, mode: Mode) -> None:
        async def switch() -> None:
            self.mode = mode
            for writer in list(self._writers):
                writer.close()

        asyncio.run_coroutine_threadsafe(switch(), self._loop).result(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        mode = self.mode
        try:
            if mode == "reset":
                # SO_LINGER 0: the close sends a TCP reset, as a crashing peer would.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif mode == "hang":
                while await reader.read(65536):
                    pass
            elif mode in ("garbage", "sse_garbage"):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(GARBAGE if mode == "garbage" else SSE_GARBAGE)
                await writer.drain()
            else:
                await self._pipe_to_upstream(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _pipe_to_upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        port = self.upstream_ports[self.connections % len(self.upstream_ports)]
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers.add(up_writer)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        finally:
            self._writers.discard(up_writer)
            up_writer.close()

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def fault_proxy(*upstream_ports: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(*upstream_ports)
    proxy._thread.start()
    proxy._ready.wait(10)
    try:
        yield proxy
    finally:
        proxy.close()
