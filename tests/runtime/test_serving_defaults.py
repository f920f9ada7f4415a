"""A model folder's serving.json: its defaults are served unless the operator's environment
or the request says otherwise, capabilities say where each default came from, and a bad file
stops the runtime at start naming the file and the field (diffusers_runtime/serving.py)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from diffusers_runtime.serving import (
    ServingFile,
    ServingFileError,
    read_serving_file,
    resolve_defaults,
)
from diffusers_runtime.settings import RuntimeSettings
from scripts.servers import ServerError, start_runtime, tiny_model_dir
from tests.runtime.helpers import predict

SOURCES = ("default_width", "default_height", "default_steps", "default_guidance_scale")


def capabilities(url: str) -> dict:
    return httpx.get(f"{url}/v1/models/model/capabilities").json()


def test_the_default_model_is_served_at_its_own_defaults(default_runtime):
    caps = capabilities(default_runtime.url)
    assert (caps["default_width"], caps["default_height"]) == (128, 128)
    assert (caps["default_steps"], caps["default_guidance_scale"]) == (20, 4.0)
    assert caps["defaults_source"] == dict.fromkeys(SOURCES, "model")
    assert caps["serving_file"].endswith("models/default/serving.json")
    assert caps["quality_steps"]["medium"] == 20
    assert "star" in caps["vocabulary"]["shapes"] and "purple" in caps["vocabulary"]["colours"]
    assert caps["example_prompts"][0] == "a red circle in the center on a blue background"
    served = predict(default_runtime.url, {"prompt": "a red circle", "seed": 0}).json()
    (prediction,) = served["predictions"]
    assert (prediction["width"], prediction["height"]) == (128, 128)
    assert (prediction["num_inference_steps"], prediction["guidance_scale"]) == (20, 4.0)


def test_a_request_overrides_the_models_defaults(default_runtime):
    asked = {"width": 64, "height": 64, "num_inference_steps": 2, "guidance_scale": 7.5}
    response = predict(default_runtime.url, {"prompt": "a red circle", "seed": 0, **asked})
    (prediction,) = response.json()["predictions"]
    assert {k: prediction[k] for k in asked} == asked


def test_a_folder_without_the_file_keeps_the_runtimes_defaults(runtime):
    caps = capabilities(runtime.url)
    assert (caps["default_steps"], caps["default_guidance_scale"]) == (20, 7.0)
    assert caps["defaults_source"] == {
        "default_width": "pipeline",
        "default_height": "pipeline",
        "default_steps": "runtime",
        "default_guidance_scale": "runtime",
    }
    assert caps["serving_file"] is None and caps["vocabulary"] is None
    assert caps["example_prompts"] == []


def _file(**defaults: object) -> tuple[Path, ServingFile]:
    return Path("m/serving.json"), ServingFile.model_validate({"defaults": defaults})


def test_an_environment_variable_wins_over_the_file(monkeypatch):
    found = _file(guidance_scale=4.0, num_inference_steps=20, width=128, height=128)
    monkeypatch.setenv("DEFAULT_GUIDANCE_SCALE", "6")
    served = resolve_defaults(RuntimeSettings(), found, pipeline_side=256, size_multiple=16)
    assert (served.guidance_scale, served.steps, served.width) == (6.0, 20, 128)
    assert served.sources["default_guidance_scale"] == "environment"
    assert served.sources["default_steps"] == served.sources["default_width"] == "model"


def test_the_files_size_stays_within_the_limits():
    found = _file(num_inference_steps=50, width=256, height=128)
    settings = RuntimeSettings(max_steps=30, max_pixels=128 * 128)
    served = resolve_defaults(settings, found, pipeline_side=256, size_multiple=16)
    assert (served.steps, served.width, served.height) == (30, 128, 64)
    with pytest.raises(ServingFileError, match=r"m/serving.json: defaults.width: 120 is not a"):
        resolve_defaults(RuntimeSettings(), _file(width=120, height=128), 256, 16)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"defaults": {"guidance_scale": -1}}, "defaults.guidance_scale: Input should be greater"),
        ({"defaults": {"steps": 20}}, "defaults.steps: Extra inputs are not permitted"),
        ({"defaults": {"width": 128}}, "defaults: Value error, width and height go together"),
        ({"examples": "a red circle"}, "examples: Input should be a valid list"),
        ({"version": 2}, "version: Input should be 1"),
    ],
)
def test_a_bad_file_names_the_file_and_the_field(tmp_path, content, problem):
    (tmp_path / "serving.json").write_text(json.dumps(content))
    with pytest.raises(ServingFileError) as refused:
        read_serving_file(tmp_path)
    assert str(refused.value).startswith(f"invalid model serving file {tmp_path}/serving.json: ")
    assert problem in str(refused.value)


def test_the_runtime_refuses_to_start_on_a_bad_file(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for part in tiny_model_dir().iterdir():
        (folder / part.name).symlink_to(part)
    (folder / "serving.json").write_text('{"defaults": {"guidance_scale": "high"}}')
    with (
        pytest.raises(ServerError, match="exited") as refused,
        start_runtime(tmp_path, MODEL_ID=str(folder)),
    ):
        pass
    assert f"invalid model serving file {folder}/serving.json: defaults.guidance_scale" in str(
        refused.value
    )
