"""`python -m mcp_server [--transport http|stdio]`: MCP + REST over HTTP, or MCP over stdio."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from types import FrameType

from mcp_server import logs
from mcp_server.settings import Settings, load_settings_or_exit

log = logging.getLogger("mcp_server")

# In-flight generations get this long to finish after SIGTERM: below the pod's
# terminationGracePeriodSeconds (60) so the kubelet never has to SIGKILL us mid-answer.
SHUTDOWN_GRACE_SECONDS = 50


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    # uvicorn drains, then re-raises SIGTERM with the handler it found: with the default one
    # the process would die by the signal (exit code 143) after a clean shutdown.
    raise SystemExit(0)


async def serve_stdio(settings: Settings) -> None:
    from mcp_server.app import build_components

    components = build_components(settings)
    try:
        # The store check, then discovery's first list, as the HTTP app's lifespan does.
        await components.start()
        await components.mcp.run_stdio_async()
    finally:
        await components.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcp_server", description=__doc__)
    parser.add_argument(
        "--transport",
        choices=("http", "stdio"),
        default="http",
        help="http: MCP at /mcp plus the REST API on HOST:PORT; stdio: MCP over stdin/stdout",
    )
    args = parser.parse_args(argv)
    settings = load_settings_or_exit()
    logs.configure(settings.log_level, settings.log_format)
    if args.transport == "stdio":
        # Image URLs need an HTTP server; over stdio, images are read through resources
        # unless PUBLIC_URL points at an HTTP replica sharing the store.
        asyncio.run(serve_stdio(settings))
        return

    import uvicorn

    from mcp_server.app import create_app

    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # The app logs every request itself, with its request id.
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        proxy_headers=True,
        forwarded_allow_ips="*",
    )


if __name__ == "__main__":
    main()
