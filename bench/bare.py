"""The bare diffusers pipeline in a process of its own, for `make bench` to time against.

Reads one JSON object per line on stdin (width, height, num_inference_steps, seed), draws it
with the plain pipeline call (one torch thread, PNG-encoded as every layer's answer is) and
writes one line back when done. Started by bench/run.py; no server, no engine, no tiers.
"""

from __future__ import annotations

import json
import sys

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging

from diffusers_runtime.encoding import encode

PROMPT = "a small red circle in the top left corner on a blue background"


def main() -> int:
    model, threads, guidance = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    diffusers_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    print(json.dumps({"pipeline": type(pipe).__name__}), flush=True)
    for line in sys.stdin:
        params = json.loads(line)
        # The engine's own call: inference_mode is a little faster than the pipeline's no_grad.
        with torch.inference_mode():
            image = pipe(
                PROMPT,
                width=params["width"],
                height=params["height"],
                num_inference_steps=params["num_inference_steps"],
                guidance_scale=guidance,
                generator=torch.Generator("cpu").manual_seed(params.get("seed", 0)),
            ).images[0]
        encode(image, "png")
        print("done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
