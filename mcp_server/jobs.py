"""Long generations as jobs, for clients whose tool-call timeout is shorter than a generation.

The job record lives in the store, so any replica can answer for it. The replica that runs a
job rewrites the record on progress and on a heartbeat; a record whose heartbeat is older than
JOB_STALE_SECONDS belongs to a dead worker and is reported failed. A cancel request on another
replica leaves a marker in the store that the owner's heartbeat picks up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from mcp_server.errors import JobNotFoundError, ServiceError
from mcp_server.generation import MIME_TYPES, GenerationRequest, GenerationResult
from mcp_server.runtime_client import PartialImage
from mcp_server.service import ImageService
from mcp_server.store import Store, check_id, new_id

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL = ("succeeded", "failed", "cancelled")


class JobState(BaseModel):
    job_id: str
    status: JobStatus
    model: str
    step: int = Field(0, description="Denoising steps done so far.")
    total_steps: int | None = None
    # Spelled out once, in generate_image's outputSchema: agents pay for every repetition.
    result: Annotated[
        GenerationResult | None,
        WithJsonSchema({"type": ["object", "null"]}),
        Field(description="Once succeeded: what generate_image returns."),
    ] = None
    error: str | None = Field(None, description="Why the job failed, when it did.")
    created_at: float
    updated_at: float
    heartbeat_at: float


class JobManager:
    def __init__(
        self, service: ImageService, store: Store, stale_seconds: float, partial_images: int
    ) -> None:
        self.service = service
        self.store = store
        self.stale_seconds = stale_seconds
        self.partial_images = partial_images
        self.heartbeat_seconds = max(stale_seconds / 4, 0.2)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def _key(job_id: str) -> str:
        return f"jobs/{check_id(job_id, 'job_id')}"

    async def _save(self, state: JobState) -> None:
        state.updated_at = time.time()
        await self.store.put_json(self._key(state.job_id), state.model_dump(mode="json"))

    async def _load(self, job_id: str) -> JobState:
        document = await self.store.get_json(self._key(job_id))
        if document is None:
            raise JobNotFoundError(job_id, self.store.ttl_seconds)
        return JobState.model_validate(document)

    async def start(
        self, request: GenerationRequest, *, request_id: str | None, base_url: str | None
    ) -> JobState:
        # Fail fast on an unknown model rather than inside the job.
        model = self.service.check_model(request.model)
        now = time.time()
        state = JobState(
            job_id=new_id(),
            status="queued",
            model=model,
            total_steps=request.num_inference_steps,
            created_at=now,
            updated_at=now,
            heartbeat_at=now,
        )
        await self._save(state)
        task = asyncio.create_task(self._run(state, request, request_id, base_url))
        self._tasks[state.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(state.job_id, None))
        return state

    async def _run(
        self,
        state: JobState,
        request: GenerationRequest,
        request_id: str | None,
        base_url: str | None,
    ) -> None:
        last_saved = 0.0

        async def on_progress(step: int, total: int) -> None:
            nonlocal last_saved
            state.status, state.step, state.total_steps = "running", step, total
            state.heartbeat_at = time.time()
            # Bounded writes: a fast model must not turn each step into a store round trip.
            if step == total or state.heartbeat_at - last_saved > 0.5:
                last_saved = state.heartbeat_at
                await self._save(state)

        async def on_partial(partial: PartialImage) -> None:
            # The first image stands for them all: an agent polling wants to see it forming.
            if partial.image_index == 0:
                # The step it was made at first (its progress event came before it), so a
                # reader that finds the preview never finds an older step beside it.
                await self._save(state)
                mime_type = MIME_TYPES.get(partial.output_format, "image/png")
                image_id = await self.store.put_image(base64.b64decode(partial.b64), mime_type)
                await self.store.put_json(self._key(state.job_id) + ".preview", {"id": image_id})

        work = asyncio.current_task()
        heartbeat = asyncio.create_task(self._heartbeat(state, work))
        try:
            state.result, _ = await self.service.generate(
                request,
                entry="start_generation",
                request_id=request_id,
                on_progress=on_progress,
                on_partial=on_partial,
                partial_images=self.partial_images,
                base_url=base_url,
            )
            state.status = "succeeded"
        except asyncio.CancelledError:
            state.status = "cancelled"
            state.error = "Cancelled by cancel_generation (or the server shut down)."
        except ServiceError as exc:
            state.status, state.error = "failed", str(exc)
        except Exception as exc:
            log.exception("job %s failed", state.job_id)
            state.status = "failed"
            state.error = f"Internal error in the MCP server ({type(exc).__name__}); see its logs."
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            state.heartbeat_at = time.time()
            await self._save(state)

    async def _heartbeat(self, state: JobState, work: asyncio.Task[Any] | None) -> None:
        cancel_key = self._key(state.job_id) + ".cancel"
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if await self.store.exists(cancel_key) and work is not None:
                work.cancel()
                return
            state.heartbeat_at = time.time()
            await self._save(state)

    def _judge(self, state: JobState) -> JobState:
        if state.status not in TERMINAL and time.time() - state.heartbeat_at > self.stale_seconds:
            state.status = "failed"
            silent = time.time() - state.heartbeat_at
            state.error = (
                f"The worker running this job stopped reporting {silent:.0f} s ago"
                " (its server replica probably restarted). Start the generation again."
            )
        return state

    async def get(self, job_id: str, wait_seconds: float = 0) -> JobState:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            state = self._judge(await self._load(job_id))
            remaining = deadline - time.monotonic()
            if state.status in TERMINAL or remaining <= 0:
                return state
            task = self._tasks.get(job_id)
            if task is not None:
                # The job runs here: wake up the moment it ends instead of polling.
                await asyncio.wait([task], timeout=min(remaining, 1.0))
            else:
                await asyncio.sleep(min(remaining, 0.5))

    async def preview(self, job_id: str) -> str | None:
        """The image id of a job's latest partial image, if it has one yet. Kept beside the
        job's record, not in it: the record is every job tool's result schema."""
        document = await self.store.get_json(self._key(job_id) + ".preview")
        return str(document["id"]) if document else None

    async def cancel(self, job_id: str) -> JobState:
        state = self._judge(await self._load(job_id))
        if state.status in TERMINAL:
            return state
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=10)
            return await self._load(job_id)
        await self.store.put_json(self._key(job_id) + ".cancel", {"requested_at": time.time()})
        return await self.get(job_id, wait_seconds=self.heartbeat_seconds * 3)

    async def shutdown(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
