"""The serving defaults in the model folder: what the export writes, and what they promise."""

from __future__ import annotations

import json

import pytest

from diffusers_runtime.serving import ServingFile, read_serving_file
from scene_model import analysis, evaluation, scenes, serving, training
from scripts.servers import REPO

MODEL = REPO / "models" / "default"


def test_the_shipped_serving_file_is_what_the_export_writes_and_the_runtime_reads():
    shipped = json.loads((MODEL / serving.SERVING_FILE).read_text())
    assert shipped == serving.serving_file()
    found = read_serving_file(MODEL)
    assert found is not None and found[1] == ServingFile.model_validate(shipped)
    defaults = found[1].defaults
    assert (defaults.guidance_scale, defaults.num_inference_steps) == (evaluation.GUIDANCE, 20)
    assert (defaults.width, defaults.height) == (128, 128)


def test_the_export_writes_the_serving_file(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "load_autoencoder", lambda work, stage: None)
    monkeypatch.setattr(training, "fix_latent_space", lambda vae, plan: None)

    class Pipe:
        def save_pretrained(self, out, safe_serialization):
            out.mkdir(parents=True)

    monkeypatch.setattr(training, "trained_pipeline", lambda work, vae: (Pipe(), 7))
    monkeypatch.setattr(training.channels, "widen", lambda pipe: None)
    assert training.export(tmp_path / "work", tmp_path / "out", training.Plan()) == 7
    written = json.loads((tmp_path / "out" / serving.SERVING_FILE).read_text())
    assert written == serving.serving_file()


def test_the_examples_use_only_vocabulary_words():
    words = set(scenes.vocabulary())
    for prompt, _ in serving.EXAMPLES:
        assert set(prompt.replace(",", " , ").split()) <= words, prompt


@pytest.mark.parametrize(("prompt", "scene"), serving.EXAMPLES, ids=lambda v: str(v)[:24])
def test_the_model_draws_every_example_right_at_its_defaults(default_pipeline, prompt, scene):
    image = evaluation.generate(default_pipeline, [prompt], [0], 128, serving.STEPS)[0]
    found = analysis.read(image).matches(scene)
    assert all(found.values()), found
