"""The FastAPI app: REST routes, then MCP mounted at /mcp, behind auth, request ids and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_server import metrics
from mcp_server.discovery import Discovery, DiscoveryConfigError
from mcp_server.errors import (
    InvalidRequestError,
    RequestTooLargeError,
    ServiceError,
    UnauthorizedError,
)
from mcp_server.jobs import JobManager
from mcp_server.limiter import client_var
from mcp_server.logs import ACCESS_LOGGER
from mcp_server.mcp_app import build_mcp
from mcp_server.playground import OPEN_PREFIX, mount_playground
from mcp_server.registry import ModelRegistry
from mcp_server.rest import build_router, validation_problem
from mcp_server.service import ImageService
from mcp_server.settings import Settings
from mcp_server.store import make_store
from wire.logs import RequestIdMiddleware

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

# The largest body any route needs: an edit's source image and mask as base64 (the runtime takes
# up to 10 MiB per image). Without a cap a client could make the server buffer any amount.
MAX_BODY_BYTES = 32 * 1024 * 1024
# Logged for a request whose client left before any answer (nginx's status for it).
CLIENT_CLOSED = 499

# Probes and Prometheus cannot send a token, nor a browser opening the playground (its files
# hold no data; what the page asks for needs the token). The API docs can (from a browser, with
# a header extension or through `oc port-forward`), so with a token set they need it too.
OPEN_PATHS = ("/health", "/ready", "/metrics", "/")


@dataclass
class Components:
    """Everything a transport needs; built once per process."""

    settings: Settings
    http: httpx.AsyncClient
    service: ImageService
    jobs: JobManager
    mcp: MCPServer
    discovery: Discovery | None = None

    async def start(self) -> None:
        """Check the image store, then start discovery (which lists once before serving)."""
        try:
            await self.service.check_ready()
        except ServiceError as exc:
            raise RuntimeError(str(exc)) from None
        if self.discovery is not None:
            try:
                await self.discovery.start()
            except DiscoveryConfigError as exc:
                raise RuntimeError(str(exc)) from None

    async def aclose(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
        await self.jobs.shutdown()
        await self.http.aclose()


def build_components(settings: Settings) -> Components:
    store = make_store(settings)
    # One pool for every runtime; limits leave room for the generation slots and probes.
    # Discovered runtimes come and go, so their number is unknown: no pool limit then (each
    # runtime's Limiter still bounds its generations).
    limit = settings.max_concurrent_per_runtime * len(settings.runtimes) + 10
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None if settings.discovery_enabled else limit)
    )
    discovery = None
    if settings.discovery_enabled:
        discovery = Discovery(settings)
    service = ImageService(store, ModelRegistry(settings, http, discovery))
    jobs = JobManager(service, store, settings.job_stale_seconds, settings.job_partial_images)
    mcp = build_mcp(service, jobs, settings.inline_image_max_bytes, settings.public_url)
    return Components(settings, http, service, jobs, mcp, discovery)


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None:
        path = "/mcp" if scope.get("path", "").startswith("/mcp") else "other"
    return f"{scope.get('method', '')} {path}"


def client_of(scope: Scope, headers: Mapping[bytes, bytes]) -> str:
    """The client, for the per-client cap: the address the OpenShift router appended to
    X-Forwarded-For (the last entry; those before it come from the client and can be forged),
    else the peer's own address."""
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[-1].strip()
    peer = scope.get("client")
    return forwarded or (peer[0] if peer else "unknown")


def error_response(exc: ServiceError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The REST translation of every ServiceError: OpenAI's error shape, so OpenAI clients
    surface `message`."""
    if exc.retry_after:
        headers = {**(headers or {}), "Retry-After": str(exc.retry_after)}
    if exc.allow:
        headers = {**(headers or {}), "Allow": exc.allow}
    return JSONResponse(
        exc.body(),
        status_code=exc.status,
        headers=headers,
    )


class BodyTooLargeError(Exception):
    pass


def _too_large() -> Response:
    return error_response(RequestTooLargeError(MAX_BODY_BYTES))


def _limited(receive: Receive) -> Receive:
    """Counts the body as it streams in (chunked requests carry no Content-Length)."""
    seen = 0

    async def limited_receive() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise BodyTooLargeError
        return message

    return limited_receive


class RequestMiddleware:
    """Bearer auth, body size cap, access log, metrics; inside wire's RequestIdMiddleware,
    so its lines and answers carry the request id."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    def _authorized(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.token is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                # compare_digest: the time taken does not tell how much of the token matched.
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    credentials.strip(), self.token
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        client_token = client_var.set(client_of(scope, headers))
        started = time.monotonic()
        status = 500
        responded = client_left = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = message["status"], True
            await send(message)

        async def watched(receive: Receive = receive) -> Message:
            nonlocal client_left
            message = await receive()
            client_left = client_left or message["type"] == "http.disconnect"
            return message

        declared = headers.get(b"content-length", b"0")
        try:
            if not self._authorized(scope):
                response = error_response(
                    UnauthorizedError(),
                    headers={"WWW-Authenticate": 'Bearer realm="diffusers-mcp"'},
                )
                await response(scope, receive, send_with_id)
            elif declared.isdigit() and int(declared) > MAX_BODY_BYTES:
                await _too_large()(scope, receive, send_with_id)
            else:
                try:
                    await self.app(scope, _limited(watched), send_with_id)
                except BodyTooLargeError:
                    if status != 500:  # the response had started: nothing more to say
                        raise
                    await _too_large()(scope, receive, send_with_id)
        except asyncio.CancelledError:
            client_left = True
            raise
        finally:
            if client_left and not responded:
                # The client's own doing (a timeout, a cancel), not a server error: nginx's
                # "client closed request".
                status = CLIENT_CLOSED
            elapsed = time.monotonic() - started
            route = _route_label(scope)
            metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
            metrics.HTTP_SECONDS.labels(route).observe(elapsed)
            if scope["path"] not in ("/health", "/metrics"):
                access_log.log(
                    logging.INFO if status < 400 or status == CLIENT_CLOSED else logging.WARNING,
                    "%s %s -> %s in %.0f ms",
                    scope.get("method"),
                    scope["path"],
                    status,
                    elapsed * 1000,
                    extra={"status": status, "duration_ms": round(elapsed * 1000, 1)},
                )
            client_var.reset(client_token)


def create_app(settings: Settings) -> FastAPI:
    components = build_components(settings)
    app = FastAPI(
        title="diffusers-mcp",
        version="0.1.0",
        description="Image generation for MCP clients (at /mcp) and OpenAI-style REST clients.",
        lifespan=_lifespan(components),
        exception_handlers={
            ServiceError: _service_error,
            RequestValidationError: _invalid_request,
            StarletteHTTPException: _http_error,
        },
    )
    app.state.components = components
    # The router serves the document instead: it adds the served model's limits.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != app.openapi_url]
    app.include_router(build_router(components.service, settings.public_url))
    mount_playground(app)
    app.add_api_route(
        "/metrics",
        _prometheus,
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    # The SDK app's own route (/mcp) after the REST routes, rather than mounting its app at
    # "/": a catch-all mount would answer every unknown path and method in place of FastAPI.
    app.router.routes.extend(_mcp_app(components.mcp, settings).routes)
    app.add_middleware(RequestMiddleware, token=settings.mcp_auth_token)
    app.add_middleware(RequestIdMiddleware)  # added last: the outermost
    return app


def _mcp_app(mcp: MCPServer, settings: Settings) -> Starlette:
    return mcp.streamable_http_app(
        streamable_http_path="/mcp",
        # Stateless: any replica can answer any request. SSE (not JSON) responses, because
        # JSON responses carry neither progress notifications nor cancellation.
        stateless_http=True,
        json_response=False,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=settings.mcp_allowed_hosts,
            allowed_origins=settings.mcp_allowed_origins,
        ),
    )


def _lifespan(components: Components) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    settings = components.settings

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await components.start()
        except RuntimeError as exc:
            log.error("%s", exc)
            raise
        async with components.mcp.session_manager.run():
            log.info(
                "serving MCP at /mcp and REST; runtimes: %s%s",
                ", ".join(f"{t.name}={t.url}" for t in settings.runtimes) or "none configured",
                f"; discovery in {','.join(settings.discovery_namespaces)}"
                if settings.discovery_enabled
                else "",
            )
            yield
        await components.aclose()

    return lifespan


async def _service_error(_: Request, exc: ServiceError) -> Response:
    return error_response(exc)


async def _invalid_request(_: Request, exc: RequestValidationError) -> Response:
    return error_response(validation_problem(exc.errors()))


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own rejections (a body it cannot parse, an unknown path) in the error shape
    every other answer has, so OpenAI clients show the message."""
    if isinstance(exc.__cause__, BodyTooLargeError):
        return _too_large()
    message = str(exc.detail)
    if message == "There was an error parsing the body":
        message = (
            "Invalid request: the body could not be parsed as JSON (it must be UTF-8, "
            "nested at most a few hundred levels, with numbers of sane size)."
        )
    error = InvalidRequestError(message, param="body")
    error.status = exc.status_code
    return error_response(error, headers=exc.headers)


async def _prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
