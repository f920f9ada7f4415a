"""The runtime's routes beside KServe's own: the progress stream and the capabilities; and
which of KServe's own it does not offer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import ModelNotFound, ModelNotReady

from wire.fields import MAX_LORA_SCALE, MIN_LORA_SCALE
from wire.sse import SSE_HEADERS, sse

from .errors import error_body
from .model import DiffusersModel
from .request import BACKGROUND, Generation
from .stream import Event, Failure, Partial, Progress, events

# KServe's routes that a runtime of one pipeline, loaded once at start, does not offer: the
# model repository's load and unload (unauthenticated, an unload left the runtime live without
# its model until a restart, and there is no repository to load another from), :explain
# (no explainer) and model versions (KServe answers 501 to any). Path templates as KServe
# registers them.
NOT_OFFERED = (
    "/v2/repository/models/{model_name}/load",
    "/v2/repository/models/{model_name}/unload",
    "/v2/repository/index",
    "/v1/models/{model_name}:explain",
    "/v2/models/{model_name}/versions/{model_version}/ready",
)
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
NOT_POST = [method for method in ALL_METHODS if method != "POST"]
# Their other methods would reach KServe's GET /v1/models/{model_name}, with the model name
# "model:predict": a 404 where a 405 is due.
POST_ONLY = ("/v1/models/{model_name}:predict", "/v1/models/{model_name}:generate")
NOT_OFFERED_MESSAGE = (
    "{path} is not offered by this runtime: it serves one diffusers pipeline, loaded at start "
    "(MODEL_ID) and never unloaded; restart the pod to load another model"
)


def generate_event(event: Event, generation: Generation) -> bytes:
    """One event of the `:generate` stream."""
    if isinstance(event, Progress):
        return sse("progress", {"step": event.step, "total": event.total})
    if isinstance(event, Partial):
        return sse(
            "partial_image",
            {
                "image_index": event.image_index,
                "partial_image_index": event.partial_image_index,
                "width": generation.width,
                "height": generation.height,
                "quality": generation.quality,
                "background": BACKGROUND,
                "image": event.image,
            },
        )
    if isinstance(event, Failure):
        return sse("error", error_body(event.error))
    return sse("result", event.prediction)


def refuse_not_offered(app: FastAPI) -> None:
    """404 for NOT_OFFERED, 405 for POST_ONLY's other methods, and an OpenAPI document
    without NOT_OFFERED. Registered before KServe adds its own routes (when its server
    starts), so these answer first."""

    async def not_offered(request: Request) -> JSONResponse:
        message = NOT_OFFERED_MESSAGE.format(path=request.url.path)
        return JSONResponse(status_code=404, content={"error": message})

    async def post_only(request: Request) -> JSONResponse:
        message = f"{request.method} {request.url.path} is not served: send POST with a JSON body"
        return JSONResponse(status_code=405, content={"error": message}, headers={"Allow": "POST"})

    for path in NOT_OFFERED:
        # Every method: a 405 would name KServe's POST as allowed.
        app.add_api_route(path, not_offered, methods=ALL_METHODS, include_in_schema=False)
    for path in POST_ONLY:
        app.add_api_route(path, post_only, methods=NOT_POST, include_in_schema=False)
    document = app.openapi

    def without_not_offered() -> dict[str, Any]:
        schema = document()
        for path in NOT_OFFERED:
            schema["paths"].pop(path, None)
        return schema

    app.openapi = without_not_offered  # type: ignore[method-assign]


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
        return served(model_name).serving().capabilities()

    @app.get("/v1/models/{model_name}/adapters", tags=["diffusers"])
    async def adapters(model_name: str) -> dict[str, Any]:
        """The LoRA adapters in LORA_DIR now, each with its description; pass them in a
        request's `loras`."""
        generator = served(model_name).serving()
        return {
            "adapters": generator.adapters.describe(),
            "max_loras_per_request": generator.limits.max_loras_per_request,
            "scale_range": [MIN_LORA_SCALE, MAX_LORA_SCALE],
        }

    @app.post("/v1/models/{model_name}:generate", tags=["diffusers"])
    async def generate(model_name: str, request: Request) -> StreamingResponse:
        """One instance in; `progress` events per denoising step (and `partial_image` events
        when it asks for partial_images), then `result` or `error`.

        Closing the connection cancels the generation within one step.
        """
        served(model_name)
        (generation,) = model.parse_v1(await request.body(), exactly_one=True)

        async def stream() -> AsyncIterator[bytes]:
            async for event in events(model.serving(), generation, "generate"):
                yield generate_event(event, generation)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)
