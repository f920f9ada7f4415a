"""The event stream of one generation: a progress event per denoising step, the partial images
it asked for, then the result or the error. The two streaming front ends (`:generate` and the
OpenAI routes) only write these events in their own shapes. When a front end's client hangs
up, the front end stops reading, and closing this stream cancels the generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .errors import RuntimeFailure
from .generator import Generator
from .request import Generation


@dataclass(frozen=True)
class Progress:
    step: int
    total: int


@dataclass(frozen=True)
class Partial:
    image_index: int
    partial_image_index: int
    image: dict[str, str]


@dataclass(frozen=True)
class Result:
    prediction: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    error: RuntimeFailure


Event = Progress | Partial | Result | Failure


def _retrieve(task: asyncio.Task[Any]) -> None:
    # The stream may be gone when the task ends; read its outcome so asyncio does not log it.
    if not task.cancelled():
        task.exception()


async def events(generator: Generator, generation: Generation, route: str) -> AsyncIterator[Event]:
    """Events in the order they happen: the partial images of a step follow its progress
    event, in image order; the result or failure comes last."""
    queue: asyncio.Queue[Progress | tuple[int, int, Image.Image] | None] = asyncio.Queue()

    def on_progress(step: int, total: int) -> None:
        queue.put_nowait(Progress(step, total))

    def on_partial(image_index: int, partial_index: int, image: Image.Image) -> None:
        queue.put_nowait((image_index, partial_index, image))

    task = asyncio.create_task(generator.run(generation, route, on_progress, on_partial))
    task.add_done_callback(_retrieve)
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Progress):
                yield item
            else:
                image_index, partial_index, image = item
                encoded = await asyncio.to_thread(generator.encode, image, generation)
                yield Partial(image_index, partial_index, encoded)
        try:
            yield Result(task.result())
        except RuntimeFailure as exc:
            yield Failure(exc)
    finally:
        # Runs when the reader stops early too: cancelling the task stops the denoising.
        task.cancel()
