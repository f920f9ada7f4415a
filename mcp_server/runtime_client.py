"""HTTP client of one diffusers runtime: every failure becomes a RuntimeCallError that says
which runtime, what failed and what to check; its `code` says how it failed.

A runtime URL is a Service: behind it, one or more replicas. A generation that failed before
its replica started it is sent again (another replica takes it); one that had started is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from mcp_server import metrics
from mcp_server.errors import RuntimeCallError, RuntimeRejectedError
from mcp_server.settings import RuntimeTarget

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class PartialImage:
    """One `partial_image` event of the runtime's stream: an estimate of image
    `image_index`'s final picture, the `partial_image_index`-th of the request."""

    image_index: int
    partial_image_index: int
    b64: str
    width: int
    height: int
    quality: str | None
    background: str
    output_format: str


PartialCallback = Callable[[PartialImage], Awaitable[None]]

# Failures that leave a request unserved but harmless to send again while no step ran: the
# connection refused (a replica gone, its endpoint not yet removed), dropped before the answer
# (a pooled connection to a replica that stopped), 503 (loading, or handed back by a replica
# that is stopping), a stream that ended empty.
NOT_STARTED_RETRYABLE = frozenset({"connect", "unavailable", "stream_ended"})


def _is_dns_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return True
        text = str(seen).lower()
        if "name or service not known" in text or "name resolution" in text:
            return True
        if "nodename nor servname" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class RuntimeClient:
    """Talks to one runtime over KServe v1 plus its `:generate` progress stream."""

    def __init__(
        self,
        target: RuntimeTarget,
        http: httpx.AsyncClient,
        *,
        connect_timeout: float,
        generation_timeout: float,
        diagnostics: str = "",
    ) -> None:
        self.target = target
        self._http = http
        self._connect_timeout = connect_timeout
        self._generation_timeout = generation_timeout
        self._diagnostics = diagnostics
        # Ready replicas behind the URL (the registry follows discovery): how many times a
        # request that no replica started is sent again.
        self.replicas = 1

    @property
    def url(self) -> str:
        return self.target.url

    def model_url(self, suffix: str = "") -> str:
        return f"{self.target.url}/v1/models/{self.target.model_id}{suffix}"

    def _timeout(self, total: float) -> httpx.Timeout:
        return httpx.Timeout(total, connect=min(self._connect_timeout, total))

    def _headers(self, request_id: str | None) -> dict[str, str]:
        return {"X-Request-ID": request_id} if request_id else {}

    def _check_hint(self) -> str:
        where = self._diagnostics or f"the runtime serving model {self.target.model_id!r}"
        return f"check that {where} is running and reachable from this server"

    def _transport_error(self, exc: Exception, what: str, timeout: float) -> RuntimeCallError:
        url = self.target.url
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            phase = "connect" if isinstance(exc, httpx.ConnectTimeout) else "answer"
            return RuntimeCallError(
                f"The diffusers runtime at {url} did not {phase} within {timeout:g} s "
                f"while {what}; "
                f"{self._check_hint()}, and that it is not overloaded (raise "
                "GENERATION_TIMEOUT_SECONDS for slow models).",
                code="timeout",
                status=504,
            )
        if _is_dns_failure(exc):
            host = httpx.URL(url).host
            return RuntimeCallError(
                f"The diffusers runtime host {host!r} (from {url}) does not resolve (DNS failure) "
                f"while {what}; check DIFFUSERS_RUNTIME_URL / DIFFUSERS_RUNTIMES: the Service "
                "name and namespace must exist (KServe RawDeployment names it "
                "<isvc>-predictor).",
                code="dns",
                status=502,
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            # Connected, then the peer vanished mid-answer: the runtime died or restarted.
            detail = str(exc) or type(exc).__name__
            return RuntimeCallError(
                f"The diffusers runtime at {url} became unavailable while {what}: it dropped "
                "the connection before answering (it probably restarted, was killed or ran out "
                f"of memory); check its logs and pod events, then retry. ({detail})",
                code="unavailable",
                status=503,
            )
        if isinstance(exc, httpx.ConnectError):
            return RuntimeCallError(
                f"The diffusers runtime at {url} refused the connection while {what}; "
                f"{self._check_hint()} (is the predictor pod up and listening on that port?).",
                code="connect",
                status=502,
            )
        return RuntimeCallError(
            f"The connection to the diffusers runtime at {url} failed while {what}: "
            f"{type(exc).__name__}: {exc}; {self._check_hint()}.",
            code="transport",
            status=502,
        )

    def _status_error(self, status: int, body: bytes, what: str) -> RuntimeCallError:
        message = _error_message(body)
        url = self.target.url
        if status == 400:
            # This server sends one instance per call: its index only distracts the caller,
            # who named the fields without it.
            message = message.replace("instances[0].", "")
            return RuntimeRejectedError(message or "the runtime rejected the request (HTTP 400)")
        if status == 404:
            return RuntimeCallError(
                f"The diffusers runtime at {url} has no model {self.target.model_id!r} "
                f"(HTTP 404 while {what}); check DIFFUSERS_MODEL_ID (or model_id in "
                "DIFFUSERS_RUNTIMES) matches the runtime's MODEL_NAME.",
                code="not_found",
                status=502,
            )
        if status == 503:
            return RuntimeCallError(
                f"The diffusers runtime at {url} is not available (HTTP 503 while {what}): "
                f"{message or 'model not ready'}. Retry shortly; if it persists, check the "
                "runtime's logs (model loading, device memory).",
                code="unavailable",
                status=503,
            )
        return RuntimeCallError(
            f"The diffusers runtime at {url} failed (HTTP {status} while {what}): "
            f"{message or 'no error message'}. Check the runtime's logs.",
            code=f"http_{status // 100}xx",
            status=502,
        )

    def _garbage(self, what: str, detail: str) -> RuntimeCallError:
        return RuntimeCallError(
            f"The diffusers runtime at {self.target.url} sent an unexpected answer while {what} "
            f"({detail}); check that DIFFUSERS_RUNTIME_URL points at a diffusers runtime "
            "(KServe v1 protocol) and not at another service.",
            code="protocol",
            status=502,
        )

    async def _get_json(self, suffix: str, what: str) -> dict[str, Any]:
        timeout = self._connect_timeout * 2
        try:
            response = await self._http.get(self.model_url(suffix), timeout=self._timeout(timeout))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, what, timeout) from exc
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.content, what)
        try:
            data = response.json()
        except ValueError as exc:
            raise self._garbage(what, "not JSON") from exc
        if not isinstance(data, dict):
            raise self._garbage(what, "not a JSON object")
        return data

    async def ready(self) -> bool:
        data = await self._get_json("", "checking model readiness")
        return bool(data.get("ready"))

    async def capabilities(self) -> dict[str, Any]:
        return await self._get_json("/capabilities", "reading model capabilities")

    async def generate(
        self,
        instance: dict[str, Any],
        request_id: str | None,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
    ) -> dict[str, Any]:
        """One prediction over the progress stream, within GENERATION_TIMEOUT_SECONDS.
        The instance's `partial_images` arrive at ON_PARTIAL.

        A failure before the runtime reported a step is sent again, once per replica and twice
        more, after pauses that add up to a few seconds: long enough for Kubernetes to take a
        dead replica out of the Service, so another replica takes it. After a step a
        failure is final: a generation running when its replica failed may be what made the
        replica fail (out of memory), and sending it on could fail the next one too."""
        what = "generating an image"
        timeout = self._generation_timeout
        attempts = self.replicas + 2
        first: RuntimeCallError | None = None
        try:
            async with asyncio.timeout(timeout):
                for attempt in range(1, attempts + 1):
                    progress = _Progress(on_progress)
                    try:
                        return await self._generate_once(
                            instance, request_id, progress, on_partial, what
                        )
                    except RuntimeCallError as exc:
                        if progress.step:
                            raise self._lost(exc, progress) from exc
                        if exc.code not in NOT_STARTED_RETRYABLE:
                            raise
                        first = first or exc
                        if attempt == attempts:
                            raise self._unstarted(first, attempts) from exc
                        metrics.RUNTIME_RETRIES.labels(self.target.name, exc.code).inc()
                        log.warning(
                            "runtime %s did not start the generation (%s); sending it again",
                            self.target.url,
                            exc.code,
                        )
                        await asyncio.sleep(min(2.0, 0.5 * 2 ** (attempt - 1)))
        except TimeoutError as exc:
            raise self._transport_error(exc, what, timeout) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _generate_once(
        self,
        instance: dict[str, Any],
        request_id: str | None,
        progress: _Progress,
        on_partial: PartialCallback | None,
        what: str,
    ) -> dict[str, Any]:
        """The stream lives inside `async with`: when the caller is cancelled the connection
        closes and the runtime stops the generation."""
        timeout = self._generation_timeout
        try:
            async with aconnect_sse(
                self._http,
                "POST",
                self.model_url(":generate"),
                json={"instances": [instance]},
                headers=self._headers(request_id),
                timeout=self._timeout(timeout),
            ) as source:
                response = source.response
                if response.status_code != 200:
                    raise self._status_error(response.status_code, await response.aread(), what)
                prediction = None
                async for event in source.aiter_sse():
                    if event.event == "progress":
                        step = _progress(event.data)
                        if step is not None:
                            await progress.report(*step)
                    elif event.event == "partial_image" and on_partial is not None:
                        try:
                            partial = _partial(json.loads(event.data))
                        except (ValueError, KeyError, TypeError) as exc:
                            raise self._garbage(what, f"unreadable partial image: {exc}") from exc
                        await on_partial(partial)
                    elif event.event == "result":
                        try:
                            prediction = _check_prediction(json.loads(event.data))
                        except (ValueError, KeyError, TypeError) as exc:
                            raise self._garbage(what, f"unreadable result event: {exc}") from exc
                    elif event.event == "error":
                        raise self._stream_error(event.data, what)
                # Returning only at the end of the stream (the runtime ends it right after the
                # result) lets httpx keep the connection for the next request.
                if prediction is not None:
                    return prediction
        except httpx.HTTPError as exc:
            if isinstance(exc, SSEError):
                raise self._garbage(what, str(exc)) from exc
            raise self._transport_error(exc, what, timeout) from exc
        raise RuntimeCallError(
            f"The diffusers runtime at {self.target.url} closed the progress stream before "
            "sending a result (it probably restarted or ran out of memory); check its logs "
            "and pod events, then retry.",
            code="stream_ended",
            status=502,
        )

    def _lost(self, exc: RuntimeCallError, progress: _Progress) -> RuntimeCallError:
        """A failure once the generation was running: final, and said so."""
        if exc.code not in NOT_STARTED_RETRYABLE:
            return exc
        return RuntimeCallError(
            f"The diffusers runtime at {self.target.url} became unavailable after step "
            f"{progress.step} of {progress.total} of this generation: the replica serving it "
            "restarted, was killed, ran out of memory or was stopped before it could finish. "
            "It was not sent to another replica, because a generation that was running when "
            "its replica failed may be what made it fail. Retry it (with fewer or smaller "
            "images if it fails again), and check the runtime's logs and pod events.",
            code="replica_lost",
            status=503,
        )

    def _unstarted(self, first: RuntimeCallError, attempts: int) -> RuntimeCallError:
        """What happened to the request first (the later attempts mostly find the same
        replica gone), and that it was sent again."""
        return RuntimeCallError(
            f"{first} (Sent {attempts} times: no replica started it.)",
            code=first.code,
            status=first.status,
        )

    def _stream_error(self, data: str, what: str) -> RuntimeCallError:
        try:
            payload = json.loads(data)
            status = int(payload.get("status", 500))
        except (ValueError, TypeError, AttributeError):
            return self._garbage(what, "unreadable error event")
        return self._status_error(status, data.encode(), what)


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:500]
    if isinstance(data, dict):
        error = data.get("error") or data.get("detail") or data.get("message")
        if isinstance(error, dict):
            error = error.get("message")
        if error:
            return str(error)
    return str(data)[:500]


class _Progress:
    """The steps one attempt reported, passed on to the caller's callback."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self.step = 0
        self.total = 0

    async def report(self, step: int, total: int) -> None:
        self.step, self.total = step, total
        if self._callback is not None:
            await self._callback(step, total)


def _progress(data: str) -> tuple[int, int] | None:
    try:
        payload = json.loads(data)
        return int(payload["step"]), int(payload["total"])
    except (ValueError, KeyError, TypeError):
        return None


def _partial(data: Any) -> PartialImage:
    b64 = data["image"]["b64"]
    if not isinstance(b64, str):
        raise TypeError("image.b64 is not a string")
    return PartialImage(
        image_index=int(data["image_index"]),
        partial_image_index=int(data["partial_image_index"]),
        b64=b64,
        width=int(data["width"]),
        height=int(data["height"]),
        quality=data.get("quality"),
        background=str(data["background"]),
        output_format=str(data["image"]["format"]).lower(),
    )


def _check_prediction(prediction: Any) -> dict[str, Any]:
    images = prediction.get("images") or [prediction["image"]]
    for image in images:
        if not isinstance(image.get("b64"), str):
            raise KeyError("image.b64")
    return {**prediction, "images": images}
