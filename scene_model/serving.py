"""The serving defaults the export writes into the model folder (`serving.json`).

The runtime reads the file when it loads the folder (diffusers_runtime/serving.py, schema and
precedence in docs/runtime.md), so the model is served at the guidance, steps and size it was
evaluated at, and list_models shows its vocabulary and prompts it draws right, however the
folder is served. Everything here comes from the scene language and the evaluation, so a
retrain writes the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import captions, components, evaluation, scenes

SERVING_FILE = "serving.json"
STEPS = 20

# Prompts in the training phrasing that name all five attributes, and the scene each asks for:
# at the served defaults and seed 0 the shipped model draws every attribute of each right
# (tests/scene_model/test_serving.py).
EXAMPLES: tuple[tuple[str, scenes.Scene], ...] = (
    (
        "a red circle in the center on a blue background",
        scenes.Scene("circle", "red", "blue", "center", "large"),
    ),
    (
        "a large yellow star in the top left corner on a purple background",
        scenes.Scene("star", "yellow", "purple", "top left", "large"),
    ),
    (
        "black background, a large white ring in the middle",
        scenes.Scene("ring", "white", "black", "center", "large"),
    ),
    (
        "a big green triangle at the bottom right on a pink background",
        scenes.Scene("triangle", "green", "pink", "bottom right", "large"),
    ),
    (
        "a small orange square at the top on a cyan background",
        scenes.Scene("square", "orange", "cyan", "top", "small"),
    ),
    (
        "a small blue circle on the right over a yellow background",
        scenes.Scene("circle", "blue", "yellow", "right", "small"),
    ),
)

DESCRIPTION = (
    "Draws one shape (circle, square, triangle, star or ring) in one of ten colours, at one of "
    "nine places and two sizes, on a plain background of another colour. Say them in any order "
    "and ordinary phrasing (see the examples); words outside the vocabulary are ignored, and a "
    "shape without a place is drawn in the centre (see the model card)."
)


def _plain(phrase: str) -> str:
    return phrase.replace("{plain}", "").format("{colour}")


def serving_file() -> dict[str, Any]:
    """The content of serving.json."""
    seen = {p.format("{colour}") for p in scenes.BACKGROUND_PHRASES}
    return {
        "version": 1,
        "description": DESCRIPTION,
        "defaults": {
            "guidance_scale": evaluation.GUIDANCE,
            "num_inference_steps": STEPS,
            "width": components.NATIVE_SIZE,
            "height": components.NATIVE_SIZE,
        },
        "vocabulary": {
            "shapes": {kind: list(words) for kind, words in scenes.SHAPE_WORDS.items()},
            "colours": list(scenes.COLOURS),
            "positions": {
                place: list(phrases) for place, phrases in scenes.POSITION_PHRASES.items()
            },
            "sizes": {size: list(words) for size, words in scenes.SIZE_WORDS.items()},
            "backgrounds": [
                *(p.format("{colour}") for p in scenes.BACKGROUND_PHRASES),
                *(f"{p.format('{colour}')} ..." for p in scenes.BACKGROUND_LEADS),
                *(_plain(p) for p in captions.BACKGROUND_AFTER if _plain(p) not in seen),
            ],
            "frames": list(captions.FRAMES),
        },
        "examples": [prompt for prompt, _ in EXAMPLES],
    }


def write_serving_file(out: Path) -> Path:
    path = out / SERVING_FILE
    path.write_text(json.dumps(serving_file(), indent=2) + "\n")
    return path
