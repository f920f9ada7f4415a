"""The generation core: the pipeline loaded once, the limits it is served with, and one
request's way through the engine to encoded images. KServe's adapter (model.py), the progress
stream (stream.py) and the OpenAI routes (openai_api.py) call it; it knows no HTTP shape."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

from PIL import Image

from wire.fields import MAX_LORA_SCALE, MIN_LORA_SCALE
from wire.logs import request_id as current_request_id

from . import metrics
from .adapters import Adapters
from .encoding import PIL_FORMATS, encoded_image
from .engine import Engine, PartialCallback, ProgressCallback
from .errors import BadRequest, RuntimeFailure
from .loading import LoadedPipeline, load_pipeline
from .request import BACKGROUND, Generation, Limits, parse
from .serving import ServedDefaults, read_serving_file, resolve_defaults
from .settings import RuntimeSettings, SettingsError

log = logging.getLogger(__name__)


def limits_for(
    loaded: LoadedPipeline, settings: RuntimeSettings, engine: Engine
) -> tuple[Limits, ServedDefaults]:
    """The settings that are limits, under their own names, and what the pipeline decides; the
    defaults from the environment, the model folder's serving.json or the runtime (serving.py)."""
    pipe = loaded.pipe
    vae_factor = getattr(pipe, "vae_scale_factor", 8)
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    config = getattr(denoiser, "config", {})
    patch = config.get("patch_size", 1) or 1
    sample = getattr(pipe, "default_sample_size", None) or config.get("sample_size", 64)
    size_multiple = vae_factor * patch
    # A UNet halves the latents at each down block but the last, and the first norm there
    # has one channel per group: below two latent pixels a side at that depth, it fails.
    downsamplings = len(config.get("down_block_types", ())) - 1 if hasattr(pipe, "unet") else 0
    found = read_serving_file(loaded.folder) if loaded.folder else None
    defaults = resolve_defaults(settings, found, sample * vae_factor, size_multiple)
    decided: dict[str, Any] = {
        "size_multiple": size_multiple,
        "min_side": size_multiple * (2 ** (downsamplings + 1) if downsamplings > 0 else 1),
        "default_width": defaults.width,
        "default_height": defaults.height,
        "default_steps": defaults.steps,
        "default_guidance_scale": defaults.guidance_scale,
        "schedulers": engine.scheduler_names,
        "supports_negative_prompt": (
            "negative_prompt" in inspect.signature(pipe.__call__).parameters
        ),
        "edit_modes": engine.edit_modes,
        "quality_steps": settings.quality_steps(defaults.steps),
    }
    configured = {
        field.name: getattr(settings, field.name)
        for field in dataclasses.fields(Limits)
        if field.name not in decided
    }
    log.info(
        "serving defaults: %dx%d (%s), %d steps (%s), guidance %g (%s)%s",
        defaults.width, defaults.height, defaults.sources["default_width"],
        defaults.steps, defaults.sources["default_steps"],
        defaults.guidance_scale, defaults.sources["default_guidance_scale"],
        f"; model serving file {defaults.file}" if defaults.file else "",
    )  # fmt: skip
    return Limits(**configured, **decided), defaults


class Generator:
    """Loads the pipeline (once, in the constructor) and serves generations of it as NAME."""

    def __init__(self, name: str, settings: RuntimeSettings) -> None:
        self.name = name
        self.settings = settings
        self.loaded: LoadedPipeline = load_pipeline(settings)
        lora_dir = settings.lora_dir or (self.loaded.folder and self.loaded.folder / "loras")
        self.adapters = Adapters(
            Path(lora_dir) if lora_dir else None, self.loaded.pipe, name, settings.lora_cache_size
        )
        self.engine = Engine(
            self.loaded.pipe,
            name,
            max_batch_size=settings.max_batch_size,
            batch_window_seconds=settings.batch_window_ms / 1000,
            adapters=self.adapters,
        )
        self.limits, self.defaults = limits_for(self.loaded, settings, self.engine)
        if preload := settings.preloaded_loras():
            try:
                self.adapters.preload(preload)
            except BadRequest as exc:
                raise SettingsError(f"invalid runtime configuration: {exc}") from None
        if self.loaded.compiled:
            sizes = settings.warmup_sizes() or [
                (self.limits.default_width, self.limits.default_height)
            ]
            seconds = self.engine.warm_up(sizes, self.limits.default_guidance_scale)
            log.info(
                "compile warm-up: %s in every speed tier, %.1f s",
                ", ".join(f"{w}x{h}" for w, h in sizes),
                seconds,
            )

    def parse(self, raw: Any, where: str = "", strict: bool = True) -> Generation:
        """One request instance, checked against this model's limits (request.parse) and
        adapters."""
        generation = parse(raw, self.limits, where, strict)
        # Every name asked for, those at scale 0 too: a misspelt one is refused, not ignored.
        self.adapters.check([lora.name for lora in generation.request.loras or ()], where)
        return generation

    def capabilities(self) -> dict[str, Any]:
        """The pipeline's facts, then the limits it is served with."""
        limits = dataclasses.asdict(self.limits)
        return {
            "model_name": self.name,
            "pipeline": type(self.loaded.pipe).__name__,
            "device": self.loaded.device,
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "compiled": self.loaded.compiled,
            "output_formats": list(PIL_FORMATS),
            "speeds": self.engine.speeds.describe(),
            "max_batch_size": self.settings.max_batch_size,
            **limits,
            **self.defaults.describe(),
            "schedulers": list(self.limits.schedulers),
            "loras": self.adapters.describe(),
            "lora_scale_range": [MIN_LORA_SCALE, MAX_LORA_SCALE],
            "edit_modes": {
                mode: {"supported": reason is None, "reason": reason}
                for mode, reason in self.limits.edit_modes.items()
            },
        }

    async def run(
        self,
        generation: Generation,
        route: str,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
    ) -> dict[str, Any]:
        """Generate and encode one request's images: one prediction."""
        started = time.monotonic()
        try:
            result = await self.engine.generate(
                generation, current_request_id.get() or "-", on_progress, on_partial
            )
            encode_started = time.monotonic()
            images = await asyncio.to_thread(
                lambda: [self.encode(i, generation) for i in result.images]
            )
        except asyncio.CancelledError:
            metrics.REQUESTS.labels(self.name, route, "cancelled").inc()
            raise
        except RuntimeFailure:
            metrics.REQUESTS.labels(self.name, route, "error").inc()
            raise
        done = time.monotonic()
        metrics.REQUESTS.labels(self.name, route, "ok").inc()
        metrics.IMAGES.labels(self.name).inc(len(images))
        metrics.GENERATION_SECONDS.labels(self.name).observe(done - started)
        log.info(
            "generated %d image(s) %dx%d, %d steps, seed %d in %.0f ms (%s, batch of %d): %s",
            len(images), generation.width, generation.height,
            generation.num_inference_steps, generation.seed, (done - started) * 1000,
            generation.speed, result.batch_size, _quoted(generation.request.prompt),
        )  # fmt: skip
        return {
            "model_name": self.name,
            "prompt": generation.request.prompt,
            "negative_prompt": generation.request.negative_prompt,
            "images": images,
            "seed": generation.seed,
            "seeds": [generation.seed + k for k in range(generation.num_images)],
            "width": generation.width,
            "height": generation.height,
            "num_inference_steps": generation.num_inference_steps,
            "guidance_scale": generation.guidance_scale,
            "scheduler": generation.request.scheduler or type(self.loaded.pipe.scheduler).__name__,
            "output_format": generation.output_format,
            "output_compression": generation.request.output_compression,
            "quality": generation.quality,
            "speed": generation.speed,
            "loras": [{"name": name, "scale": scale} for name, scale in generation.loras],
            "background": BACKGROUND,
            "mode": generation.mode,
            **self._edit_fields(generation),
            "timings": {
                "queue_ms": round(result.queue_seconds * 1000, 1),
                "inference_ms": round(result.inference_seconds * 1000, 1),
                "encode_ms": round((done - encode_started) * 1000, 1),
                "total_ms": round((done - started) * 1000, 1),
            },
            "batch_size": result.batch_size,
        }

    @staticmethod
    def encode(image: Image.Image, generation: Generation) -> dict[str, str]:
        return encoded_image(image, generation.output_format, generation.request.output_compression)

    @staticmethod
    def _edit_fields(generation: Generation) -> dict[str, Any]:
        if generation.strength is None:  # text-to-image
            return {}
        # Diffusers skips the first (1 - strength) of the schedule: say how many steps ran.
        effective = min(
            int(generation.num_inference_steps * generation.strength),
            generation.num_inference_steps,
        )
        return {"strength": generation.strength, "effective_steps": effective}

    async def run_all(self, generations: list[Generation], route: str) -> list[dict[str, Any]]:
        if any(g.request.partial_images for g in generations):
            raise BadRequest(
                "partial_images: only streams carry partial images (POST "
                f"/v1/models/{self.name}:generate, or the /openai/v1/images routes with stream "
                "true); stream, or leave partial_images out"
            )
        try:
            # A task group cancels the siblings when one instance fails: no orphaned work.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.run(g, route)) for g in generations]
        except* (BadRequest, RuntimeFailure) as group:
            raise group.exceptions[0] from None
        return [task.result() for task in tasks]


def _quoted(prompt: str, limit: int = 80) -> str:
    return json.dumps(prompt if len(prompt) <= limit else prompt[: limit - 3] + "...")
