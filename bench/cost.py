"""`make bench`, how cost grows: latency and peak memory of one pipeline call against image
size, steps, batch size and speed tier, on the default model, one torch thread, and the
largest batch that still improves throughput. Writes bench/results/cost.json and cost.md.

    python -m bench.cost
"""

from __future__ import annotations

import ctypes
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from bench.page import write_block
from bench.tiers import MODEL, RESULTS, TieredPipe
from diffusers_runtime.speed import SPEEDS, Speeds
from scene_model import evaluation

SIZES = (64, 128, 256, 512)
STEPS = (4, 20, 50)
BATCHES = (1, 2, 4, 8)
REPEATS = 3


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_baseline() -> float:
    """The resident set once the allocator has returned what it kept from earlier calls, with
    the peak reset to it (Linux: writing 5 to clear_refs resets VmHWM)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def measure(call: Any, size: int, steps: int, batch: int) -> dict[str, float]:
    def once(seed: int) -> None:
        call(
            ["a red circle on a blue background"] * batch,
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=evaluation.GUIDANCE,
            generator=[torch.Generator().manual_seed(seed + k) for k in range(batch)],
        )

    once(0)  # warm-up
    before = memory_baseline()
    times = []
    for seed in range(REPEATS):
        started = time.perf_counter()
        once(seed)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    return {
        "size": size,
        "steps": steps,
        "batch": batch,
        "median_ms": 1000 * seconds,
        "images_per_s": batch / seconds,
        "peak_extra_mib": status_mib("VmHWM") - before,
    }


def main() -> int:
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(MODEL)
    pipe.set_progress_bar_config(disable=True)
    speeds = Speeds.for_pipeline(pipe)
    rows = []
    for speed in SPEEDS:
        call = TieredPipe(pipe, speeds, speed)
        grid = [(size, 20, 1) for size in SIZES]
        grid += [(128, steps, 1) for steps in STEPS if steps != 20]
        grid += [(128, 20, batch) for batch in BATCHES if batch != 1]
        for size, steps, batch in grid:
            rows.append({"speed": speed, **measure(call, size, steps, batch)})
            print(rows[-1], flush=True)
    best = {}
    for speed in SPEEDS:
        batched = [r for r in rows if r["speed"] == speed and r["size"] == 128 and r["steps"] == 20]
        batched.sort(key=lambda r: r["batch"])
        # The largest batch whose throughput is at least 5% above the next smaller one's.
        best[speed] = max(
            (
                b["batch"]
                for a, b in itertools.pairwise(batched)
                if b["images_per_s"] > 1.05 * a["images_per_s"]
            ),
            default=1,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost.json").write_text(json.dumps({"rows": rows, "best_batch": best}, indent=2))
    text = markdown(rows, best)
    (RESULTS / "cost.md").write_text(text)
    write_block("cost", text)
    print(text)
    return 0


def markdown(rows: list[dict[str, Any]], best: dict[str, int]) -> str:
    lines = [
        "How cost grows (CPU-measured here: 2 cores, one torch thread, `models/default`, "
        f"guidance {evaluation.GUIDANCE}; medians of {REPEATS}; memory is how far the process's "
        "resident set peaked above its level before the calls, the allocator's cache emptied):",
        "",
        "| tier | size | steps | batch | median | images/s | peak memory added |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['speed']} | {r['size']}x{r['size']} | {r['steps']} | {r['batch']} | "
            f"{r['median_ms']:.0f} ms | {r['images_per_s']:.2f} | {r['peak_extra_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "Largest batch that still raised throughput by 5% or more (128x128/20): "
        + ", ".join(f"{speed} {batch}" for speed, batch in best.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
