"""The playground: a page at `/` for people, over the server's own REST API.

Its files are static and hold no data, so they are served without the bearer token; everything
the page then asks for goes through the REST routes and their authentication (the page asks
for the token once). Nothing is loaded from outside: a cluster often has no internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
# Same-origin only: the page talks to this server and nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
OPEN_PREFIX = "/static/"


async def _page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP})


def mount_playground(app: FastAPI) -> None:
    app.add_api_route("/", _page, include_in_schema=False, response_class=FileResponse)
    app.mount(OPEN_PREFIX.rstrip("/"), StaticFiles(directory=STATIC), name="static")
