"""The one image service behind MCP and REST: validate -> route by model -> wait for a slot
-> generate on the runtime -> store -> result. Besides generating, it offers what the front
ends need: read a stored image, check a model, the models and their status."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from typing import Any

from pydantic import BaseModel

from mcp_server import metrics
from mcp_server.errors import (
    ImageNotFoundError,
    InvalidRequestError,
    RuntimeCallError,
    RuntimeRejectedError,
    ServiceError,
)
from mcp_server.generation import (
    MIME_TYPES,
    GenerationRequest,
    GenerationResult,
    ImageRef,
    Timings,
    image_uri,
)
from mcp_server.registry import ModelInfo, ModelRegistry, RuntimeState
from mcp_server.runtime_client import PartialCallback, ProgressCallback
from mcp_server.store import Store, StoredImage

log = logging.getLogger(__name__)

# The id at the end of an image:// URI or of a /v1/images/{id} URL minted by this server.
STORED_REFERENCE = re.compile(r"(?:^|/)([A-Za-z0-9_-]{32})(?:\.(?:png|jpeg|webp))?$")


class Status(BaseModel):
    """diffusers://status and /health?details=true."""

    ready: bool
    runtimes: list[RuntimeState]
    discovery: dict[str, Any] | None


class ImageService:
    def __init__(self, store: Store, registry: ModelRegistry) -> None:
        self.store = store
        self.registry = registry

    async def generate(
        self,
        request: GenerationRequest,
        *,
        entry: str,
        request_id: str | None,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
        partial_images: int = 0,
        base_url: str | None = None,
    ) -> tuple[GenerationResult, list[bytes]]:
        """Generate, store and describe the images; returns the result and the image bytes.
        PARTIAL_IMAGES estimates of each image arrive at ON_PARTIAL while it is made.

        Always over the runtime's progress stream, whether or not the caller wants progress:
        cancelling this coroutine then closes the stream, which stops the runtime."""
        started = time.monotonic()
        outcome = "error"
        metrics.IN_FLIGHT.labels(entry).inc()
        try:
            client = self.registry.client(request.model)
            name = client.target.name
            instance = await self._instance(request)
            if partial_images:
                instance["partial_images"] = partial_images
            with self.registry.clients_limit.hold():
                async with self.registry.limiter(name).slot():
                    waited_ms = (time.monotonic() - started) * 1000
                    log.info(
                        "generating on %s (%s) after %.0f ms in queue",
                        name,
                        client.url,
                        waited_ms,
                        extra={"model": name},
                    )
                    try:
                        prediction = await client.generate(
                            instance, request_id, on_progress, on_partial
                        )
                    except RuntimeCallError as exc:
                        if not isinstance(exc, RuntimeRejectedError):
                            metrics.RUNTIME_ERRORS.labels(name, exc.code).inc()
                        raise
                result, images = await self._store(name, request, prediction, waited_ms, base_url)
            outcome = "ok"
            return result, images
        except ServiceError as exc:
            outcome = exc.code
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.IN_FLIGHT.labels(entry).dec()
            metrics.GENERATIONS.labels(entry, outcome).inc()
            metrics.GENERATION_SECONDS.labels(entry).observe(time.monotonic() - started)

    def check_model(self, model: str | None) -> str:
        """The name that serves MODEL (the default when None); raises why none does."""
        return self.registry.client(model).target.name

    async def read_image(self, image_id: str, *, param: str | None = None) -> StoredImage:
        stored = await self.store.get_image(image_id)
        if stored is None:
            raise ImageNotFoundError(image_id, self.store.ttl_seconds, param=param)
        return stored

    async def models(self) -> list[ModelInfo]:
        return await self.registry.models()

    async def capabilities(self) -> dict[str, Any] | None:
        """The default model's limits and defaults; None while no runtime can say."""
        try:
            return await self.registry.client(None).capabilities()
        except ServiceError:
            return None

    async def status(self) -> Status:
        ready, runtimes = await self.registry.states()
        return Status(ready=ready, runtimes=runtimes, discovery=self.discovery_status())

    def discovery_status(self) -> dict[str, Any] | None:
        return self.registry.discovery_status()

    async def check_ready(self) -> None:
        """Whether this server can serve: its image store answers (settings were checked at
        start). The runtimes' state is not part of it: see status()."""
        await self.store.check()

    async def _source(self, reference: str, field: str) -> str:
        """Base64 data of an edit's source image or mask. References to stored images are read
        from the store; other URLs are refused rather than fetched (no server-side requests
        to arbitrary addresses)."""
        is_reference = reference.startswith(("image://", "http://", "https://"))
        match = STORED_REFERENCE.search(reference)
        if not is_reference and not (match and match.start() == 0):
            return reference.split(",", 1)[1] if reference.startswith("data:") else reference
        if match is None:
            raise InvalidRequestError(
                f"{field}: {reference[:100]!r} is not an image of this server; pass an image "
                "id, image:// URI or URL returned by generate_image, or base64 image data.",
                param=field,
            )
        stored = await self.read_image(match[1], param=field)
        return base64.b64encode(stored.data).decode()

    async def _instance(self, request: GenerationRequest) -> dict[str, Any]:
        instance = request.model_dump(exclude_none=True, exclude={"model"})
        for field in ("image", "mask_image"):
            if field in instance:
                instance[field] = await self._source(instance[field], field)
        return instance

    async def _store(
        self,
        model: str,
        request: GenerationRequest,
        prediction: dict[str, Any],
        waited_ms: float,
        base_url: str | None,
    ) -> tuple[GenerationResult, list[bytes]]:
        refs: list[ImageRef] = []
        blobs: list[bytes] = []
        for image in prediction["images"]:
            data = base64.b64decode(image["b64"])
            mime_type = MIME_TYPES.get(str(image.get("format", "png")).lower(), "image/png")
            image_id = await self.store.put_image(data, mime_type)
            refs.append(
                ImageRef(
                    id=image_id,
                    uri=image_uri(image_id, mime_type),
                    url=f"{base_url}/v1/images/{image_id}" if base_url else None,
                    mime_type=mime_type,
                    size_bytes=len(data),
                )
            )
            blobs.append(data)
        timings = Timings(**{**(prediction.get("timings") or {}), "wait_ms": round(waited_ms, 1)})
        result = GenerationResult(
            model=model,
            prompt=prediction.get("prompt", request.prompt),
            images=refs,
            seed=prediction.get("seed", request.seed),
            width=prediction.get("width", request.width or 0),
            height=prediction.get("height", request.height or 0),
            num_inference_steps=prediction.get("num_inference_steps", request.num_inference_steps),
            guidance_scale=prediction.get("guidance_scale", request.guidance_scale),
            scheduler=prediction.get("scheduler", request.scheduler),
            speed=prediction.get("speed", request.speed),
            quality=prediction.get("quality"),
            background=prediction.get("background"),
            loras=prediction.get("loras") or [],
            timings=timings,
            expires_at=time.time() + self.store.ttl_seconds,
        )
        return result, blobs
