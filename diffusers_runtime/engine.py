"""The one place the pipeline runs.

Diffusers pipelines are not thread-safe, and a pipeline call holds the device for seconds, so
every call runs on one dedicated worker thread, off the event loop, one call at a time.
Requests that can share a call (same size, steps, guidance, scheduler) are gathered into one
batch: each keeps its own prompt and seeded generator, its own progress and cancellation.

Partial images are made here too, between steps: the decoded estimate of the final image.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, DiffusionPipeline
from PIL import Image

from . import metrics
from .adapters import Adapters
from .errors import (
    DeviceOutOfMemory,
    GenerationCancelled,
    GenerationFailed,
    ReplicaStopping,
    RuntimeFailure,
)
from .request import Generation
from .speed import SPEEDS, Speeds

log = logging.getLogger(__name__)

# Enough steps for every tier to run both its full and its predicted steps.
WARMUP_STEPS = 6

STOPPING = (
    "this runtime replica is shutting down (a scale-down or a restart) and had not started "
    "the request; send it again: another replica takes it"
)

# The denoiser input channels each inpainting pipeline runs, as its own __call__ checks them
# (latents alone, blended with the source at every step; or latents, mask and masked image):
# checked at load so that /capabilities does not offer an inpainting the first request fails.
INPAINT_CHANNELS = {
    "StableDiffusion3InpaintPipeline": ("transformer", (16, 33)),
    "StableDiffusionInpaintPipeline": ("unet", (4, 9)),
    "StableDiffusionXLInpaintPipeline": ("unet", (4, 9)),
}

ProgressCallback = Callable[[int, int], None]
# (image index within the request, partial image index, the picture)
PartialCallback = Callable[[int, int, Image.Image], None]


def partial_steps(total: int, count: int) -> list[int]:
    """The steps (1-based) after which a request's COUNT partial images are made: evenly
    spaced, never after the first step (the estimate needs the latents of the step before)
    nor the last (that one is the final image). Fewer when there are too few steps."""
    if total < 3:
        return []
    return sorted(
        {min(max(round((k + 1) * total / (count + 1)), 2), total - 1) for k in range(count)}
    )


def estimate_final(scheduler: Any, latents: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """The denoised latents the last step points at. Euler-type schedulers (flow matching,
    Euler) step x' = x + (sigma' - sigma) * d, and the clean sample is x' - sigma' * d (for flow
    matching d is the velocity, x0 = latents - sigma * velocity); d comes from the latents
    before and after the step. A scheduler without sigmas gets its latents decoded as they are
    (still noisy)."""
    sigmas = getattr(scheduler, "sigmas", None)
    index = getattr(scheduler, "step_index", None)
    if sigmas is None or index is None:
        return latents
    sigma, sigma_next = float(sigmas[index - 1]), float(sigmas[index])
    slope = (latents - previous) / (sigma_next - sigma)
    return latents - sigma_next * slope


def decode_latents(pipe: Any, latents: torch.Tensor, width: int, height: int) -> list[Image.Image]:
    """What the pipeline does after its last step, for any latents of its own."""
    unpack = getattr(pipe, "_unpack_latents", None)
    if unpack is not None:  # Flux packs 2x2 latent patches into tokens
        latents = unpack(latents, height, width, pipe.vae_scale_factor)
    config = pipe.vae.config
    latents = latents / config.scaling_factor + (config.get("shift_factor") or 0)
    pixels = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images


@dataclass(eq=False)
class Job:
    generation: Generation
    request_id: str
    on_progress: ProgressCallback | None
    future: asyncio.Future[list[Image.Image]]
    on_partial: PartialCallback | None = None
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0
    finished: float = 0.0
    batch_size: int = 0
    # Written on the event loop, read by the worker thread between steps.
    cancelled: bool = False


@dataclass
class EngineResult:
    images: list[Image.Image]
    queue_seconds: float
    inference_seconds: float
    batch_size: int


def unsupported_channels(variant: DiffusionPipeline) -> str | None:
    """Why VARIANT cannot run this model's denoiser; None when it can."""
    component, accepted = INPAINT_CHANNELS.get(type(variant).__name__, (None, ()))
    denoiser = getattr(variant, component, None) if component else None
    if denoiser is None or denoiser.config.in_channels in accepted:
        return None
    return (
        f"{type(variant).__name__} runs a {component} with "
        f"{' or '.join(map(str, accepted))} input channels and this model's has "
        f"{denoiser.config.in_channels}, so it cannot inpaint; image-to-image (an image without "
        "mask_image) still works"
    )


def build_scheduler(cls: Any, config: Any) -> Any:
    """CLS from another scheduler's CONFIG. PNDM's Runge-Kutta warm-up fails below 4 steps;
    Stable Diffusion's own configs skip it (PLMS), which serves every step count."""
    overrides = {"skip_prk_steps": True} if cls.__name__ == "PNDMScheduler" else {}
    return cls.from_config(config, **overrides)


def buildable_schedulers(scheduler: Any) -> dict[str, Any]:
    """The pipeline's scheduler and each compatible one its config builds, by class name.

    Diffusers lists some that cannot be built here: placeholders for schedulers whose optional
    dependency is missing (LMS needs scipy, DPMSolverSDE torchsde), and ones the config's own
    values break (EDMEuler takes a saved `sigma_min: null` for a number). Offering them would
    turn a valid request into a failed call."""
    found = {type(scheduler).__name__: type(scheduler)}
    for cls in scheduler.compatibles:
        try:
            # Some (KDPM2) warn thousands of times about numpy deprecations while building:
            # the library's to fix, and not what this probe is for.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build_scheduler(cls, scheduler.config)
        except Exception as exc:  # whatever the class raises, it cannot serve this pipeline
            log.debug("not offering %s: %s: %s", cls.__name__, type(exc).__name__, exc)
            continue
        found[cls.__name__] = cls
    return found


class Engine:
    def __init__(
        self,
        pipe: DiffusionPipeline,
        model_name: str,
        max_batch_size: int,
        batch_window_seconds: float,
        adapters: Adapters | None = None,
    ):
        self._pipe = pipe
        self._adapters = adapters
        self._model = model_name
        self._max_batch = max_batch_size
        self._window = batch_window_seconds
        self._schedulers = buildable_schedulers(pipe.scheduler)
        # Every variant below shares this pipeline's denoiser, and so its tiers.
        self.speeds = Speeds.for_pipeline(pipe)
        self._pipes: dict[tuple[str, str | None], DiffusionPipeline] = {}
        self.edit_modes: dict[str, str | None] = {}
        for mode, auto in (
            ("image", AutoPipelineForImage2Image),
            ("inpaint", AutoPipelineForInpainting),
        ):
            try:
                # from_pipe shares every weight with the loaded pipeline: no second copy.
                variant = auto.from_pipe(pipe)
            except (ValueError, KeyError) as exc:
                self.edit_modes[mode] = f"{type(pipe).__name__} has no {mode} variant ({exc})"
                continue
            self.edit_modes[mode] = unsupported_channels(variant)
            if self.edit_modes[mode] is None:
                self._pipes[(mode, None)] = variant
        self._pipes[("text", None)] = pipe
        for variant in self._pipes.values():
            variant.set_progress_bar_config(disable=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")
        self._waiting: deque[Job] = deque()
        # Binds to the event loop on first use (Python 3.10+), not here.
        self._arrived = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._concurrent = False
        # Set on SIGTERM: when the grace period ends. Until then a pipeline call starts only if
        # it can finish, at the seconds per step and pixel measured on the last call.
        self._stop_at: float | None = None
        self._pixel_step_seconds = 0.0

    def warm_up(self, sizes: list[tuple[int, int]], guidance_scale: float) -> float:
        """Compiled blocks compile on their first call at each shape in each tier: make those
        calls here, before the runtime reports ready, not in a user's request. Seconds taken."""
        started = time.monotonic()
        for width, height in sizes:
            for speed in SPEEDS:
                with torch.inference_mode(), self.speeds.applied(self._pipe, speed):
                    self._pipe(
                        "warm-up",
                        width=width,
                        height=height,
                        num_inference_steps=WARMUP_STEPS,
                        guidance_scale=guidance_scale,
                    )
        return time.monotonic() - started

    @property
    def scheduler_names(self) -> tuple[str, ...]:
        return tuple(sorted(self._schedulers))

    async def generate(
        self,
        generation: Generation,
        request_id: str,
        on_progress: ProgressCallback | None = None,
        on_partial: PartialCallback | None = None,
    ) -> EngineResult:
        """Run one request; cancelling the awaiting task stops its share of the work.
        ON_PARTIAL gets the request's `partial_images`; without it none are made."""
        loop = asyncio.get_running_loop()
        if self._dispatcher is None:
            self._dispatcher = loop.create_task(self._dispatch(), name="pipeline-dispatcher")
        job = Job(generation, request_id, on_progress, loop.create_future(), on_partial)
        self._waiting.append(job)
        metrics.QUEUED.labels(self._model).inc()
        self._arrived.set()
        try:
            images = await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                metrics.QUEUED.labels(self._model).dec()
            metrics.CANCELLATIONS.labels(self._model).inc()
            log.info("request %s cancelled by its client", request_id)
            raise
        return EngineResult(
            images=images,
            queue_seconds=job.started - job.enqueued,
            inference_seconds=job.finished - job.started,
            batch_size=job.batch_size,
        )

    async def _dispatch(self) -> None:
        while True:
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self._concurrent and self._window > 0 and self._batchable_rows() < self._max_batch:
                # Under concurrent load, a short wait lets the clients that are about to send
                # their next request share this call. A lone client never pays the wait.
                await asyncio.sleep(self._window)
                if not self._waiting:  # its requests were cancelled meanwhile
                    continue
            batch = self._take_batch()
            if not self._finishes_in_time(batch):
                self._hand_back(batch)
                continue
            self._concurrent = len(batch) > 1 or bool(self._waiting)
            try:
                await self._run(batch)
            except Exception:
                # A bug here must fail this batch, not stop the engine for every later request.
                log.exception("engine error serving %s", [job.request_id for job in batch])
                self._fail(
                    batch, GenerationFailed("internal error in the runtime engine"), "engine"
                )

    def drain(self, grace_seconds: float) -> None:
        """SIGTERM: the generations under way finish, and so do the waiting ones that can
        before the grace period ends. The others are handed back (503) rather than cut off
        midway: their clients send them to another replica."""
        self._stop_at = time.monotonic() + grace_seconds
        unfit = [job for job in self._waiting if not self._finishes_in_time([job])]
        for job in unfit:
            self._waiting.remove(job)
        metrics.QUEUED.labels(self._model).dec(len(unfit))
        self._hand_back(unfit)

    def _finishes_in_time(self, batch: list[Job]) -> bool:
        if self._stop_at is None:
            return True
        g = batch[0].generation
        pixels = sum(job.generation.num_images for job in batch) * g.width * g.height
        # Half as long again for the VAE decode and the encoding, which the steps leave out.
        needed = 1.5 * self._pixel_step_seconds * pixels * g.num_inference_steps
        return time.monotonic() + needed <= self._stop_at

    def _hand_back(self, jobs: list[Job]) -> None:
        if jobs:
            log.info("stopping: %d request(s) handed back unstarted", len(jobs))
            self._fail(jobs, ReplicaStopping(STOPPING), "stopping")

    def _batchable_rows(self) -> int:
        key = self._waiting[0].generation.batch_key()
        return sum(
            j.generation.num_images for j in self._waiting if j.generation.batch_key() == key
        )

    def _take_batch(self) -> list[Job]:
        first = self._waiting.popleft()
        batch, rows = [first], first.generation.num_images
        key = first.generation.batch_key()
        for job in list(self._waiting):
            size = job.generation.num_images
            if rows + size <= self._max_batch and job.generation.batch_key() == key:
                self._waiting.remove(job)
                batch.append(job)
                rows += size
        metrics.QUEUED.labels(self._model).dec(len(batch))
        return batch

    async def _run(self, batch: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(job.generation.num_images for job in batch)
        started = time.monotonic()
        for job in batch:
            job.started = started
            job.batch_size = rows
            metrics.QUEUE_SECONDS.labels(self._model).observe(started - job.enqueued)
        metrics.BATCH_SIZE.labels(self._model).observe(rows)
        metrics.IN_FLIGHT.labels(self._model).inc(len(batch))
        ids = ",".join(job.request_id for job in batch)
        try:
            images = await loop.run_in_executor(self._executor, self._call, batch, loop)
        except GenerationCancelled as stop:
            log.info("pipeline call for %s stopped after step %s: all cancelled", ids, stop)
            return
        except torch.OutOfMemoryError as exc:
            failure: RuntimeFailure = DeviceOutOfMemory(
                f"the device ran out of memory generating {rows} image(s) of "
                f"{batch[0].generation.width}x{batch[0].generation.height}; retry later, or "
                "ask for fewer or smaller images (ENABLE_CPU_OFFLOAD and the slicing "
                f"settings lower the memory need): {str(exc).splitlines()[0]}"
            )
            self._fail(batch, failure, "out_of_memory")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return
        except Exception as exc:
            log.exception("pipeline call for %s failed", ids)
            failure = GenerationFailed(
                f"the {type(self._pipe).__name__} call failed: {type(exc).__name__}: {exc}"
            )
            self._fail(batch, failure, "pipeline")
            return
        finally:
            metrics.IN_FLIGHT.labels(self._model).dec(len(batch))
        finished = time.monotonic()
        for job in batch:
            job.finished = finished
            count = job.generation.num_images
            mine, images = images[:count], images[count:]
            if not job.future.done():
                job.future.set_result(mine)

    def _fail(self, batch: list[Job], failure: Exception, kind: str) -> None:
        for job in batch:
            if not job.future.done():
                metrics.ERRORS.labels(self._model, kind).inc()
                job.future.set_exception(failure)

    def _pipe_for(self, mode: str, scheduler: str | None) -> DiffusionPipeline:
        # The default scheduler's pipes are built at start; another's on its first request.
        if scheduler is not None and (mode, scheduler) not in self._pipes:
            base = self._pipes[(mode, None)]
            cls = self._schedulers[scheduler]
            variant = type(base).from_pipe(
                base, scheduler=build_scheduler(cls, base.scheduler.config)
            )
            variant.set_progress_bar_config(disable=True)
            self._pipes[(mode, scheduler)] = variant
        return self._pipes[(mode, scheduler)]

    def _call(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> list[Image.Image]:
        """Runs on the worker thread."""
        first = batch[0].generation
        pipe = self._pipe_for(first.mode, first.request.scheduler)
        prompts, negatives, generators, sources, masks = [], [], [], [], []
        for job in batch:
            g = job.generation
            for index in range(g.num_images):
                prompts.append(g.request.prompt)
                negatives.append(g.request.negative_prompt or "")
                sources.append(g.image)
                masks.append(g.mask)
                # Image k of a request has seed + k: any image can be made again alone.
                generators.append(torch.Generator("cpu").manual_seed(g.seed + index))
        pixels = len(prompts) * first.width * first.height
        last_step = [time.monotonic()]
        partials = _Partials(pipe, batch, loop, self._model)

        def on_step_end(
            pipeline: Any, step: int, _timestep: Any, tensors: dict[str, Any]
        ) -> dict[str, Any]:
            now = time.monotonic()
            metrics.STEP_SECONDS.labels(self._model).observe(now - last_step[0])
            self._pixel_step_seconds = (now - last_step[0]) / pixels
            metrics.STEPS.labels(self._model).inc()
            last_step[0] = now
            live = [job for job in batch if not job.cancelled]
            if not live:
                # Raising (not pipe._interrupt) also skips the VAE decode.
                raise GenerationCancelled(step + 1)
            # Fewer than num_inference_steps when an edit's strength skips the first ones.
            total = getattr(pipeline, "num_timesteps", None) or first.num_inference_steps
            for job in live:
                if job.on_progress is not None:
                    loop.call_soon_threadsafe(job.on_progress, step + 1, total)
            if partials.wanted:
                partials.after_step(pipeline.scheduler, step + 1, total, tensors["latents"])
                # The next step's time is the denoiser's alone.
                last_step[0] = time.monotonic()
            return tensors

        kwargs = {
            "prompt": prompts,
            "width": first.width,
            "height": first.height,
            "num_inference_steps": first.num_inference_steps,
            "guidance_scale": first.guidance_scale,
            "generator": generators,
            "callback_on_step_end": on_step_end,
        }
        if first.request.negative_prompt is not None:
            kwargs["negative_prompt"] = negatives
        if first.mode != "text":
            kwargs.update(image=sources, strength=first.strength)
        if first.mode == "inpaint":
            kwargs["mask_image"] = masks
        if self._adapters is not None:
            # Every variant shares the denoiser, and with it the adapters set here.
            self._adapters.activate(first.loras)
            if first.loras:
                log.info(
                    "pipeline call for %s with LoRA %s",
                    ",".join(job.request_id for job in batch),
                    " + ".join(f"{name} x{scale:g}" for name, scale in first.loras),
                )
        # Only what this pipeline takes: img2img pipelines, for one, have no width/height.
        accepted = inspect.signature(pipe.__call__).parameters
        with torch.inference_mode(), self.speeds.applied(pipe, first.speed):
            images: list[Image.Image] = pipe(
                **{k: v for k, v in kwargs.items() if k in accepted}
            ).images
        return [keep_unmasked(out, job.generation) for job, out in _rows(batch, images)]

    async def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        self._executor.shutdown(wait=True, cancel_futures=True)


def keep_unmasked(image: Image.Image, generation: Generation) -> Image.Image:
    """The VAE round trip alters every pixel; outside an inpainting mask the source is kept
    exactly."""
    if generation.image is None or generation.mask is None:
        return image
    return Image.composite(image, generation.image, generation.mask)


def _rows(batch: list[Job], rows: list[Any]) -> list[tuple[Job, Any]]:
    """Each of a batch's per-image ROWS with the job it belongs to, in batch order."""
    owners = [job for job in batch for _ in range(job.generation.num_images)]
    return list(zip(owners, rows, strict=True))


class _Partials:
    """The partial images of one pipeline call. Only the requests that asked get them, one
    VAE decode per partial image (all of a step's pictures in one call); a call where none
    asked does no extra work at all."""

    def __init__(
        self, pipe: Any, batch: list[Job], loop: asyncio.AbstractEventLoop, model: str
    ) -> None:
        self._pipe = pipe
        self._loop = loop
        self._model = model
        self.wanted = [
            (job, offset, job.on_partial)
            for job, offset in zip(batch, _offsets(batch), strict=True)
            if job.on_partial is not None and job.generation.request.partial_images > 0
        ]
        # Per job: step -> partial image index; known once the call knows its step count.
        self._due: dict[int, dict[int, int]] = {}
        self._previous: torch.Tensor | None = None

    def after_step(self, scheduler: Any, step: int, total: int, latents: torch.Tensor) -> None:
        if not self._due:
            for job, _, _ in self.wanted:
                steps = partial_steps(total, job.generation.request.partial_images)
                self._due[id(job)] = {s: index for index, s in enumerate(steps)}
        due = [
            (job, offset, on_partial, self._due[id(job)][step])
            for job, offset, on_partial in self.wanted
            if step in self._due[id(job)] and not job.cancelled
        ]
        if due and self._previous is not None:
            started = time.monotonic()
            final = estimate_final(scheduler, latents, self._previous)
            rows = torch.cat([final[o : o + job.generation.num_images] for job, o, _, _ in due])
            first = due[0][0].generation
            images = iter(decode_latents(self._pipe, rows, first.width, first.height))
            for job, _, on_partial, index in due:
                for k in range(job.generation.num_images):
                    image = keep_unmasked(next(images), job.generation)
                    self._loop.call_soon_threadsafe(on_partial, k, index, image)
            per_picture = (time.monotonic() - started) / len(rows)
            metrics.PARTIAL_IMAGE_SECONDS.labels(self._model).observe(per_picture)
        # The estimate needs the latents before the step: kept only ahead of a partial image.
        ahead = any(step + 1 in self._due[id(job)] for job, _, _ in self.wanted)
        self._previous = latents.clone() if ahead else None


def _offsets(batch: list[Job]) -> list[int]:
    offsets, row = [], 0
    for job in batch:
        offsets.append(row)
        row += job.generation.num_images
    return offsets
