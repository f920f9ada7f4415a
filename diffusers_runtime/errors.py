"""The runtime's failures and the HTTP answers they become.

KServe maps its own InvalidInput to 400 and everything else to 500; these subclasses let the
runtime say 503 for a full device and log a client mistake without a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput

log = logging.getLogger(__name__)


class BadRequest(InvalidInput):
    """The client's request is wrong; the message names the field."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_request"


class RuntimeFailure(Exception):
    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "generation_failed"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class DeviceOutOfMemory(RuntimeFailure):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "out_of_memory"


class ModelNotLoaded(RuntimeFailure):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_not_loaded"


class GenerationFailed(RuntimeFailure):
    pass


class ReplicaStopping(RuntimeFailure):
    """SIGTERM came before the request started: another replica should serve it."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "replica_stopping"


class GenerationCancelled(Exception):
    """Raised from the step callback to stop the denoising loop of a cancelled request."""


def error_body(exc: BadRequest | RuntimeFailure) -> dict[str, object]:
    return {"error": str(exc), "status": int(exc.status)}


def openai_error_body(exc: BadRequest | RuntimeFailure) -> dict[str, object]:
    """OpenAI's error shape: its client raises with `message`, as a response body or as a
    stream event."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return {"error": {"message": str(exc), "type": kind, "param": None, "code": exc.code}}


async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
    log.warning("rejected request: %s", exc)
    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


async def _runtime_failure(_: Request, exc: RuntimeFailure) -> JSONResponse:
    log.error("request failed: %s", exc.message)
    return JSONResponse(status_code=exc.status, content={"error": exc.message})


def install_handlers(app: FastAPI) -> None:
    app.exception_handler(BadRequest)(_bad_request)
    app.exception_handler(RuntimeFailure)(_runtime_failure)
