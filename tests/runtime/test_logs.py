"""The terminal's log: one readable line per request, no library chatter; JSON when asked."""

from __future__ import annotations

import json

from scripts.servers import DEFAULT_MODEL, start_runtime
from tests.runtime.helpers import predict


def test_text_logs_say_one_line_per_request_and_no_library_warnings(tmp_path):
    with start_runtime(tmp_path, MODEL_ID=str(DEFAULT_MODEL), LOG_FORMAT="text") as runtime:
        answer = predict(runtime.url, {"prompt": "a red circle on a blue background", "seed": 1})
        assert answer.status_code == 200
        log = runtime.log()
    lines = [line for line in log.splitlines() if line.strip()]
    about_request = [line for line in lines if "a red circle on a blue background" in line]
    assert len(about_request) == 1, log
    assert "128x128, 20 steps, seed 1 in" in about_request[0]
    assert not [line for line in lines if line.lstrip().startswith("{")], log
    for chatter in ("torchvision", "Warning", "deprecated", "POST /v1/models"):
        assert chatter not in log, chatter


def test_json_logs_keep_every_line_parseable(runtime):
    predict(runtime.url, {"prompt": "json", "width": 64, "height": 64, "num_inference_steps": 2})
    lines = [line for line in runtime.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "request_id", "message"} <= json.loads(line).keys()
