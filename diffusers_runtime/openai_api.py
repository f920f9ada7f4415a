"""OpenAI's Images API on the runtime itself, for users who deploy only the InferenceService:
`POST /openai/v1/images/generations` (JSON), `POST /openai/v1/images/edits` (multipart), both
answered in one JSON body or, with `stream`, as OpenAI's server-sent events; and
`GET /openai/v1/models`. (KServe's own /openai routes serve language models only.)

This module adds only the protocol: OpenAI's own fields (n, size, response_format, ...) are
translated, everything else in the body is a request instance, checked by the same parse and
run by the same engine as `:predict`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile

from wire.fields import ImageCount
from wire.openai_images import (
    STYLE_REFUSED,
    image_event,
    model_entry,
    parse_size,
    progress_comment,
)
from wire.sse import SSE_HEADERS, sse

from .errors import BadRequest, RuntimeFailure, openai_error_body
from .generator import Generator
from .model import DiffusersModel
from .request import BACKGROUND, Generation, describe
from .stream import Failure, Partial, Progress, Result, events

PREFIX = "/openai/v1"


class OpenAIFields(BaseModel):
    """The fields OpenAI's Images API names its own way or that carry no generation setting."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: ImageCount = 1
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    # Accepted for compatibility: nothing is moderated here.
    moderation: Literal["auto", "low"] | None = None
    style: str | None = None
    user: str | None = None
    stream: bool = False


def instance(
    fields: dict[str, Any], model_name: str, strict: bool
) -> tuple[OpenAIFields, dict[str, Any]]:
    """OpenAI's fields checked and translated; the rest of FIELDS is the request instance."""
    try:
        openai = OpenAIFields.model_validate(fields, strict=strict)
    except ValidationError as exc:
        raise BadRequest("; ".join(describe(e, "") for e in exc.errors())) from None
    problems = []
    if openai.model is not None and openai.model != model_name:
        problems.append(
            f"model: this runtime serves {model_name!r} (GET {PREFIX}/models); pass that "
            "or leave model out"
        )
    if openai.response_format == "url":
        problems.append(
            "response_format: url needs an image store, which the runtime has not; ask for "
            "b64_json, or use the MCP server's REST API, which stores images and returns URLs"
        )
    if openai.style is not None:
        problems.append(STYLE_REFUSED)
    for name, ours in (("width", "size"), ("height", "size"), ("num_images", "n")):
        if name in fields:
            problems.append(f"{name}: OpenAI's API names it {ours}; send {ours} instead")
    sizes = {}
    try:
        if (size := parse_size(openai.size)) is not None:
            sizes = dict(zip(("width", "height"), size, strict=True))
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise BadRequest("; ".join(problems))
    rest = {k: v for k, v in fields.items() if k not in OpenAIFields.model_fields}
    return openai, {**rest, **sizes, "num_images": openai.n}


def _size(generation: Generation) -> str:
    return f"{generation.width}x{generation.height}"


def response_body(prediction: dict[str, Any], generation: Generation) -> dict[str, Any]:
    """OpenAI's ImagesResponse."""
    body = {
        "created": int(time.time()),
        "data": [{"b64_json": image["b64"]} for image in prediction["images"]],
        "background": prediction["background"],
        "output_format": generation.output_format,
        "size": _size(generation),
    }
    if generation.quality is not None:
        body["quality"] = generation.quality
    return body


async def openai_events(
    generator: Generator, generation: Generation, kind: str
) -> AsyncIterator[bytes]:
    """OpenAI's stream: KIND.partial_image events, then one KIND.completed event per image, in
    image order (KIND is image_generation or image_edit). With n > 1 the partial images of a
    step come in image order, so the k-th event with a given partial_image_index belongs to
    image k. Progress goes out as SSE comments, which clients skip and proxies see as life."""
    size, quality, output_format = _size(generation), generation.quality, generation.output_format
    async for event in events(generator, generation, "openai"):
        if isinstance(event, Progress):
            yield progress_comment(event.step, event.total)
        elif isinstance(event, Partial):
            yield image_event(
                kind,
                event.image["b64"],
                partial_image_index=event.partial_image_index,
                size=size,
                quality=quality,
                background=BACKGROUND,
                output_format=output_format,
            )
        elif isinstance(event, Failure):
            yield sse("error", openai_error_body(event.error))
        elif isinstance(event, Result):
            for image in event.prediction["images"]:
                yield image_event(
                    kind,
                    image["b64"],
                    size=size,
                    quality=quality,
                    background=BACKGROUND,
                    output_format=output_format,
                )


async def _json_fields(request: Request) -> dict[str, Any]:
    try:
        fields = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(fields, dict):
        raise BadRequest('body: expected a JSON object such as {"prompt": "..."}')
    return fields


async def _form_fields(request: Request) -> dict[str, Any]:
    """The multipart form as request fields: the image (`image`, or the first of OpenAI's
    `image[]`) and the mask as base64, the other parts as the strings they are."""
    form = await request.form()
    fields: dict[str, Any] = {}
    images: list[UploadFile] = []
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields[name] = value
        elif name in ("image", "image[]"):
            images.append(value)
        elif name == "mask":
            fields["mask_image"] = base64.b64encode(await value.read()).decode()
        else:
            raise BadRequest(
                f"{name}: unexpected file; send the image as image and the mask as mask"
            )
    if not images:
        raise BadRequest("image: required; send the image to edit as a multipart file")
    fields["image"] = base64.b64encode(await images[0].read()).decode()
    return fields


def register_openai_routes(app: FastAPI, model: DiffusersModel) -> None:
    async def serve(
        request: Request, read: Callable[[Request], Awaitable[dict[str, Any]]], kind: str
    ) -> Response:
        # Form fields are strings: numbers are read from them, as pydantic's lax mode does.
        strict = kind == "image_generation"
        try:
            openai, raw = instance(await read(request), model.name, strict)
            generator = model.serving()
            generation = generator.parse(raw, strict=strict)
            if openai.stream:
                return StreamingResponse(
                    openai_events(generator, generation, kind),
                    media_type="text/event-stream",
                    headers=SSE_HEADERS,
                )
            (prediction,) = await generator.run_all([generation], "openai")
            return JSONResponse(response_body(prediction, generation))
        except (BadRequest, RuntimeFailure) as exc:
            return JSONResponse(openai_error_body(exc), status_code=int(exc.status))

    @app.post(f"{PREFIX}/images/generations", tags=["openai"])
    async def generations(request: Request) -> Response:
        """OpenAI's image generation: JSON body, JSON answer or (`stream`) events."""
        return await serve(request, _json_fields, "image_generation")

    @app.post(f"{PREFIX}/images/edits", tags=["openai"])
    async def edits(request: Request) -> Response:
        """OpenAI's image edit: multipart form, JSON answer or (`stream`) events."""
        return await serve(request, _form_fields, "image_edit")

    @app.get(f"{PREFIX}/models", tags=["openai"])
    async def models() -> dict[str, Any]:
        """The one model this runtime serves, in OpenAI's list shape."""
        return {"object": "list", "data": [model_entry(model.name)]}
