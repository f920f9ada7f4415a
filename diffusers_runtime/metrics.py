"""Prometheus collectors of the runtime, served beside KServe's on the REST port's /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IMAGES = Counter("diffusers_images_generated", "Images generated", ["model"])
REQUESTS = Counter(
    "diffusers_requests", "Generation requests by outcome", ["model", "route", "outcome"]
)
GENERATION_SECONDS = Histogram(
    "diffusers_generation_seconds",
    "Time from a request entering the engine to its images being ready",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300),
)
STEP_SECONDS = Histogram(
    "diffusers_step_seconds",
    "Time of one denoising step of one pipeline call",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
PARTIAL_IMAGE_SECONDS = Histogram(
    "diffusers_partial_image_seconds",
    "Time to estimate and decode one partial image (per picture, worker thread)",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
STEPS = Counter("diffusers_denoising_steps", "Denoising steps executed", ["model"])
QUEUE_SECONDS = Histogram(
    "diffusers_queue_wait_seconds",
    "Time a request waited before its pipeline call started",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120),
)
BATCH_SIZE = Histogram(
    "diffusers_batch_size", "Images per pipeline call", ["model"], buckets=(1, 2, 4, 8, 16, 32)
)
IN_FLIGHT = Gauge("diffusers_requests_in_flight", "Requests in a running pipeline call", ["model"])
QUEUED = Gauge("diffusers_requests_queued", "Requests waiting for the pipeline", ["model"])
CANCELLATIONS = Counter(
    "diffusers_cancellations", "Requests cancelled by their client before completion", ["model"]
)
ERRORS = Counter("diffusers_errors", "Failed requests by kind", ["model", "kind"])
LORA_LOADS = Counter("diffusers_lora_loads", "LoRA adapters loaded into the pipeline", ["model"])
LORA_CACHE = Counter(
    "diffusers_lora_cache",
    "A batch's adapter found loaded (hit) or not (miss)",
    ["model", "result"],
)
LORA_EVICTIONS = Counter(
    "diffusers_lora_evictions", "Adapters unloaded to keep LORA_CACHE_SIZE", ["model"]
)
LORA_LOAD_SECONDS = Histogram(
    "diffusers_lora_load_seconds",
    "Time to load one adapter into the pipeline (worker thread, between pipeline calls)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
