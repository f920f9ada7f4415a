"""Progress, cancellation and concurrency of the runtime, against a real process."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from scripts.servers import metric
from tests.helpers import SMALL
from tests.runtime.helpers import decode, predict

# Long enough on the tiny model (0.02-0.1 s a step at 256x256) to act during it.
LONG = {"width": 256, "height": 256, "num_inference_steps": 50}


def events(response: httpx.Response):
    """(event, data) pairs of an SSE response, as they arrive."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield event, json.loads(line.removeprefix("data: "))


def stream(url: str, instance: dict):
    return httpx.stream(
        "POST", f"{url}/v1/models/model:generate", json={"instances": [instance]}, timeout=120
    )


def test_one_progress_event_per_step_then_the_result(runtime):
    with stream(runtime.url, {**SMALL, "prompt": "steps", "num_inference_steps": 6}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = list(events(response))
    progress = [data for event, data in received if event == "progress"]
    assert progress == [{"step": k, "total": 6} for k in range(1, 7)]
    assert [event for event, _ in received][-1] == "result"
    result = received[-1][1]
    assert "image" not in result, "the stream sends each image once, in images"
    assert decode(result["images"][0]).size == (64, 64)


def test_partial_images_follow_the_progress_of_their_step(runtime):
    instance = {**SMALL, "prompt": "p", "num_inference_steps": 6, "partial_images": 2}
    with stream(runtime.url, {**instance, "num_images": 2}) as response:
        received = list(events(response))
    kinds = [
        f"{event}:{data['step']}" if event == "progress" else event for event, data in received
    ]
    assert kinds == [
        "progress:1", "progress:2", "partial_image", "partial_image", "progress:3",
        "progress:4", "partial_image", "partial_image", "progress:5", "progress:6", "result",
    ]  # fmt: skip
    partials = [data for event, data in received if event == "partial_image"]
    assert [(p["image_index"], p["partial_image_index"]) for p in partials] == [
        (0, 0), (1, 0), (0, 1), (1, 1),
    ]  # fmt: skip
    for partial in partials:
        assert (partial["width"], partial["height"], partial["quality"]) == (64, 64, None)
        assert decode(partial["image"]).size == (64, 64)


def test_stream_rejects_invalid_input_before_streaming(runtime):
    response = httpx.post(
        f"{runtime.url}/v1/models/model:generate",
        json={"instances": [{"prompt": "x", "width": 12}]},
    )
    assert response.status_code == 400
    assert "instances[0].width" in response.json()["error"]
    two = httpx.post(
        f"{runtime.url}/v1/models/model:generate",
        json={"instances": [{"prompt": "a"}, {"prompt": "b"}]},
    )
    assert two.status_code == 400 and "exactly one" in two.json()["error"]


def test_disconnect_stops_the_denoising_loop_and_the_next_request_runs(runtime):
    cancelled_before = metric(runtime.url, "diffusers_cancellations_total", model="model")
    steps_before = metric(runtime.url, "diffusers_denoising_steps_total", model="model")
    with stream(runtime.url, {**LONG, "prompt": "cancel me"}) as response:
        for event, data in events(response):
            if event == "progress" and data["step"] == 2:
                break
    time.sleep(1.0)
    steps_after = metric(runtime.url, "diffusers_denoising_steps_total", model="model")
    assert metric(runtime.url, "diffusers_cancellations_total", model="model") == (
        cancelled_before + 1
    )
    # Stopped within a step or two of the hang-up, not after all 50.
    assert steps_after - steps_before <= 5
    time.sleep(0.5)
    assert metric(runtime.url, "diffusers_denoising_steps_total", model="model") == steps_after
    started = time.monotonic()
    assert predict(runtime.url, {**SMALL, "prompt": "next"}).status_code == 200
    assert time.monotonic() - started < 10
    assert "stopped after step" in runtime.log()


def test_health_answers_quickly_during_a_long_generation(runtime):
    done = threading.Event()

    def generate():
        try:
            # All of LONG's steps: 30 of them took 0.5 s here, too short to probe health in.
            predict(runtime.url, {**LONG, "prompt": "long"})
        finally:
            done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(0.5)
    latencies = []
    while not done.is_set() and len(latencies) < 20:
        started = time.monotonic()
        assert httpx.get(f"{runtime.url}/v2/health/ready", timeout=5).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.05)
    worker.join()
    assert len(latencies) >= 3, "the generation ended before health could be probed"
    assert max(latencies) < 0.5, latencies


def test_four_concurrent_requests_all_succeed_with_their_own_images(runtime):
    def one(seed: int) -> dict:
        response = predict(runtime.url, {**SMALL, "prompt": f"p{seed}", "seed": seed})
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, [11, 12, 13, 14]))
    assert [r["seed"] for r in results] == [11, 12, 13, 14]
    assert [r["prompt"] for r in results] == ["p11", "p12", "p13", "p14"]
    assert len({r["image"]["b64"] for r in results}) == 4
