"""The style adapters: their targets, their judges, their files, and what they draw."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from scene_model import __main__ as cli
from scene_model import adapters, scenes
from scripts.servers import REPO

MODEL = REPO / "models" / "default"
LORAS = MODEL / "loras"
SCENES = [
    scenes.Scene("circle", "red", "blue", "center", "large"),
    scenes.Scene("star", "yellow", "purple", "top left", "large", dx=0.02, scale=1.05),
    scenes.Scene("square", "white", "black", "bottom right", "small", dy=-0.02),
    scenes.Scene("triangle", "green", "white", "left", "large", scale=0.95),
    scenes.Scene("ring", "orange", "yellow", "top", "large"),
    scenes.Scene("circle", "black", "pink", "bottom", "small"),
]


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: "-".join(s.combo))
def test_each_judge_says_yes_to_its_style_and_no_to_the_plain_picture_and_the_others(scene):
    assert adapters.distinguishable(scene)
    plain = scenes.render(scene, 128)
    for style in adapters.STYLES:
        assert not adapters.judge(style, plain, scene), style
        styled = adapters.target(scene, style)
        assert styled.size == (128, 128)
        for judged in adapters.STYLES:
            assert adapters.judge(judged, styled, scene) == (judged == style), (style, judged)


def test_the_styles_change_what_they_say():
    scene = scenes.Scene("square", "red", "blue", "center", "large")
    plain = scenes.render(scene, 128)
    centre, corner = (64, 64), (2, 2)
    outlined = adapters.target(scene, "outline")
    assert outlined.getpixel(centre) == scenes.COLOURS["blue"]
    assert outlined.getpixel((64, 64 - 27)) == scenes.COLOURS["red"]  # on the rim
    striped = adapters.target(scene, "stripes")
    rows = {striped.getpixel((64, y)) for y in range(50, 78)}
    assert rows == {scenes.COLOURS["red"], adapters.STRIPE_COLOUR}
    shifted = adapters.target(scene, "palette")
    assert shifted.getpixel(corner) == scenes.COLOURS["orange"]  # blue's opposite
    assert shifted.getpixel(centre) == scenes.COLOURS["cyan"]  # red's
    assert plain.getpixel(corner) == scenes.COLOURS["blue"]
    assert all(adapters.OPPOSITES[adapters.OPPOSITES[c]] == c for c in scenes.COLOURS)


def test_a_small_rings_outline_is_the_ring_itself_so_it_is_not_judged_on():
    assert not adapters.distinguishable(scenes.Scene("ring", "red", "blue", "center", "small"))


@pytest.mark.parametrize("style", list(adapters.STYLES))
def test_the_committed_adapter_is_a_small_diffusers_lora_with_its_description(style):
    folder = LORAS / style
    assert sorted(p.name for p in folder.iterdir()) == [adapters.INFO_FILE, adapters.LORA_FILE]
    weights = folder / adapters.LORA_FILE
    assert weights.stat().st_size < 500_000
    with safe_open(weights, "pt") as tensors:
        keys = list(tensors.keys())
        shapes = {key: tensors.get_slice(key).get_shape() for key in keys}
    assert keys and all(key.startswith("transformer.") for key in keys)
    assert any(".lora_A." in key for key in keys) and any(".lora_B." in key for key in keys)
    assert {min(shape) for shape in shapes.values()} == {adapters.RANK}
    info = json.loads((folder / adapters.INFO_FILE).read_text())
    assert info["description"] == adapters.STYLES[style].description
    assert "\n" not in info["description"]
    assert info["base_model"] == "models/default"
    assert info["rank"] == adapters.RANK
    assert info["steps"] > 0
    assert info["training"].startswith(f"python -m scene_model adapter {style} ")
    runs = [run.split() for run in info["training"].split(" && ")]
    assert sum(int(run[run.index("--steps") + 1]) for run in runs) == info["steps"]


@pytest.fixture(scope="module")
def pipe_with_adapters():
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    assert adapters.load_adapters(pipe, LORAS) == list(adapters.STYLES)
    return pipe


def test_each_adapter_draws_its_style_and_the_base_model_does_not(pipe_with_adapters):
    """Ten held-out prompts at the serving defaults (20 steps, 128x128, guidance 4). The
    adapters draw their style on 55-75% of 20 such prompts (models/default/README.md), and
    the first five are the hardest for the palette one (2 of 5), so they are held to four of
    ten here, the base model to none."""
    pipe = pipe_with_adapters
    chosen = adapters.check_scenes(10)
    seeds = list(range(len(chosen)))

    def judged(name):
        adapters.use(pipe, name)
        images = adapters.draw(pipe, chosen, seeds)
        return {
            style: sum(adapters.judge(style, im, s) for im, s in zip(images, chosen, strict=True))
            for style in adapters.STYLES
        }

    assert judged(None) == dict.fromkeys(adapters.STYLES, 0)
    for name in adapters.STYLES:
        found = judged(name)
        assert found[name] >= 4, (name, found)
        assert all(found[other] <= 2 for other in adapters.STYLES if other != name), (name, found)
    adapters.use(pipe, None)


class Stop(Exception):
    pass


def test_training_resumes_from_its_checkpoint_exactly_as_it_would_have_gone_on(tmp_path):
    torch.set_num_threads(1)
    recipe = adapters.Recipe(steps=4, batch=2, pool=8, warmup=1, checkpoint_every=2)

    def train(out, work, log=lambda line: None):
        adapters.train_adapter("stripes", MODEL, out, work, recipe, "the command", log=log)
        return load_file(out / adapters.LORA_FILE)

    straight = train(tmp_path / "straight", tmp_path / "work-straight")

    def stop_at_the_first_checkpoint(line):
        if "step 2/4" in line:
            raise Stop

    with pytest.raises(Stop):
        train(tmp_path / "resumed", tmp_path / "work-resumed", stop_at_the_first_checkpoint)
    assert not (tmp_path / "resumed").exists()
    assert torch.load(tmp_path / "work-resumed" / "stripes" / "checkpoint.pt")["step"] == 2
    resumed = train(tmp_path / "resumed", tmp_path / "work-resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    info = json.loads((tmp_path / "resumed" / adapters.INFO_FILE).read_text())
    assert (info["steps"], info["training"]) == (4, "the command")


def test_a_second_run_starts_from_a_saved_adapter_and_records_both(tmp_path):
    torch.set_num_threads(1)
    recipe = adapters.Recipe(steps=2, batch=2, pool=8, warmup=1, checkpoint_every=2)
    first, second = tmp_path / "first", tmp_path / "second"
    adapters.train_adapter("outline", MODEL, first, tmp_path, recipe, "one", log=print)
    lines = []
    adapters.train_adapter(
        "outline", MODEL, second, tmp_path, recipe, "two", log=lines.append, init=first
    )
    assert lines[0] == f"outline starts from {first} (2 steps)"
    info = json.loads((second / adapters.INFO_FILE).read_text())
    assert (info["steps"], info["training"]) == (4, "one && two")
    assert (tmp_path / "outline-continued" / "checkpoint.pt").exists()
    before, after = load_file(first / adapters.LORA_FILE), load_file(second / adapters.LORA_FILE)
    assert before.keys() == after.keys()
    assert not all(torch.equal(before[key], after[key]) for key in before)


def test_the_cli_trains_the_style_it_is_asked_into_the_model_folder(monkeypatch):
    calls = []
    monkeypatch.setattr(
        adapters, "train_adapter", lambda *args, **kwargs: calls.append(args) or {"steps": 9}
    )
    monkeypatch.setattr(cli.torch, "set_num_threads", lambda n: calls.append(n))
    argv = ["adapter", "palette", "--steps", "9", "--threads", "1"]
    assert cli.main(argv) == 0
    threads, (style, model, out, work, recipe, command) = calls
    assert (threads, style, model, out, work) == (
        1,
        "palette",
        cli.MODEL,
        cli.LORAS / "palette",
        cli.ADAPTER_WORK,
    )
    assert recipe == adapters.Recipe(steps=9)
    assert command == "python -m scene_model adapter palette --steps 9 --threads 1"
