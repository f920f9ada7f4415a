"""How well a pipeline draws what it is asked, measured on prompts it never trained on.

The prompts describe held-out attribute combinations (see `scenes.held_out_combos`): no
training picture had that shape, colour, background, position and size together. Each picture
is read back with `analysis.read` and every attribute scored on its own.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from . import analysis, components, scenes

TARGETS = {"colour": 0.95, "background": 0.95, "shape": 0.85, "position": 0.85, "size": 0.90}
SECONDS_TARGET = 1.5
EVAL_SEED = 7
# Also measured, not held to the targets: the first of the prompts again without their place,
# as people often ask. The model then chooses one, and draws the asked kind far less often.
FREE_PLACE_PROMPTS = 100
# What the default model is served with (the export writes it into the folder's serving.json,
# which the runtime reads), so what a user gets unless they ask: it draws better at 4 than at
# the runtime's built-in 7.
GUIDANCE = 4.0


@dataclass
class Report:
    prompts: int
    size: int
    steps: int
    guidance_scale: float
    accuracy: dict[str, float]
    seconds_per_image_one_thread: float
    deterministic: bool
    misses: list[dict] = field(default_factory=list)
    # Accuracy on the first prompts asked without their place (FREE_PLACE_PROMPTS).
    free_place_prompts: int = 0
    free_place_accuracy: dict[str, float] = field(default_factory=dict)

    def passed(self) -> dict[str, bool]:
        checks = {name: self.accuracy[name] >= target for name, target in TARGETS.items()}
        checks["speed"] = self.seconds_per_image_one_thread <= SECONDS_TARGET
        checks["deterministic"] = self.deterministic
        return checks

    def markdown(self) -> str:
        lines = [
            f"{self.prompts} held-out prompts, {self.size}x{self.size}, {self.steps} steps, "
            f"guidance {self.guidance_scale}:",
            "",
            f"| attribute | right | place left free ({self.free_place_prompts} prompts) | target |",
            "| --- | --- | --- | --- |",
        ]
        for name, target in TARGETS.items():
            free = self.free_place_accuracy.get(name)
            lines.append(
                f"| {name} | {self.accuracy[name]:.1%} | "
                + ("-" if free is None else f"{free:.1%}")
                + f" | >= {target:.0%} |"
            )
        free_clean = self.free_place_accuracy.get("clean")
        lines.append(
            f"| clean pixels (crisp shape) | {self.accuracy.get('clean', 0):.1%} | "
            + ("-" if free_clean is None else f"{free_clean:.1%}")
            + " | |"
        )
        lines.append(
            f"| one image, one thread | {self.seconds_per_image_one_thread:.2f} s | "
            f"| <= {SECONDS_TARGET} s |"
        )
        lines.append(f"| same seed, same bytes | {'yes' if self.deterministic else 'NO'} | | yes |")
        return "\n".join(lines)


def evaluation_scenes(count: int) -> list[scenes.Scene]:
    combos = sorted(scenes.held_out_combos())
    chosen = random.Random(EVAL_SEED).sample(combos, min(count, len(combos)))
    return [scenes.Scene(*combo) for combo in chosen]


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    size: int,
    steps: int,
    guidance_scale: float = GUIDANCE,
    **kwargs,
):
    return pipe(
        prompts,
        height=size,
        width=size,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(seed) for seed in seeds],
        guidance_scale=guidance_scale,
        **kwargs,
    ).images


def seconds_per_image(pipe, size: int, steps: int) -> float:
    """Median of five single-image generations on one thread, after a warm-up."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for run in range(6):
            started = time.perf_counter()
            generate(pipe, ["a red circle on a blue background"], [run], size, steps)
            times.append(time.perf_counter() - started)
        return statistics.median(times[1:])
    finally:
        torch.set_num_threads(threads)


def evaluate(
    pipe,
    count: int = 250,
    size: int = components.NATIVE_SIZE,
    steps: int = 20,
    guidance_scale: float = GUIDANCE,
) -> Report:
    pipe.set_progress_bar_config(disable=True)
    chosen = evaluation_scenes(count)
    accuracy, misses = score(pipe, chosen, size, steps, guidance_scale, place=True)
    free = chosen[:FREE_PLACE_PROMPTS]
    free_accuracy, _ = score(pipe, free, size, steps, guidance_scale, place=False)
    del free_accuracy["position"]  # the prompt leaves it to the model
    probe = ["a small green star at the top right on a black background"]
    first, again = (generate(pipe, probe, [3], size, steps) for _ in range(2))
    return Report(
        prompts=len(chosen),
        size=size,
        steps=steps,
        guidance_scale=guidance_scale,
        accuracy=accuracy,
        seconds_per_image_one_thread=seconds_per_image(pipe, size, steps),
        deterministic=first[0].tobytes() == again[0].tobytes(),
        misses=misses,
        free_place_prompts=len(free),
        free_place_accuracy=free_accuracy,
    )


def score(
    pipe,
    chosen: list[scenes.Scene],
    size: int,
    steps: int,
    guidance_scale: float,
    place: bool = True,
    caption: Callable[[scenes.Scene], str] | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """The fraction of pictures that get each attribute right (and, as "clean", the mean share
    of their pixels that are the shape's or the background's colour), and the prompts of those
    that miss any. Prompts are the plain captions (with the place, or without), or CAPTION's."""
    right = dict.fromkeys(analysis.ATTRIBUTES, 0)
    clean = 0.0
    misses = []
    batch = 10
    for start in range(0, len(chosen), batch):
        group = chosen[start : start + batch]
        prompts = [caption(s) if caption else scenes.full_caption(s, place) for s in group]
        seeds = list(range(start, start + len(group)))
        for scene, prompt, image in zip(
            group,
            prompts,
            generate(pipe, prompts, seeds, size, steps, guidance_scale),
            strict=True,
        ):
            reading = analysis.read(image)
            clean += reading.clean
            found = reading.matches(scene)
            for name, ok in found.items():
                right[name] += ok
            if not all(found.values()):
                misses.append({"prompt": prompt, "wrong": [n for n, ok in found.items() if not ok]})
    scores = {name: n / len(chosen) for name, n in right.items()}
    return {**scores, "clean": clean / len(chosen)}, misses


SAMPLE_PROMPTS = (
    "a red circle on a blue background",
    "a small yellow star in the top left corner on a purple background",
    "black background, large white ring",
    "a big green triangle at the bottom right on a pink background",
    "a tiny orange square at the top on a cyan background",
    "a large blue donut in the middle on a yellow background",
    "a white star on the left, black background",
    "a small pink triangle in the lower left corner on a green background",
)


def sample_grid(pipe, path: Path, size: int = components.NATIVE_SIZE, seed: int = 0) -> list[str]:
    """A grid of pictures with their prompts under them, saved as one PNG."""
    pipe.set_progress_bar_config(disable=True)
    prompts = list(SAMPLE_PROMPTS)
    images = generate(pipe, prompts, [seed] * len(prompts), size, 20)
    columns, caption_height, pad = 4, 34, 6
    cell_w, cell_h = size + pad, size + caption_height
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        x, y = pad + (i % columns) * cell_w, pad + (i // columns) * cell_h
        grid.paste(image, (x, y))
        draw.multiline_text((x, y + size + 2), _wrap(prompt, 26), fill="black", spacing=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return prompts


def _wrap(text: str, width: int) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def write_report(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**report.__dict__, "passed": report.passed(), "targets": TARGETS}
    path.write_text(json.dumps(data, indent=2) + "\n")
