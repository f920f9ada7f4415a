"""Server-sent events as both deployables frame them."""

from __future__ import annotations

import json

# No cache may hold the stream back, nor a buffering proxy (nginx, OpenShift's router).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: object) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
