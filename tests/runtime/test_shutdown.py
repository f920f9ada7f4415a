"""SIGTERM (a scale-down): the runtime finishes the generation it runs, hands back at once a
waiting one that could not finish within SHUTDOWN_GRACE_SECONDS (the MCP server then sends it
to another replica), and exits 0. tests/reliability/test_runtime_faults.py shows the other
half: waiting work that fits in the grace period is served, not handed back."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from scripts.servers import ServerProcess, start_runtime
from tests.runtime.test_streaming import events, stream

# Runs first: about a second on the tiny model (ten on a loaded machine), within the grace.
SHORT = {"width": 128, "height": 128, "num_inference_steps": 30}
# Waits behind it, and would take about eighty times as long: more than the grace period.
TOO_LONG = {"width": 512, "height": 512, "num_inference_steps": 100}
GRACE_SECONDS = 30


@pytest.fixture
def stopping_runtime(tmp_path) -> ServerProcess:
    with start_runtime(
        tmp_path, MAX_BATCH_SIZE="1", SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS)
    ) as server:
        yield server


def test_sigterm_hands_back_what_cannot_finish_and_finishes_the_rest(stopping_runtime):
    answers: dict[str, list] = {"warm-up": [], "short": [], "long": []}
    stepping = threading.Event()
    arrival: dict[str, float] = {}

    def call(name: str, instance: dict) -> None:
        with stream(stopping_runtime.url, {"prompt": name, "seed": 1, **instance}) as response:
            for event, data in events(response):
                if event == "progress":
                    stepping.set()
                else:
                    arrival[name] = time.monotonic()
                answers[name].append((event, data))

    # The first pipeline call of a process is the slowest: not this one.
    call("warm-up", {"width": 64, "height": 64, "num_inference_steps": 2})
    stepping.clear()
    short = threading.Thread(target=call, args=("short", SHORT))
    short.start()
    assert stepping.wait(60)
    long = threading.Thread(target=call, args=("long", TOO_LONG))
    long.start()
    # Signalled the moment it waits behind the running one (one image per pipeline call): the
    # short one runs for well under a second on an idle machine, too little for a fixed sleep.
    deadline = time.monotonic() + 30
    while (
        'diffusers_requests_queued{model="model"} 1.0'
        not in httpx.get(f"{stopping_runtime.url}/metrics").text
    ):
        assert time.monotonic() < deadline, "the long request never queued"
        time.sleep(0.01)
    assert not answers["long"]
    stopping_runtime.process.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    short.join(60)
    long.join(60)

    ((event, data),) = answers["long"]
    assert event == "error"
    assert data["status"] == 503
    assert "shutting down" in data["error"] and "another replica" in data["error"]
    assert arrival["long"] - terminated < 2
    assert answers["short"][-1][0] == "result"
    assert stopping_runtime.process.wait(30) == 0, stopping_runtime.log()[-2000:]
