"""The runtime's routes beside KServe's own: the progress stream and the capabilities."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from kserve.errors import ModelNotFound, ModelNotReady

from .errors import RuntimeFailure, error_body
from .logs import request_id
from .model import DiffusersModel


def sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The stream may be gone when the task ends; read its outcome so asyncio does not log it.
    if not task.cancelled():
        task.exception()


def register_routes(app: FastAPI, model: DiffusersModel) -> None:
    def served(model_name: str) -> DiffusersModel:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        if not model.ready:
            raise ModelNotReady(model_name)
        return model

    @app.get("/v1/models/{model_name}/capabilities", tags=["diffusers"])
    async def capabilities(model_name: str) -> dict[str, Any]:
        """Limits, defaults, schedulers and formats this runtime accepts."""
        return served(model_name).capabilities()

    @app.post("/v1/models/{model_name}:generate", tags=["diffusers"])
    async def generate(model_name: str, request: Request) -> StreamingResponse:
        """One instance in; `progress` events per denoising step, then `result` or `error`.

        Closing the connection cancels the generation within one step.
        """
        served(model_name)
        request_id.set(request.headers.get("x-request-id") or uuid.uuid4().hex[:16])
        (generation,) = model.parse_v1(await request.body(), exactly_one=True)
        events: asyncio.Queue[tuple[str, object]] = asyncio.Queue()

        def on_progress(step: int, total: int) -> None:
            events.put_nowait(("progress", {"step": step, "total": total}))

        async def stream() -> AsyncIterator[bytes]:
            task = asyncio.create_task(model.run(generation, "generate", on_progress))
            task.add_done_callback(_retrieve)
            task.add_done_callback(lambda _: events.put_nowait(("done", None)))
            try:
                while (item := await events.get())[0] == "progress":
                    yield sse(*item)
                try:
                    # `image` repeats images[0] for the original runtime's :predict clients;
                    # this route is new, so its result carries each image once.
                    result = {k: v for k, v in task.result().items() if k != "image"}
                    yield sse("result", result)
                except RuntimeFailure as exc:
                    yield sse("error", error_body(exc))
            finally:
                # Runs when the client hangs up too: cancelling the task stops the denoising.
                task.cancel()

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
