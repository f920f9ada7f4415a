"""`make bench`, speed tiers: what each tier gains over the bare pipeline and what it costs.

For each tier, on the default model at 128x128/20 and 256x256/20 (guidance 4, one image, one
torch thread): the latency against the bare diffusers call, interleaved round by round in this
one process; the mean absolute pixel difference and PSNR against `exact` on the same prompts
and seeds; and the model's evaluation (colour, background, kind, position, size) over its 250
held-out prompts. Writes bench/results/tiers.json and tiers.md.

    python -m bench.tiers [--prompts 250] [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from bench.page import write_block
from diffusers_runtime.engine import Engine
from diffusers_runtime.loading import compile_denoiser
from diffusers_runtime.speed import SPEEDS, Speed, Speeds
from scene_model import evaluation

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = REPO / "models" / "default"
SIZES = (128, 256)
STEPS = 20
# A tier more than this many points below exact on any attribute is not offered under its name.
BAND = 0.02
PROMPTS = (
    "a red circle on a blue background",
    "a small yellow star in the top left corner on a purple background",
    "black background, large white ring",
    "a big green triangle at the bottom right on a pink background",
    "a tiny orange square at the top on a cyan background",
    "a white star on the left, black background",
)


class TieredPipe:
    """The pipeline as the runtime's engine runs it for one tier: what the evaluation calls."""

    def __init__(self, pipe: Any, speeds: Speeds, speed: Speed) -> None:
        self._pipe, self._speeds, self._speed = pipe, speeds, speed

    def set_progress_bar_config(self, **config: Any) -> None:
        self._pipe.set_progress_bar_config(**config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(), self._speeds.applied(self._pipe, self._speed):
            return self._pipe(*args, **kwargs)


def draw(call: Any, prompt: str, seed: int, size: int) -> np.ndarray:
    image = call(
        prompt,
        width=size,
        height=size,
        num_inference_steps=STEPS,
        guidance_scale=evaluation.GUIDANCE,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]
    return np.asarray(image).astype(np.float64)


def speed_rows(
    pipe: Any,
    speeds: Speeds,
    rounds: int,
    compiled: str = "off",
    bare_ms: dict[int, float] | None = None,
    reference: dict[int, list[np.ndarray]] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, list[np.ndarray]]]:
    """One row per size and tier. Eager (COMPILE off), the bare diffusers call runs beside the
    tiers; compiled, the tiers are compared with the eager bare call of the same run (BARE_MS),
    the pipeline's blocks being compiled in place. Differences are to REFERENCE (the eager
    exact pictures, returned by the eager run), else to this run's exact."""
    rows: list[dict[str, Any]] = []
    exact_pictures: dict[int, list[np.ndarray]] = {}
    for size in SIZES:
        calls: dict[str, Any] = {s: TieredPipe(pipe, speeds, s) for s in SPEEDS}
        if bare_ms is None:
            calls = {"bare": pipe, **calls}
        times: dict[str, list[float]] = {name: [] for name in calls}
        pictures: dict[str, list[np.ndarray]] = {name: [] for name in calls}
        for call in calls.values():  # warm-up
            draw(call, PROMPTS[0], 0, size)
        for index in range(rounds):
            prompt = PROMPTS[index % len(PROMPTS)]
            for name, call in calls.items():
                started = time.perf_counter()
                pictures[name].append(draw(call, prompt, index, size))
                times[name].append(time.perf_counter() - started)
        bare = statistics.median(times["bare"]) if bare_ms is None else bare_ms[size] / 1000
        exact_pictures[size] = pictures["exact"] if reference is None else reference[size]
        for speed in SPEEDS:
            errors = [a - b for a, b in zip(pictures[speed], exact_pictures[size], strict=True)]
            mse = float(np.mean([np.mean(e**2) for e in errors]))
            rows.append(
                {
                    "size": size,
                    "speed": speed,
                    "compile": compiled,
                    "median_ms": 1000 * statistics.median(times[speed]),
                    "bare_ms": 1000 * bare,
                    "speedup": bare / statistics.median(times[speed]),
                    "mean_abs_diff": float(np.mean([np.mean(np.abs(e)) for e in errors])),
                    "psnr_db": math.inf if mse == 0 else 10 * math.log10(255**2 / mse),
                }
            )
    return rows, exact_pictures


def compiled_rows(
    pipe: Any,
    speeds: Speeds,
    rounds: int,
    eager: list[dict[str, Any]],
    reference: dict[int, list[np.ndarray]],
) -> dict[str, Any]:
    """COMPILE default as the runtime applies it: the blocks compiled in place, warmed up at
    SIZES in every tier, then timed; and what a size outside the warm-up list costs."""
    assert compile_denoiser(pipe, "default").startswith("compile default applied")
    engine = Engine(pipe, "bench", max_batch_size=1, batch_window_seconds=0)
    warmup = engine.warm_up([(size, size) for size in SIZES], evaluation.GUIDANCE)
    bare = {row["size"]: row["bare_ms"] for row in eager if row["speed"] == "exact"}
    rows, _ = speed_rows(pipe, speeds, rounds, "default", bare, reference)
    exact = TieredPipe(pipe, speeds, "exact")
    new_size = 192
    started = time.perf_counter()
    draw(exact, PROMPTS[0], 0, new_size)
    first = time.perf_counter() - started
    started = time.perf_counter()
    draw(exact, PROMPTS[0], 1, new_size)
    return {
        "rows": rows,
        "warmup_s": warmup,
        "new_size": f"{new_size}x{new_size}",
        "new_size_first_s": first,
        "new_size_again_s": time.perf_counter() - started,
    }


def evaluation_rows(pipe: Any, speeds: Speeds, prompts: int) -> dict[str, dict[str, Any]]:
    found = {}
    for speed in SPEEDS:
        report = evaluation.evaluate(TieredPipe(pipe, speeds, speed), count=prompts)
        found[speed] = {
            "accuracy": report.accuracy,
            "free_place_accuracy": report.free_place_accuracy,
            "seconds_per_image_one_thread": report.seconds_per_image_one_thread,
            "deterministic": report.deterministic,
        }
    exact = found["exact"]["accuracy"]
    for figures in found.values():
        worst = min(figures["accuracy"][name] - exact[name] for name in exact)
        figures["within_band"] = worst >= -BAND
    return found


def markdown(
    rows: list[dict[str, Any]],
    evaluated: dict[str, dict[str, Any]],
    speeds: Speeds,
    compile_costs: dict[str, Any],
) -> str:
    lines = [
        f"Speed tiers, `models/default`, {STEPS} steps, guidance {evaluation.GUIDANCE}, one image, "
        "one torch thread; medians of interleaved rounds against the bare diffusers call in "
        "the same process; differences against eager `exact` on the same prompts and seeds.",
        "",
        "| size | tier | COMPILE | median | speed-up over bare | mean abs diff | PSNR |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        psnr = "identical" if math.isinf(row["psnr_db"]) else f"{row['psnr_db']:.1f} dB"
        lines.append(
            f"| {row['size']}x{row['size']} | {row['speed']} | {row['compile']} | "
            f"{row['median_ms']:.0f} ms "
            f"(bare {row['bare_ms']:.0f}) | **{row['speedup']:.2f}x** | "
            f"{row['mean_abs_diff']:.2f} | {psnr} |"
        )
    if evaluated:
        first = next(iter(evaluated.values()))
        names = list(first["accuracy"])
        lines += [
            "",
            "Evaluation (250 held-out prompts, 128x128; place left free in brackets, 100 prompts):",
            "",
            "| tier | " + " | ".join(names) + " | within 2 points of exact |",
            "| --- | " + " | ".join("---" for _ in names) + " | --- |",
        ]
        for speed, figures in evaluated.items():
            cells = []
            for name in names:
                free = figures["free_place_accuracy"].get(name)
                cell = f"{figures['accuracy'][name]:.1%}"
                cells.append(cell + (f" ({free:.1%})" if free is not None else ""))
            verdict = "yes" if figures["within_band"] else "**no**"
            lines.append(f"| {speed} | " + " | ".join(cells) + f" | {verdict} |")
    if compile_costs:
        lines += [
            "",
            f"COMPILE default: warm-up before ready {compile_costs['warmup_s']:.1f} s "
            f"({', '.join(f'{s}x{s}' for s in SIZES)}, every tier); a size outside the warm-up "
            f"list costs its first request {compile_costs['new_size_first_s']:.1f} s "
            f"({compile_costs['new_size']}, exact; then "
            f"{compile_costs['new_size_again_s']:.2f} s), "
            "once per size and tier.",
        ]
    lines += ["", "What each tier runs:", ""]
    lines += [f"- `{speed}`: {text}" for speed, text in speeds.describe().items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiers", description=__doc__)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--prompts", type=int, default=250, help="evaluation prompts (0: none)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per size")
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the COMPILE rows"
    )
    args = parser.parse_args()
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    speeds = Speeds.for_pipeline(pipe)
    rows, reference = speed_rows(pipe, speeds, args.rounds)
    torch.set_num_threads(2)  # the evaluation's accuracy does not depend on it
    evaluated = evaluation_rows(pipe, speeds, args.prompts) if args.prompts else {}
    torch.set_num_threads(1)
    compile_costs = (
        compiled_rows(pipe, speeds, args.rounds, rows, reference) if args.compile else {}
    )
    rows += compile_costs.pop("rows", [])
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "speed": rows,
        "evaluation": evaluated,
        "compile": compile_costs,
        "tiers": speeds.describe(),
    }
    (RESULTS / "tiers.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(rows, evaluated, speeds, compile_costs)
    (RESULTS / "tiers.md").write_text(text)
    write_block("tiers", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
