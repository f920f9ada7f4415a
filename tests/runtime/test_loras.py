"""LoRA adapters per request, on the shipped model and its committed adapters (LORA_DIR a copy
of models/default/loras beside broken ones): each style shows on the pixels, the base bytes
stay the base bytes, adapters combine, concurrent clients keep their solo images, bad adapters
are refused with a reason, and the cache evicts and reloads."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from scene_model import adapters as styles
from scene_model.scenes import Scene, full_caption
from scripts.servers import DEFAULT_MODEL, ServerProcess, metric, start_runtime
from tests.runtime.helpers import decode, predict

ADAPTERS = DEFAULT_MODEL / "loras"
STYLES = ("outline", "stripes", "palette")
# A scene whose three styles the judges read at seed 0 (scene_model.adapters: each adapter draws
# its style on 4 or more of 5 held-out scenes, not on every one).
SCENE = Scene(shape="square", colour="pink", background="yellow", position="center", size="large")
PROMPT = full_caption(SCENE)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed adapters, and three that must be refused."""
    folder = tmp_path_factory.mktemp("loras")
    for style in STYLES:
        shutil.copytree(ADAPTERS / style, folder / style)
    weights = load_file(ADAPTERS / "outline" / styles.LORA_FILE)
    # The same layers, a model twice as wide.
    wider = {
        k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k else v
        for k, v in weights.items()
    }
    (folder / "wider").mkdir()
    save_file(wider, folder / "wider" / styles.LORA_FILE)
    # A UNet model's adapter.
    save_file(
        {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 320)},
        folder / "unet-family.safetensors",
    )
    data = (ADAPTERS / "outline" / styles.LORA_FILE).read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, lora_dir: Path) -> Iterator[ServerProcess]:
    with start_runtime(
        tmp_path_factory.mktemp("lora-runtime"),
        MODEL_ID=str(DEFAULT_MODEL),
        LORA_DIR=str(lora_dir),
        LORA_CACHE_SIZE="2",
        MAX_LORAS_PER_REQUEST="2",
        BATCH_WINDOW_MS="200",
    ) as server:
        yield server


def draw(url: str, *loras: tuple[str, float], prompt: str = PROMPT, seed: int = 0) -> np.ndarray:
    response = predict(
        url,
        {
            "prompt": prompt,
            "seed": seed,
            "speed": "exact",
            "loras": [{"name": name, "scale": scale} for name, scale in loras],
        },
    )
    assert response.status_code == 200, response.text
    return np.asarray(decode(response.json()["predictions"][0]["images"][0]), dtype=int)


def image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8))


def test_scale_zero_and_every_request_without_adapters_give_the_base_bytes(served) -> None:
    before = draw(served.url)  # no adapter loaded yet
    with_outline = draw(served.url, ("outline", 1.0))
    assert np.abs(with_outline - before).mean() > 5
    assert (draw(served.url) == before).all()
    assert (draw(served.url, ("outline", 0.0)) == before).all()


@pytest.mark.parametrize("style", STYLES)
def test_each_style_shows_with_its_adapter_and_not_without(served, style: str) -> None:
    assert styles.judge(style, image(draw(served.url, (style, 1.0))), SCENE)
    assert not styles.judge(style, image(draw(served.url)), SCENE)


def test_two_adapters_combine(served) -> None:
    """Stripes in the shifted palette: the stripes where the palette puts the shape's colour."""
    both = image(draw(served.url, ("stripes", 1.0), ("palette", 1.0)))
    shifted = dataclasses.replace(
        SCENE, colour=styles.OPPOSITES[SCENE.colour], background=styles.OPPOSITES[SCENE.background]
    )
    assert styles.judge("palette", both, SCENE)
    assert styles.judge("stripes", both, shifted)
    assert not styles.judge("stripes", image(draw(served.url, ("palette", 1.0))), shifted)


def test_concurrent_clients_with_different_adapters_get_their_solo_images(served) -> None:
    requests = [(), (("outline", 1.0),), (("stripes", 0.8),), (("outline", 1.0),), ()]
    solo = [draw(served.url, *loras, seed=k) for k, loras in enumerate(requests)]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{served.url}/v1/models/model:predict",
                        json={
                            "instances": [
                                {
                                    "prompt": PROMPT,
                                    "seed": k,
                                    "speed": "exact",
                                    "loras": [{"name": n, "scale": s} for n, s in loras],
                                }
                            ]
                        },
                    )
                    for k, loras in enumerate(requests)
                )
            )

    answers = asyncio.run(together())
    batches = []
    for alone, answer in zip(solo, answers, strict=True):
        prediction = answer.json()["predictions"][0]
        batches.append(prediction["batch_size"])
        mixed = np.asarray(decode(prediction["images"][0]), dtype=int)
        assert np.abs(mixed - alone).max() <= 1
    assert max(batches) > 1, "requests with the same adapters shared a call"


@pytest.mark.parametrize(
    ("loras", "says"),
    [
        ([{"name": "sketchy"}], "no adapter 'sketchy' here; available: outline, palette"),
        ([{"name": "sketchy", "scale": 0}], "no adapter 'sketchy' here"),
        ([{"name": "wider"}], "was trained for another base model: transformer."),
        ([{"name": "unet-family"}], "is for another model family: it has weights for 'unet'"),
        ([{"name": "truncated"}], "could not be read"),
        ([{"name": "outline", "scale": 2.5}], "loras.0.scale"),
        ([{"name": "outline"}, {"name": "palette"}, {"name": "stripes"}], "at most 2"),
        ([{"name": "outline"}, {"name": "outline", "scale": 0.5}], "outline more than once"),
        ([{"name": "a.b"}], "loras.0.name"),
    ],
)
def test_bad_adapters_are_refused_and_the_runtime_serves_on(served, loras, says) -> None:
    response = predict(served.url, {"prompt": PROMPT, "loras": loras})
    assert response.status_code == 400
    assert says in response.json()["error"]
    assert predict(served.url, {"prompt": PROMPT, "num_inference_steps": 2}).status_code == 200


def test_adapters_are_listed_and_one_copied_in_is_served_without_a_restart(
    served, lora_dir: Path
) -> None:
    listed = httpx.get(f"{served.url}/v1/models/model/adapters", timeout=10).json()
    names = {a["name"]: a["description"] for a in listed["adapters"]}
    assert set(STYLES) <= names.keys() and "Draws the shape as an outline" in names["outline"]
    assert listed["max_loras_per_request"] == 2 and listed["scale_range"] == [-2.0, 2.0]
    capabilities = httpx.get(f"{served.url}/v1/models/model/capabilities", timeout=10).json()
    assert capabilities["loras"] == listed["adapters"]
    shutil.copy(ADAPTERS / "outline" / styles.LORA_FILE, lora_dir / "outline-copy.safetensors")
    try:
        assert (draw(served.url, ("outline-copy", 1.0)) == draw(served.url, ("outline", 1.0))).all()
    finally:
        (lora_dir / "outline-copy.safetensors").unlink()


def test_the_cache_keeps_two_evicts_the_oldest_and_reloads_it_the_same(served) -> None:
    def count(name: str, **labels: str) -> float:
        return metric(served.url, name, model="model", **labels)

    first = draw(served.url, ("outline", 1.0))
    draw(served.url, ("stripes", 1.0))
    loads, evictions = count("diffusers_lora_loads_total"), count("diffusers_lora_evictions_total")
    hits = count("diffusers_lora_cache_total", result="hit")
    draw(served.url, ("stripes", 1.0))  # cached
    assert count("diffusers_lora_cache_total", result="hit") == hits + 1
    draw(served.url, ("palette", 1.0))  # a third: the oldest, outline, goes
    assert count("diffusers_lora_evictions_total") == evictions + 1
    assert (draw(served.url, ("outline", 1.0)) == first).all()  # loaded again, same bytes
    assert count("diffusers_lora_loads_total") == loads + 2
    assert count("diffusers_lora_load_seconds_count") >= loads + 2


def test_v2_and_the_openai_route_take_loras_as_predict_does(served) -> None:
    loras = [{"name": "outline", "scale": 1.0}]
    v1 = predict(served.url, {"prompt": PROMPT, "seed": 5, "speed": "exact", "loras": loras})
    expected = v1.json()["predictions"][0]["image"]["b64"]
    v2 = httpx.post(
        f"{served.url}/v2/models/model/infer",
        json={
            "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}],
            # KServe's v2 parameters are scalars: the list as its JSON text.
            "parameters": {"seed": 5, "speed": "exact", "loras": json.dumps(loras)},
        },
        timeout=120,
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"][0] == expected
    openai = httpx.post(
        f"{served.url}/openai/v1/images/generations",
        json={"prompt": PROMPT, "seed": 5, "speed": "exact", "loras": loras},
        timeout=120,
    )
    assert openai.status_code == 200, openai.text
    assert openai.json()["data"][0]["b64_json"] == expected


def test_lora_preload_loads_before_ready_and_an_unknown_one_stops_the_start(tmp_path) -> None:
    with start_runtime(tmp_path, MODEL_ID=str(DEFAULT_MODEL), LORA_PRELOAD="outline,palette") as up:
        assert metric(up.url, "diffusers_lora_loads_total", model="model") == 2
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_runtime", "--enable_grpc", "false"],
        env={"MODEL_ID": str(DEFAULT_MODEL), "LORA_PRELOAD": "sepia", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "LORA_PRELOAD: loras: no adapter 'sepia' here; available: outline" in result.stderr
