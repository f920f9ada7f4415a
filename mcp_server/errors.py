"""Every error a caller can act on: one family, each message written once.

The front ends translate the base class once each: REST in one exception handler (status,
OpenAI's error shape, Retry-After), MCP in one wrapper around every tool (an `isError`
result). `code` labels metrics and is REST's `error.code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ServiceError(Exception):
    """What happened and what to do, in the message. `status` is the REST status code."""

    status = 500
    code = "internal_error"
    retry_after: int | None = None
    # The methods the route serves, for a 405's Allow header.
    allow: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        # The request field at fault, for OpenAI's `error.param`.
        self.param = param

    @property
    def type(self) -> str:
        """OpenAI's error category: the caller's mistake, or ours (or the runtime's)."""
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict[str, object]:
        """OpenAI's error shape, as a response body or a stream event: its client raises with
        `message`."""
        return {
            "error": {
                "message": str(self),
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(ServiceError):
    """The request itself is wrong; the message names the field."""

    status = 400
    code = "invalid_request"


class InvalidIdError(InvalidRequestError):
    """An image or job id that this server could never have issued."""

    def __init__(self, value: str, *, param: str | None = None) -> None:
        super().__init__(
            f"{value[:80]!r} is not a valid id: ids are 32 characters of A-Z, a-z, 0-9, '_' "
            "and '-', exactly as returned by the server",
            param=param,
        )


class UnknownModelError(InvalidRequestError):
    code = "unknown_model"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"Unknown model {name!r}; available models: {', '.join(available)} "
            "(see list_models or GET /v1/models).",
            param="model",
        )


class NotFoundError(ServiceError):
    status = 404
    code = "not_found"


class ImageNotFoundError(NotFoundError):
    def __init__(self, image_id: str, ttl_seconds: int, *, param: str | None = None) -> None:
        field = f"{param}: " if param else ""
        super().__init__(
            f"{field}Image {image_id!r} does not exist or has expired (images are kept "
            f"{ttl_seconds} s); generate it again (same seed and parameters, same image) or "
            "send the image as base64 data.",
            param=param,
        )
        if param:
            # An edit's source that is gone makes the request wrong, not the URL.
            self.status = 400


class JobNotFoundError(NotFoundError):
    def __init__(self, job_id: str, ttl_seconds: int) -> None:
        super().__init__(
            f"No job {job_id!r}: it never existed or expired (jobs are kept {ttl_seconds} s). "
            "Start a new one with start_generation.",
            param="job_id",
        )


class MethodNotAllowedError(ServiceError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: str) -> None:
        super().__init__(
            f"{method} {path} is not served: send {allowed} with the request in the body "
            "(the API is described at /docs)."
        )
        self.allow = allowed


class UnauthorizedError(ServiceError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__(
            "Missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token "
            "configured in MCP_AUTH_TOKEN."
        )


class RequestTooLargeError(ServiceError):
    status = 413
    code = "request_too_large"

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"Request body too large: at most {limit_bytes // (1024 * 1024)} MiB. Send smaller "
            "images (or image ids returned by this server) and prompts."
        )


class BusyError(ServiceError):
    status = 429
    code = "busy"
    retry_after = 5

    def __init__(self, model: str, replicas: int, slots: int, waiting: int) -> None:
        super().__init__(
            f"The model {model!r} is busy: the {slots} generation slots of its {replicas} "
            f"runtime replica(s) are in use and {waiting} requests are already waiting. Retry "
            "in a few seconds, or raise MAX_CONCURRENT_PER_RUNTIME / MAX_QUEUE_PER_RUNTIME "
            "(per replica) or the InferenceService's maxReplicas."
        )


class ClientBusyError(ServiceError):
    """One client holds its share of this server; others are being served."""

    status = 429
    code = "client_limit"
    retry_after = 5

    def __init__(self, client: str, limit: int) -> None:
        super().__init__(
            f"Too many generations from this client ({client}): it already has {limit} "
            "running or waiting on this server, the most one client may have so that other "
            "clients are served too (MAX_CONCURRENT_PER_CLIENT). Wait for one of them to "
            "finish, then retry."
        )


class ModelUnavailableError(ServiceError):
    """No usable model under that name right now (discovery says why)."""

    status = 503
    code = "unavailable"
    retry_after = 5


class StoreUnavailableError(ServiceError):
    """The image store could not be read or written; the message names the store and cause."""

    status = 503
    code = "store_unavailable"


class RuntimeCallError(ServiceError):
    """A call to a runtime failed; `code` says how (timeout, dns, connect, ...)."""

    def __init__(self, message: str, *, code: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RuntimeRejectedError(RuntimeCallError):
    """The runtime rejected the request itself (HTTP 400); the message names the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_request", status=400)


def field_problems(errors: Sequence[Any]) -> str:
    """Pydantic's errors as "field: what is wrong and what is allowed; ...", without its links
    to its documentation (a person or a model reads these, not a pydantic developer)."""
    parts = []
    for error in errors:
        field = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
