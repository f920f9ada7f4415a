"""Hostile and malformed REST input: schema-driven fuzzing (schemathesis, valid and invalid
cases for every operation of the OpenAPI schema) and hand-made attacks (oversized bodies and
prompts, huge sizes and step counts, non-UTF-8, deeply nested JSON, wrong content types, path
traversal in image ids). No 5xx, the server never falls over, and every rejection names the
problem."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from scripts.servers import ServerProcess
from tests.reliability.hostile import AUTH, TRIED

EXAMPLES = {GenerationMode.POSITIVE: 100, GenerationMode.NEGATIVE: 100}


def assert_named_rejection(response: httpx.Response | object, what: str) -> None:
    """A 4xx says what is wrong: an OpenAI-style error with a non-empty message."""
    status = response.status_code
    assert status < 500, f"{what}: HTTP {status}: {response.text[:500]}"
    if 400 <= status < 500 and status not in (404, 405):
        message = response.json()["error"]["message"]
        assert len(message) > 10, f"{what}: {message!r}"


def test_schemathesis_finds_no_server_error(hostile_server: ServerProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{hostile_server.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/images/generations" for op in operations)
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case) -> None:
                response = case.call(base_url=hostile_server.url, headers=AUTH, timeout=60)
                TRIED[f"REST schemathesis {case.operation.method} {case.operation.path}"] += 1
                assert_named_rejection(response, f"{case.operation.path} {case}")

            try:
                check()
            except Unsatisfiable:
                # No input to make invalid (e.g. GET /health): nothing negative to send.
                assert mode == GenerationMode.NEGATIVE
    assert hostile_server.process.poll() is None
    assert "Traceback" not in hostile_server.log()


def post(server: ServerProcess, content: bytes, content_type: str | None = "application/json"):
    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    return httpx.post(
        f"{server.url}/v1/images/generations", content=content, headers=headers, timeout=60
    )


HANDMADE = {
    "oversized body (64 MiB)": (b'{"prompt": "' + b"a" * (64 * 1024 * 1024) + b'"}', "too large"),
    "oversized prompt (100k chars)": (json.dumps({"prompt": "p" * 100_000}).encode(), "prompt"),
    "huge size": (json.dumps({"prompt": "x", "size": "100000x100000"}).encode(), "width"),
    "huge steps": (json.dumps({"prompt": "x", "num_inference_steps": 10**9}).encode(), "steps"),
    "huge n": (json.dumps({"prompt": "x", "n": 10**6}).encode(), "num_images"),
    "huge integer": (b'{"prompt": "x", "seed": 1' + b"0" * 5000 + b"}", "JSON"),
    "NaN guidance": (b'{"prompt": "x", "guidance_scale": NaN}', "guidance"),
    "negative size": (json.dumps({"prompt": "x", "size": "-64x64"}).encode(), "size"),
    "non-UTF-8 body": (b'{"prompt": "\xff\xfe\xfa"}', "JSON"),
    "deeply nested JSON": (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "JSON"),
    "nested object as prompt": (b'{"prompt": ' + b'{"a":' * 500 + b"1" + b"}" * 501, "prompt"),
    "not JSON": (b"prompt=a cat", "JSON"),
    "empty body": (b"", "body"),
    "JSON array": (b'[{"prompt": "x"}]', "body"),
    "unknown field": (json.dumps({"prompt": "x", "evil": True}).encode(), "evil"),
    "NUL in prompt": (json.dumps({"prompt": "a\x00b", "size": "64x64"}).encode(), None),
}


@pytest.mark.parametrize("case", list(HANDMADE))
def test_handmade_hostile_bodies_are_rejected_by_name(
    hostile_server: ServerProcess, case: str
) -> None:
    body, named = HANDMADE[case]
    response = post(hostile_server, body)
    TRIED[f"REST hand-made body: {case}"] += 1
    assert_named_rejection(response, case)
    if named is not None:
        assert response.status_code in (400, 413, 422), response.text[:300]
        message = response.json()["error"]["message"]
        assert named.lower() in message.lower(), message[:300]
    assert httpx.get(f"{hostile_server.url}/health", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "application/json; charset=latin-1", "image/png"],
)  # fmt: skip
def test_wrong_content_types_are_rejected(
    hostile_server: ServerProcess, content_type: str | None
) -> None:
    response = post(hostile_server, b'{"prompt": "a cat", "size": "64x64"}', content_type)
    TRIED["REST wrong content type"] += 1
    assert_named_rejection(response, str(content_type))


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "....//....//etc//passwd",
    "..\\..\\windows\\win.ini",
    "%00" + "a" * 31,
    "a" * 31 + "%00",
    "images%2F..%2Fjobs%2F" + "a" * 32,
    "%2Fetc%2Fpasswd",
    "a" * 5000,
    "%C0%AE%C0%AE%2F" * 4,
    "%FF%FE" * 16,
    "😀" * 32,
]


@pytest.mark.parametrize("image_id", TRAVERSALS)
def test_path_traversal_in_image_ids_reads_nothing(
    hostile_server: ServerProcess, image_id: str
) -> None:
    response = httpx.get(f"{hostile_server.url}/v1/images/{image_id}", headers=AUTH, timeout=10)
    TRIED["REST image id traversal"] += 1
    assert response.status_code in (400, 404, 422), (response.status_code, response.text[:200])
    assert b"root:" not in response.content and b"[fonts]" not in response.content


def test_an_oversized_chunked_body_is_cut_off(hostile_server: ServerProcess) -> None:
    """No Content-Length to check up front: the server stops reading at its cap."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(48):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(
        f"{hostile_server.url}/v1/images/generations",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=60,
    )
    TRIED["REST hand-made body: oversized chunked body (48 MiB)"] += 1
    assert response.status_code == 413, response.text[:300]
    assert "too large" in response.json()["error"]["message"]
