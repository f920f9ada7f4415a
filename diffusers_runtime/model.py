"""DiffusersModel: the KServe model. Turns v1 instances and v2 tensors into generations for
the engine, and the engine's images into KServe responses."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from PIL import Image

from wire.logs import request_id as current_request_id

from . import metrics
from .encoding import PIL_FORMATS, encoded_image
from .engine import Engine, PartialCallback, ProgressCallback
from .errors import BadRequest, ModelNotLoaded, RuntimeFailure
from .loading import LoadedPipeline, load_pipeline
from .request import BACKGROUND, Generation, Limits, parse
from .settings import RuntimeSettings

log = logging.getLogger(__name__)


def limits_for(loaded: LoadedPipeline, settings: RuntimeSettings, engine: Engine) -> Limits:
    pipe = loaded.pipe
    vae_factor = getattr(pipe, "vae_scale_factor", 8)
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    config = getattr(denoiser, "config", {})
    patch = config.get("patch_size", 1) or 1
    sample = getattr(pipe, "default_sample_size", None) or config.get("sample_size", 64)
    # A UNet halves the latents at each down block but the last, and the first norm there
    # has one channel per group: below two latent pixels a side at that depth, it fails.
    downsamplings = len(config.get("down_block_types", ())) - 1 if hasattr(pipe, "unet") else 0
    default_side = sample * vae_factor
    while default_side * default_side > settings.max_pixels:
        default_side //= 2
    return Limits(
        max_pixels=settings.max_pixels,
        max_steps=settings.max_steps,
        max_images_per_request=settings.max_images_per_request,
        max_prompt_chars=settings.max_prompt_chars,
        size_multiple=vae_factor * patch,
        min_side=vae_factor * patch * (2 ** (downsamplings + 1) if downsamplings > 0 else 1),
        default_width=default_side,
        default_height=default_side,
        default_steps=min(settings.default_steps, settings.max_steps),
        default_guidance_scale=settings.default_guidance_scale,
        schedulers=engine.scheduler_names,
        supports_negative_prompt="negative_prompt" in inspect.signature(pipe.__call__).parameters,
        default_strength=settings.default_strength,
        max_input_image_bytes=settings.max_input_image_bytes,
        max_input_pixels=settings.max_input_pixels,
        edit_modes=engine.edit_modes,
        quality_steps=settings.quality_steps(),
        default_speed=settings.default_speed,
    )


class DiffusersModel(kserve.Model):
    def __init__(self, name: str, settings: RuntimeSettings):
        super().__init__(name)
        self.settings = settings
        self.loaded: LoadedPipeline | None = None
        self.engine: Engine | None = None
        self.limits: Limits | None = None

    def load(self) -> bool:
        self.loaded = load_pipeline(self.settings)
        self.engine = Engine(
            self.loaded.pipe,
            self.name,
            max_batch_size=self.settings.max_batch_size,
            batch_window_seconds=self.settings.batch_window_ms / 1000,
        )
        self.limits = limits_for(self.loaded, self.settings, self.engine)
        if self.loaded.compiled:
            sizes = self.settings.warmup_sizes() or [
                (self.limits.default_width, self.limits.default_height)
            ]
            seconds = self.engine.warm_up(sizes, self.limits.default_guidance_scale)
            log.info(
                "compile warm-up: %s in every speed tier, %.1f s",
                ", ".join(f"{w}x{h}" for w, h in sizes),
                seconds,
            )
        self.ready = True
        return self.ready

    def _serving(self) -> tuple[LoadedPipeline, Engine, Limits]:
        if self.loaded is None or self.engine is None or self.limits is None:
            raise ModelNotLoaded(
                f"model {self.name} is not loaded yet; retry when GET /v1/models/{self.name} "
                "answers ready"
            )
        return self.loaded, self.engine, self.limits

    def capabilities(self) -> dict[str, Any]:
        loaded, engine, limits = self._serving()
        return {
            "model_name": self.name,
            "pipeline": type(loaded.pipe).__name__,
            "device": loaded.device,
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "compiled": loaded.compiled,
            "max_pixels": limits.max_pixels,
            "max_steps": limits.max_steps,
            "max_images_per_request": limits.max_images_per_request,
            "max_prompt_chars": limits.max_prompt_chars,
            "size_multiple": limits.size_multiple,
            "min_side": limits.min_side,
            "default_width": limits.default_width,
            "default_height": limits.default_height,
            "default_steps": limits.default_steps,
            "default_guidance_scale": limits.default_guidance_scale,
            "schedulers": list(limits.schedulers),
            "output_formats": list(PIL_FORMATS),
            "quality_steps": limits.quality_steps,
            "speeds": engine.speeds.describe(),
            "default_speed": limits.default_speed,
            "max_batch_size": self.settings.max_batch_size,
            "edit_modes": {
                mode: {"supported": reason is None, "reason": reason}
                for mode, reason in limits.edit_modes.items()
            },
            "default_strength": limits.default_strength,
            "max_input_image_bytes": limits.max_input_image_bytes,
            "max_input_pixels": limits.max_input_pixels,
        }

    async def run(
        self,
        generation: Generation,
        route: str,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
    ) -> dict[str, Any]:
        """Generate and encode one request's images: one v1 prediction."""
        started = time.monotonic()
        try:
            _, engine, _ = self._serving()
            result = await engine.generate(
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
            generation.speed, result.batch_size, _quoted(generation.prompt),
        )  # fmt: skip
        return {
            "model_name": self.name,
            "prompt": generation.prompt,
            "negative_prompt": generation.negative_prompt,
            "image": images[0],
            "images": images,
            "seed": generation.seed,
            "seeds": [generation.seed + k for k in range(generation.num_images)],
            "width": generation.width,
            "height": generation.height,
            "num_inference_steps": generation.num_inference_steps,
            "guidance_scale": generation.guidance_scale,
            "scheduler": generation.scheduler or type(self._serving()[0].pipe.scheduler).__name__,
            "output_format": generation.output_format,
            "output_compression": generation.output_compression,
            "quality": generation.quality,
            "speed": generation.speed,
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
        return encoded_image(image, generation.output_format, generation.output_compression)

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
        if any(g.partial_images for g in generations):
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

    async def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return {"predictions": await self.run_all(self.parse_v1(payload), "predict")}

    def parse_v1(self, payload: Any, exactly_one: bool = False) -> list[Generation]:
        if isinstance(payload, bytes | str):
            # KServe hands over the raw body when the Content-Type is not JSON.
            try:
                payload = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"body: not valid JSON ({exc})") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise BadRequest('body: expected {"instances": [{"prompt": "...", ...}]}')
        extra = set(payload) - {"instances", "parameters"}
        if extra:
            raise BadRequest(f"body: unknown top-level field(s) {', '.join(sorted(extra))}")
        instances = payload["instances"]
        if not instances:
            raise BadRequest("instances: at least one instance is required")
        if exactly_one and len(instances) != 1:
            raise BadRequest(f"instances: this route takes exactly one, got {len(instances)}")
        defaults = payload.get("parameters") or {}
        if not isinstance(defaults, dict):
            raise BadRequest("parameters: must be an object of request fields")
        if "prompt" in defaults:
            raise BadRequest("parameters.prompt: each instance has its own prompt; move it there")
        return [
            self.parse(
                {**defaults, **raw} if isinstance(raw, dict) else raw, f"instances[{index}]."
            )
            for index, raw in enumerate(instances)
        ]

    def parse(self, raw: Any, where: str = "", strict: bool = True) -> Generation:
        """One request instance, checked against this model's limits (request.parse)."""
        return parse(raw, self._serving()[2], where, strict)

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        prompt_input = request.inputs[0] if len(request.inputs) == 1 else None
        if (
            prompt_input is None
            or prompt_input.name != "prompt"
            or prompt_input.datatype != "BYTES"
        ):
            raise BadRequest(
                'inputs: exactly one, a BYTES input named "prompt"; the other fields go in '
                "parameters"
            )
        prompts = [p.decode() if isinstance(p, bytes) else p for p in prompt_input.data]
        if not all(isinstance(p, str) for p in prompts):
            raise BadRequest("inputs.prompt: each element is a prompt, a string")
        if not prompts:
            raise BadRequest("inputs.prompt: no data; send one prompt per image to generate")
        fields = dict(request.parameters or {})
        generations = [
            self.parse({**fields, "prompt": prompt}, f"inputs.prompt[{index}] / parameters.")
            for index, prompt in enumerate(prompts)
        ]
        predictions = await self.run_all(generations, "infer")
        images = [image["b64"] for p in predictions for image in p["images"]]
        fmt = generations[0].output_format
        output = InferOutput(
            name="image",
            shape=[len(images)],
            datatype="BYTES",
            data=images,
            parameters={"content_type": f"image/{fmt};base64"},
        )
        return InferResponse(
            response_id=request.id or uuid.uuid4().hex,
            model_name=self.name,
            infer_outputs=[output],
            parameters={
                "seeds": ",".join(str(s) for p in predictions for s in p["seeds"]),
                "width": generations[0].width,
                "height": generations[0].height,
            },
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        return [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


def _quoted(prompt: str, limit: int = 80) -> str:
    return json.dumps(prompt if len(prompt) <= limit else prompt[: limit - 3] + "...")
