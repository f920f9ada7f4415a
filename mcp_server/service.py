"""The one image service behind MCP and REST: validate -> route by model -> wait for a slot
-> generate on the runtime -> store -> result."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from mcp_server import metrics
from mcp_server.discovery import DiscoveredModel, Discovery
from mcp_server.runtime_client import ProgressCallback, RuntimeCallError, RuntimeClient
from mcp_server.settings import RuntimeTarget, Settings
from mcp_server.store import MIME_TYPES, Store, StoreUnavailableError

log = logging.getLogger(__name__)

OutputFormat = Literal["png", "jpeg", "webp"]


class GenerationRequest(BaseModel):
    """The runtime's request fields under the same names, plus `model`. Unset fields take the
    runtime's defaults; the runtime checks its own limits and names the field it rejects."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="What the image should show.")
    negative_prompt: str | None = Field(None, description="What the image should not show.")
    width: int | None = Field(None, ge=8, description="Width in pixels (multiple of 8).")
    height: int | None = Field(None, ge=8, description="Height in pixels (multiple of 8).")
    num_inference_steps: int | None = Field(
        None, ge=1, description="Denoising steps: more is slower and usually finer."
    )
    guidance_scale: float | None = Field(
        None, ge=0, description="How strongly to follow the prompt (typically 3-9)."
    )
    seed: int | None = Field(
        None, ge=0, description="Same seed + same parameters = same image; random when unset."
    )
    num_images: int | None = Field(None, ge=1, description="How many images to generate.")
    scheduler: str | None = Field(None, description="Scheduler name; see list_models.")
    output_format: OutputFormat | None = Field(None, description="png (default), jpeg or webp.")
    model: str | None = Field(None, description="Model name from list_models; default if unset.")
    image: str | None = Field(
        None,
        description="Source image for an edit: an image id, image:// URI or URL returned by "
        "this server, or base64 PNG/JPEG/WebP data.",
    )
    mask_image: str | None = Field(
        None, description="Inpainting mask (white = repaint), referenced like `image`."
    )
    strength: float | None = Field(
        None, gt=0, le=1, description="How much of the source to change (0-1)."
    )


class ImageRef(BaseModel):
    id: str = Field(description="Image id, valid until expires_at.")
    uri: str = Field(description="MCP resource URI; read it with resources/read.")
    url: str | None = Field(description="HTTP URL of the full image (None over stdio).")
    mime_type: str
    size_bytes: int


class Timings(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_ms: float | None = None
    inference_ms: float | None = None
    encode_ms: float | None = None
    total_ms: float | None = None
    wait_ms: float | None = Field(None, description="Time spent waiting for a free slot here.")


class GenerationResult(BaseModel):
    """What a finished generation returns (the tools' structuredContent)."""

    model: str = Field(description="The model that made the images.")
    prompt: str
    images: list[ImageRef]
    seed: int | None
    width: int
    height: int
    num_inference_steps: int | None
    guidance_scale: float | None
    scheduler: str | None
    timings: Timings = Field(description="Runtime timings plus this server's wait_ms.")
    expires_at: float = Field(description="Unix time after which the images are deleted.")


class ServiceError(Exception):
    """An error a caller can act on. `status` is the REST status code."""

    def __init__(self, message: str, *, status: int, kind: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.retry_after = retry_after


class Limiter:
    """Bounded concurrency with a bounded wait queue, per runtime."""

    def __init__(self, name: str, concurrency: int, queue: int) -> None:
        self.name = name
        self.max_queue = queue
        self._slots = asyncio.Semaphore(concurrency)
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise ServiceError(
                f"The model {self.name!r} is busy: all generation slots are in use and "
                f"{self.waiting} requests are already waiting. Retry in a few seconds, or "
                "raise MAX_CONCURRENT_PER_RUNTIME / MAX_QUEUE_PER_RUNTIME or add runtime replicas.",
                status=429,
                kind="busy",
                retry_after=5,
            )
        self.waiting += 1
        metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.QUEUE_DEPTH.labels(self.name).set(self.waiting)
        try:
            yield
        finally:
            self._slots.release()


# The id at the end of an image:// URI or of a /v1/images/{id} URL minted by this server.
STORED_REFERENCE = re.compile(r"(?:^|/)([A-Za-z0-9_-]{32})(?:\.(?:png|jpeg|webp))?$")


def image_uri(image_id: str, mime_type: str) -> str:
    extension = {v: k for k, v in MIME_TYPES.items()}.get(mime_type, "png")
    return f"image://generated/{image_id}.{extension}"


class ImageService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        http: httpx.AsyncClient,
        discovery: Discovery | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.discovery = discovery
        self.targets: dict[str, RuntimeTarget] = {t.name: t for t in settings.runtimes}
        self.static_names = list(self.targets)
        # Discovered models by name, available or not; their clients are rebuilt on change.
        self.discovered: dict[str, DiscoveredModel] = {}
        self._seen_generation = -1
        diagnostics = ""
        if settings.diffusers_runtime_service:
            namespace = settings.diffusers_runtime_namespace or "(this namespace)"
            diagnostics = (
                f"the Service {settings.diffusers_runtime_service!r} in namespace {namespace}"
            )
        self.clients = {
            name: RuntimeClient(
                target,
                http,
                connect_timeout=settings.runtime_connect_timeout_seconds,
                generation_timeout=settings.generation_timeout_seconds,
                diagnostics=diagnostics,
            )
            for name, target in self.targets.items()
        }
        self.limiters = {name: self._limiter(name) for name in self.targets}

    def _limiter(self, name: str) -> Limiter:
        settings = self.settings
        return Limiter(name, settings.max_concurrent_per_runtime, settings.max_queue_per_runtime)

    @property
    def default_model(self) -> str | None:
        """The first static runtime; else DEFAULT_MODEL_NAME or the first available
        discovered model (by name); None while discovery has found nothing usable."""
        if self.static_names:
            return self.static_names[0]
        self._refresh()
        available = sorted(n for n, m in self.discovered.items() if m.available)
        preferred = self.settings.default_model_name
        if preferred in self.discovered:
            return preferred
        return available[0] if available else None

    def _refresh(self) -> None:
        """Follow discovery: a client per available discovered model, reused while its URL
        and model id stay the same. Static models are never touched."""
        if self.discovery is None or self.discovery.generation == self._seen_generation:
            return
        self._seen_generation = self.discovery.generation
        self.discovered = {m.name: m for m in self.discovery.models}
        for name in list(self.clients):
            model = self.discovered.get(name)
            if name in self.static_names:
                continue
            if model is None or not model.available or self.targets[name] != model.target():
                del self.clients[name], self.targets[name]
        for name, model in self.discovered.items():
            self.limiters.setdefault(name, self._limiter(name))
            if model.available and name not in self.clients:
                self.targets[name] = model.target()
                self.clients[name] = RuntimeClient(
                    self.targets[name],
                    self.http,
                    connect_timeout=self.settings.runtime_connect_timeout_seconds,
                    generation_timeout=self.settings.generation_timeout_seconds,
                    diagnostics=f"the {model.reference}",
                )

    async def _source(self, reference: str, field: str) -> str:
        """Base64 data of an edit's source image or mask. References to stored images are read
        from the store; other URLs are refused rather than fetched (no server-side requests
        to arbitrary addresses)."""
        is_reference = reference.startswith(("image://", "http://", "https://"))
        match = STORED_REFERENCE.search(reference)
        if not is_reference and not (match and match.start() == 0):
            return reference.split(",", 1)[1] if reference.startswith("data:") else reference
        if match is None:
            raise ServiceError(
                f"{field}: {reference[:100]!r} is not an image of this server; pass an image "
                "id, image:// URI or URL returned by generate_image, or base64 image data.",
                status=400,
                kind="invalid_request",
            )
        stored = await self.store.get_image(match[1])
        if stored is None:
            raise ServiceError(
                f"{field}: image {match[1]!r} does not exist or has expired; generate it again "
                "or send the image as base64 data.",
                status=400,
                kind="invalid_request",
            )
        return base64.b64encode(stored.data).decode()

    async def _instance(self, request: GenerationRequest) -> dict[str, Any]:
        instance = request.model_dump(exclude_none=True, exclude={"model"})
        for field in ("image", "mask_image"):
            if field in instance:
                instance[field] = await self._source(instance[field], field)
        return instance

    def client(self, model: str | None) -> RuntimeClient:
        self._refresh()
        name = model or self.default_model
        if name is None:
            raise ServiceError(
                "No model is available yet: no runtime is configured and discovery has found "
                f"no Ready InferenceService labelled {self.settings.discovery_label_selector} "
                "(see list_models for what it found and why each is unavailable).",
                status=503,
                kind="unavailable",
                retry_after=5,
            )
        if name not in self.clients and name in self.discovered:
            found = self.discovered[name]
            raise ServiceError(
                f"Model {name!r} is unavailable: {found.message} ({found.reference}). "
                "Check it with `oc describe inferenceservice`, or pick another model from "
                "list_models.",
                status=503,
                kind="unavailable",
                retry_after=5,
            )
        if name not in self.clients:
            raise ServiceError(
                f"Unknown model {name!r}; available models: {', '.join(self.clients)} "
                "(see list_models or GET /v1/models).",
                status=400,
                kind="unknown_model",
            )
        return self.clients[name]

    async def generate(
        self,
        request: GenerationRequest,
        *,
        entry: str,
        request_id: str | None,
        on_progress: ProgressCallback | None = None,
        base_url: str | None = None,
    ) -> tuple[GenerationResult, list[bytes]]:
        """Generate, store and describe the images; returns the result and the image bytes.

        Always over the runtime's progress stream, whether or not the caller wants progress:
        cancelling this coroutine then closes the stream, which stops the runtime."""
        started = time.monotonic()
        outcome = "error"
        metrics.IN_FLIGHT.labels(entry).inc()
        try:
            client = self.client(request.model)
            name = client.target.name
            instance = await self._instance(request)
            async with self.limiters[name].slot():
                waited_ms = (time.monotonic() - started) * 1000
                log.info(
                    "generating on %s (%s) after %.0f ms in queue",
                    name,
                    client.url,
                    waited_ms,
                    extra={"model": name},
                )
                prediction = await client.generate(instance, request_id, on_progress)
            result, images = await self._store(name, request, prediction, waited_ms, base_url)
            outcome = "ok"
            return result, images
        except RuntimeCallError as exc:
            outcome = exc.kind
            if exc.kind != "invalid_request":
                metrics.RUNTIME_ERRORS.labels(name, exc.kind).inc()
            raise ServiceError(str(exc), status=exc.status, kind=exc.kind) from exc
        except ServiceError as exc:
            outcome = exc.kind
            raise
        except StoreUnavailableError as exc:
            outcome = "store_unavailable"
            raise ServiceError(str(exc), status=503, kind="store_unavailable") from exc
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            metrics.IN_FLIGHT.labels(entry).dec()
            metrics.GENERATIONS.labels(entry, outcome).inc()
            metrics.GENERATION_SECONDS.labels(entry).observe(time.monotonic() - started)

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
            timings=timings,
            expires_at=time.time() + self.store.ttl_seconds,
        )
        return result, blobs

    def _origin(self, name: str) -> dict[str, Any]:
        """Where a model comes from: static configuration, or an InferenceService (with
        whether the list it comes from is stale)."""
        model = self.discovered.get(name)
        if self.discovery is None or model is None:
            return {"source": "static"}
        return self.discovery.describe(model)

    def _unavailable(self) -> list[DiscoveredModel]:
        return [m for n, m in self.discovered.items() if n not in self.clients]

    def discovery_status(self) -> dict[str, Any] | None:
        """What discovery last saw (namespaces, staleness, errors); None when it is off."""
        return None if self.discovery is None else self.discovery.status()

    async def models(self) -> list[dict[str, Any]]:
        """Every model with its readiness and limits, checked concurrently; discovered models
        that are not usable are listed too, with the reason."""
        self._refresh()
        default = self.default_model

        async def describe(name: str, client: RuntimeClient) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "name": name,
                "default": name == default,
                "runtime_url": client.url,
                "runtime_model_id": client.target.model_id,
                **self._origin(name),
            }
            try:
                entry["ready"] = await client.ready()
                entry["capabilities"] = await client.capabilities()
            except RuntimeCallError as exc:
                entry.setdefault("ready", False)
                entry["error"] = str(exc)
            return entry

        entries = list(await asyncio.gather(*(describe(n, c) for n, c in self.clients.items())))
        for model in self._unavailable():
            entries.append(
                {
                    "name": model.name,
                    "default": False,
                    "runtime_url": model.url,
                    "runtime_model_id": model.model_id,
                    **self._origin(model.name),
                    "ready": False,
                    "error": f"unavailable: {model.message}",
                }
            )
        return entries

    async def ready(self) -> tuple[bool, list[dict[str, Any]]]:
        """Ready when every static runtime answers that its model is ready and at least one
        model is: one failing discovered InferenceService must not take this server out of
        its Service for every other model."""
        self._refresh()

        async def check(name: str, client: RuntimeClient) -> dict[str, Any]:
            try:
                return {"model": name, "ready": await client.ready()}
            except RuntimeCallError as exc:
                return {"model": name, "ready": False, "error": str(exc)}

        states = list(await asyncio.gather(*(check(n, c) for n, c in self.clients.items())))
        states += [
            {"model": m.name, "ready": False, "error": f"unavailable: {m.message}"}
            for m in self._unavailable()
        ]
        static_ready = all(s["ready"] for s in states if s["model"] in self.static_names)
        # With no model at all (discovery only, nothing found) this is not ready.
        return static_ready and any(s["ready"] for s in states), states
