"""The runtime's HTTP contract, against a real process on the tiny model."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.helpers import SMALL
from tests.runtime.helpers import decode, predict


@pytest.mark.parametrize(
    ("fmt", "pil_format", "width", "height"),
    [("png", "PNG", 64, 64), ("jpeg", "JPEG", 128, 64), ("webp", "WEBP", 64, 96)],
)
def test_sizes_and_formats_decode(runtime, fmt, pil_format, width, height):
    response = predict(
        runtime.url,
        {**SMALL, "prompt": "a red barn", "width": width, "height": height, "output_format": fmt},
    )
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["image"]["format"] == pil_format
    image = decode(prediction["image"])
    assert image.format == pil_format
    assert image.size == (width, height)
    assert (prediction["width"], prediction["height"]) == (width, height)
    assert prediction["num_inference_steps"] == 4
    assert set(prediction["timings"]) >= {"queue_ms", "inference_ms", "encode_ms", "total_ms"}


def test_same_seed_same_bytes_different_seed_differs(runtime):
    request = {**SMALL, "prompt": "a lighthouse at dusk", "seed": 1234}
    first = predict(runtime.url, request).json()["predictions"][0]
    again = predict(runtime.url, request).json()["predictions"][0]
    other = predict(runtime.url, {**request, "seed": 1235}).json()["predictions"][0]
    assert first["seed"] == 1234
    assert first["image"]["b64"] == again["image"]["b64"]
    assert first["image"]["b64"] != other["image"]["b64"]


def test_every_instance_is_served_with_all_its_images(runtime):
    response = predict(
        runtime.url,
        {**SMALL, "prompt": "one", "seed": 1},
        {**SMALL, "prompt": "two", "seed": 2, "num_images": 3},
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert first["prompt"] == "one" and len(first["images"]) == 1
    assert second["prompt"] == "two" and len(second["images"]) == 3
    assert second["seeds"] == [2, 3, 4]
    assert len({image["b64"] for image in second["images"]}) == 3
    assert second["image"] == second["images"][0]


def test_image_k_of_a_request_is_reproducible_alone_by_its_seed(runtime):
    many = predict(runtime.url, {**SMALL, "prompt": "p", "seed": 40, "num_images": 2})
    alone = predict(runtime.url, {**SMALL, "prompt": "p", "seed": 41})
    second = decode(many.json()["predictions"][0]["images"][1])
    single = decode(alone.json()["predictions"][0]["image"])
    # One batch vs one image: within 1/255 per channel (DESIGN.md: not bit-identical).
    diff = np.abs(np.asarray(second, dtype=int) - np.asarray(single, dtype=int))
    assert diff.max() <= 2


def test_pndm_serves_fewer_than_four_steps(runtime):
    """Its Runge-Kutta warm-up fails below four steps; the runtime builds it as PLMS."""
    response = predict(
        runtime.url,
        {**SMALL, "prompt": "x", "scheduler": "PNDMScheduler", "num_inference_steps": 2},
    )
    assert response.status_code == 200, response.text


def test_scheduler_can_be_chosen(runtime):
    response = predict(runtime.url, {**SMALL, "prompt": "x", "scheduler": "DDIMScheduler"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["scheduler"] == "DDIMScheduler"


@pytest.mark.parametrize(
    ("instance", "names"),
    [
        ({"width": 64}, ["prompt", "required"]),
        ({"prompt": "x", "colour": "red"}, ["colour", "unknown field"]),
        ({"prompt": "x", "width": "64"}, ["width", "integer"]),
        ({"prompt": 5}, ["prompt", "string"]),
        ({"prompt": "x", "width": 65}, ["width", "multiple of 8"]),
        ({"prompt": "x", "width": 2048, "height": 2048}, ["width", "MAX_PIXELS"]),
        ({"prompt": "x", "num_inference_steps": 1000}, ["num_inference_steps", "limit"]),
        ({"prompt": "x", "num_inference_steps": 0}, ["num_inference_steps"]),
        ({"prompt": "x", "num_images": 50}, ["num_images", "limit"]),
        ({"prompt": "x" * 3000}, ["prompt", "characters"]),
        ({"prompt": ""}, ["prompt"]),
        ({"prompt": "x", "seed": -1}, ["seed"]),
        ({"prompt": "x", "guidance_scale": 500}, ["guidance_scale"]),
        ({"prompt": "x", "output_format": "gif"}, ["output_format", "png"]),
        ({"prompt": "x", "scheduler": "Nope"}, ["scheduler", "DDIMScheduler"]),
        ({"prompt": "x", "quality": "best"}, ["quality", "low"]),
        ({"prompt": "x", "quality": "low"}, ["quality", "num_inference_steps", "one of the two"]),
        ({"prompt": "x", "background": "transparent"}, ["background", "alpha", "opaque"]),
        ({"prompt": "x", "output_compression": 50}, ["output_compression", "jpeg or webp"]),
        (
            {"prompt": "x", "output_format": "webp", "output_compression": -1},
            ["output_compression"],
        ),
        ({"prompt": "x", "partial_images": 4}, ["partial_images", "3"]),
    ],
)
def test_invalid_instances_are_400_naming_the_field(runtime, instance, names):
    response = predict(runtime.url, {**SMALL, **instance} if "prompt" in instance else instance)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith("instances[0].")
    for name in names:
        assert name in message


def test_partial_images_are_refused_where_nothing_streams(runtime):
    response = predict(runtime.url, {**SMALL, "prompt": "x", "partial_images": 1})
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("partial_images:") and ":generate" in message


def test_second_instance_error_names_its_index(runtime):
    response = predict(runtime.url, {**SMALL, "prompt": "ok"}, {**SMALL, "prompt": "x", "width": 9})
    assert response.status_code == 400
    assert "instances[1].width" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"not json", "request format"),
        (b'{"instances": []}', "at least one"),
        (b'{"prompt": "x"}', "instances"),
        (b'{"instances": ["x"]}', "instances[0]"),
    ],
)
def test_malformed_bodies_are_400(runtime, body, expected):
    response = httpx.post(
        f"{runtime.url}/v1/models/model:predict",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert expected in response.json()["error"]


def test_v2_infer_generates_the_same_image_as_v1(runtime):
    response = httpx.post(
        f"{runtime.url}/v2/models/model/infer",
        json={
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a fox"]}],
            "parameters": {**SMALL, "seed": 7},
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["name"] == "image" and output["datatype"] == "BYTES"
    v1 = predict(runtime.url, {**SMALL, "prompt": "a fox", "seed": 7}).json()["predictions"][0]
    assert output["data"][0] == v1["image"]["b64"]
    assert decode({"b64": output["data"][0]}).size == (64, 64)


def test_v2_rejects_bad_parameters_naming_them(runtime):
    response = httpx.post(
        f"{runtime.url}/v2/models/model/infer",
        json={
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "parameters": {"width": 63},
        },
        timeout=30,
    )
    assert response.status_code == 400
    assert "width" in response.json()["error"]


def test_readiness_capabilities_and_unknown_model(runtime):
    assert httpx.get(f"{runtime.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{runtime.url}/v1/models/model").json()["ready"] is True
    caps = httpx.get(f"{runtime.url}/v1/models/model/capabilities").json()
    assert caps["pipeline"] == "StableDiffusionPipeline"
    assert caps["device"] == "cpu" and caps["dtype"] == "float32"
    assert caps["default_width"] == 256 and caps["size_multiple"] == 8
    assert "EulerDiscreteScheduler" in caps["schedulers"]
    unknown = httpx.post(
        f"{runtime.url}/v1/models/other:predict", json={"instances": [{"prompt": "x"}]}
    )
    assert unknown.status_code == 404


def test_request_id_is_logged_with_the_request(runtime):
    response = predict(
        runtime.url, {**SMALL, "prompt": "logged"}, headers={"X-Request-ID": "req-42abc"}
    )
    assert response.status_code == 200
    lines = [line for line in runtime.log().splitlines() if "req-42abc" in line]
    assert any("generated 1 image" in line for line in lines), runtime.log()[-2000:]


# Every route the runtime offers, by design: KServe's health and metadata, v1/v2 inference, ours.
# A KServe upgrade that adds a route fails this list until someone decides about it.
OFFERED = {
    "/",
    "/metrics",
    "/v1/models",
    "/v1/models/{model_name}",
    "/v1/models/{model_name}:predict",
    "/v1/models/{model_name}:generate",
    "/v1/models/{model_name}/capabilities",
    "/v1/models/{model_name}/adapters",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models",
    "/v2/models/{model_name}",
    "/v2/models/{model_name}/ready",
    "/v2/models/{model_name}/infer",
    "/openai/v1/images/generations",
    "/openai/v1/images/edits",
    "/openai/v1/models",
}


def test_no_request_can_unload_the_model_while_the_runtime_reports_live(runtime):
    """KServe's model-repository routes would unload the pipeline for good (a load cannot
    bring it back): the runtime does not offer them, nor :explain, under any method or name."""
    management = [
        f"/v2/repository/models/{name}/{action}"
        for name in ("model", "other")
        for action in ("load", "unload")
    ]
    management += [
        "/v2/repository/index",
        "/v1/models/model:explain",
        "/v2/models/model/versions/1/ready",
    ]
    for path in management:
        for method in ("POST", "GET", "PUT", "DELETE", "HEAD"):
            answer = httpx.request(method, f"{runtime.url}{path}", json={}, timeout=10)
            assert answer.status_code == 404, (method, path, answer.text)
            if method != "HEAD":
                assert "not offered by this runtime" in answer.json()["error"], (method, path)
            ready = httpx.get(f"{runtime.url}/v1/models/model", timeout=10).json()
            assert ready["ready"] is True, (method, path)
    published = httpx.get(f"{runtime.url}/openapi.json", timeout=10).json()["paths"]
    assert set(published) == OFFERED
    assert httpx.get(f"{runtime.url}/v2/health/ready", timeout=10).status_code == 200
    assert predict(runtime.url, {**SMALL, "prompt": "still here"}).status_code == 200
