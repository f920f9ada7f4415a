"""`make bench`, LoRA adapters: what the first use of an adapter costs (reading and checking its
file, loading it into the pipeline), what switching between loaded adapters costs, and 8
concurrent clients over 3 adapters against 8 over none (the cost of grouping batches by
adapter set). The runtime's engine and adapters in this one process, on the default model and
its committed adapters: 128x128, 20 steps, guidance 4, the exact tier, one torch thread.
Writes bench/results/loras.json and the `loras` block of docs/performance.md.

    python -m bench.loras [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from peft.tuners.lora import LoraLayer

from bench.page import write_block
from diffusers_runtime.adapters import Adapters
from diffusers_runtime.engine import Engine
from diffusers_runtime.loading import load_pipeline
from diffusers_runtime.request import Generation, GenerationRequest
from diffusers_runtime.settings import RuntimeSettings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
MODEL = REPO / "models" / "default"
STYLES = ("outline", "stripes", "palette")
PROMPT = "a large red square in the center on a blue background"
CLIENTS = 8


def generation(seed: int, loras: tuple[tuple[str, float], ...] = ()) -> Generation:
    return Generation(
        request=GenerationRequest(prompt=PROMPT),
        width=128,
        height=128,
        num_inference_steps=20,
        guidance_scale=4.0,
        seed=seed,
        loras=loras,
    )


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def measure(pipe: Any, rounds: int) -> dict[str, Any]:
    adapters = Adapters(MODEL / "loras", pipe, "model", cache_size=8)
    engine = Engine(pipe, "model", max_batch_size=4, batch_window_seconds=0.05, adapters=adapters)

    async def one(*loras: tuple[str, float], seed: int = 0) -> float:
        started = time.perf_counter()
        await engine.generate(generation(seed, loras), "bench")
        return time.perf_counter() - started

    await one()  # warm: first call's allocations
    first: dict[str, dict[str, float]] = {}
    for style in STYLES:
        started = time.perf_counter()
        adapters.check([style])
        checked = time.perf_counter()
        # What the worker thread does before the batch's call (the engine is idle here).
        adapters.activate(((style, 1.0),))
        loaded = time.perf_counter()
        first[style] = {"check_ms": ms(checked - started), "load_ms": ms(loaded - checked)}
    plain, same, switching = [], [], []
    for _ in range(rounds):
        plain.append(await one())
        same.append(await one(("outline", 1.0)))
        same.append(await one(("outline", 1.0)))
        for style in STYLES:
            switching.append(await one((style, 1.0)))

    async def clients(loras: list[tuple[tuple[str, float], ...]]) -> float:
        started = time.perf_counter()
        await asyncio.gather(
            *(engine.generate(generation(k, loras[k]), "bench") for k in range(CLIENTS))
        )
        return time.perf_counter() - started

    none_wall, one_wall, mixed_wall = [], [], []
    mixed = [((STYLES[k % len(STYLES)], 1.0),) for k in range(CLIENTS)]
    for _ in range(rounds):
        none_wall.append(await clients([()] * CLIENTS))
        one_wall.append(await clients([(("outline", 1.0),)] * CLIENTS))
        mixed_wall.append(await clients(mixed))
    await engine.close()
    median = statistics.median
    return {
        "first_use": first,
        "no_adapter_ms": ms(median(plain)),
        "same_adapter_ms": ms(median(same)),
        "switching_adapters_ms": ms(median(switching)),
        "clients_none_ms": ms(median(none_wall)),
        "clients_one_adapter_ms": ms(median(one_wall)),
        "clients_three_adapters_ms": ms(median(mixed_wall)),
        "rounds": rounds,
    }


def per_sample_against_grouping(pipe: Any, rounds: int) -> dict[str, Any]:
    """Four requests of four adapter sets (each adapter alone, and none): in one pipeline call
    with peft's per-sample `adapter_names` (hooks on every LoRA layer: diffusers' SD3
    transformer does not pass it through), against one call per set, as the engine groups
    them. Also how far each mixed image is from its solo one."""
    names = [*STYLES, "__base__"]  # peft's name for no adapter
    kwargs: dict[str, Any] = {
        "num_inference_steps": 20, "guidance_scale": 4.0, "height": 128, "width": 128,
    }  # fmt: skip

    def call(count: int, seeds: list[int]) -> tuple[list[Any], float]:
        started = time.perf_counter()
        images = pipe(
            [PROMPT] * count,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            **kwargs,
        ).images
        return images, time.perf_counter() - started

    def alone(name: str, seed: int) -> tuple[Any, float]:
        if name == "__base__":
            pipe.disable_lora()
        else:
            pipe.enable_lora()
            pipe.set_adapters([name])
        (image,), seconds = call(1, [seed])
        return image, seconds

    def mixed() -> tuple[list[Any], float]:
        pipe.enable_lora()
        pipe.set_adapters(list(STYLES))
        per_sample = names * 2  # classifier-free guidance: the unconditional half, then ours
        hooks = [
            layer.register_forward_pre_hook(
                lambda _, args, kw: (args, {**kw, "adapter_names": per_sample}), with_kwargs=True
            )
            for layer in pipe.transformer.modules()
            if isinstance(layer, LoraLayer)
        ]
        try:
            return call(len(names), list(range(len(names))))
        finally:
            for hook in hooks:
                hook.remove()

    grouped_s, mixed_s, worst = [], [], 0
    for _ in range(rounds):
        solos = [alone(name, seed) for seed, name in enumerate(names)]
        grouped_s.append(sum(seconds for _, seconds in solos))
        images, seconds = mixed()
        mixed_s.append(seconds)
        for (solo, _), image in zip(solos, images, strict=True):
            difference = np.abs(np.asarray(solo, dtype=int) - np.asarray(image, dtype=int))
            worst = max(worst, int(difference.max()))
    pipe.disable_lora()
    return {
        "grouped_ms": ms(statistics.median(grouped_s)),
        "per_sample_ms": ms(statistics.median(mixed_s)),
        "per_sample_max_difference": worst,
    }


def markdown(found: dict[str, Any]) -> str:
    rows = [
        "| first use of | check (read its file, keys and shapes) | load into the pipeline |",
        "| --- | --- | --- |",
    ]
    for style, costs in found["first_use"].items():
        rows.append(f"| {style} | {costs['check_ms']} ms | {costs['load_ms']} ms |")
    per = found["per_sample"]
    mixing = found["clients_three_adapters_ms"] / found["clients_one_adapter_ms"]
    lora = found["clients_one_adapter_ms"] / found["clients_none_ms"]
    return "\n".join(
        [
            *rows,
            "",
            "The check runs on the request (once per file), the load on the worker thread "
            "between pipeline calls.",
            "",
            f"| one client, median of {found['rounds']} rounds | latency |",
            "| --- | --- |",
            f"| no adapter | {found['no_adapter_ms']} ms |",
            f"| the same adapter again | {found['same_adapter_ms']} ms |",
            f"| switching between three loaded adapters | {found['switching_adapters_ms']} ms |",
            "",
            f"{CLIENTS} concurrent clients (MAX_BATCH_SIZE 4), median wall time: no adapter "
            f"{found['clients_none_ms']} ms; all one adapter {found['clients_one_adapter_ms']} "
            f"ms (**{lora:.2f}x**: the LoRA layers' own work); over three adapters "
            f"{found['clients_three_adapters_ms']} ms (**{mixing:.2f}x** one adapter: what "
            "grouping batches by adapter set costs).",
            "",
            "Four requests with four adapter sets (outline, stripes, palette, none): one call "
            "per set, as the engine groups them, "
            f"{per['grouped_ms']} ms in all; one call with peft's per-sample `adapter_names`, "
            f"{per['per_sample_ms']} ms (**{per['per_sample_ms'] / per['grouped_ms']:.2f}x**), "
            f"each image within {per['per_sample_max_difference']}/255 of its solo one.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    diffusers_logging.set_verbosity_error()
    pipe = load_pipeline(RuntimeSettings(model_id=str(MODEL), torch_threads=1)).pipe
    pipe.set_progress_bar_config(disable=True)
    found = asyncio.run(measure(pipe, args.rounds))
    found["per_sample"] = per_sample_against_grouping(pipe, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loras.json").write_text(json.dumps(found, indent=2) + "\n")
    text = markdown(found)
    (RESULTS / "loras.md").write_text(text)
    write_block("loras", text)
    print(text)


if __name__ == "__main__":
    main()
