"""`python -m diffusers_runtime`: KServe's flags plus ours -> settings -> ModelServer."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

from . import logs
from .settings import load_settings

if TYPE_CHECKING:
    from kserve import ModelServer

    from .engine import Engine


async def _drain_on_sigterm(engine: Engine, grace_seconds: float) -> None:
    """A startup hook: it runs once uvicorn has installed its SIGTERM handler, and puts ours in
    front of it, which tells the engine: it then starts only what can finish within
    SHUTDOWN_GRACE_SECONDS and hands the rest back, while uvicorn drains as before."""
    loop = asyncio.get_running_loop()
    uvicorn_exit = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A handler can interrupt the event loop anywhere: the engine is told on the loop.
        loop.call_soon_threadsafe(engine.drain, grace_seconds)
        if callable(uvicorn_exit):
            uvicorn_exit(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


async def _listen_on(server: ModelServer, host: str) -> None:
    """A startup hook: uvicorn runs the app's startup before it binds, so the address KServe
    hard-codes can still be replaced."""
    server._rest_server.config.host = host


def main() -> None:
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    # Imported once logging is configured: importing diffusers' pipelines already logs.
    import diffusers
    import transformers
    from kserve import ModelServer, model_server

    from wire.logs import RequestIdMiddleware

    from .errors import install_handlers
    from .model import DiffusersModel
    from .openai_api import register_openai_routes
    from .openapi import publish
    from .routes import refuse_not_offered, register_routes

    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        description="Serve a diffusers pipeline with KServe. Configuration: environment "
        "variables (see docs/runtime.md); KServe's own flags work as usual.",
    )
    # --model_name beats MODEL_NAME, which beats KServe's default.
    parser.set_defaults(model_name=settings.model_name)
    args, _ = parser.parse_known_args()
    # Progress bars are for terminals; in a pod they are noise between the JSON lines.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger(__name__).info("starting with settings %s", settings.model_dump())

    model = DiffusersModel(args.model_name, settings)
    model.load()
    install_handlers(model_server.app)
    model_server.app.add_middleware(RequestIdMiddleware)
    refuse_not_offered(model_server.app)
    register_routes(model_server.app, model)
    register_openai_routes(model_server.app, model)
    model_server.app.openapi = publish(model_server.app.openapi, model.serving().capabilities)
    grace = settings.shutdown_grace_seconds
    model_server.app.router.on_startup.append(
        functools.partial(_drain_on_sigterm, model.serving().engine, grace)
    )
    server = ModelServer(grace_period=grace)
    model_server.app.router.on_startup.append(functools.partial(_listen_on, server, settings.host))
    server.start([model])


if __name__ == "__main__":
    main()
