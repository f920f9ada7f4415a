"""wire.logs: one JSON schema for both deployables, and request ids that cross them."""

from __future__ import annotations

import json
import logging

import httpx

from tests.helpers import SMALL
from wire.logs import JsonFormatter, request_id, request_id_from


def test_json_lines_carry_the_request_id_and_the_call_extras():
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "done %s", "args": ("ok",), "status": 201}
    )
    token = request_id.set("abc-1")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id.reset(token)
    assert entry["request_id"] == "abc-1"
    assert entry["message"] == "done ok"
    assert entry["status"] == 201
    assert json.loads(JsonFormatter().format(record))["request_id"] is None


def test_an_offered_id_is_kept_plain_and_a_missing_one_minted():
    assert request_id_from("caf\u00e9 <b> id-7") == "cafbid-7"
    assert len(request_id_from(None)) == 16
    assert request_id_from("x" * 100) == "x" * 64


def test_the_runtime_answers_with_the_request_id_it_logged(runtime):
    sent = httpx.post(
        f"{runtime.url}/v1/models/model:predict",
        json={"instances": [{**SMALL, "prompt": "traced"}]},
        headers={"X-Request-ID": "trace-77"},
        timeout=60,
    )
    assert sent.headers["x-request-id"] == "trace-77"
    minted = httpx.get(f"{runtime.url}/v1/models/model", timeout=10)
    assert len(minted.headers["x-request-id"]) == 16
