"""The serving defaults a model folder carries: `serving.json` beside `model_index.json`.

A model that draws best at its own guidance, steps or size says so in its folder, so serving
the folder any way (MODEL_ID, KServe's /mnt/models, a hub snapshot) gives its defaults without
environment variables. The file may also carry the words the model knows and example prompts,
which the capabilities route (and so the MCP server's list_models) publishes.

Precedence, per default: a request's own field; else the operator's environment variable
(DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS) when it is set; else the model's serving.json; else
the runtime's built-in default (for the size, the pipeline's own sample size). Capabilities say
which one gave each default (`defaults_source`). docs/runtime.md describes the file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wire.fields import GuidanceScale, Side, Steps

from .settings import RuntimeSettings

log = logging.getLogger(__name__)

SERVING_FILE = "serving.json"
Source = Literal["environment", "model", "pipeline", "runtime"]


class ServingFileError(SystemExit):
    """Raised at start when a model folder's serving.json is wrong; names the file and field."""


class FileDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guidance_scale: GuidanceScale | None = None
    num_inference_steps: Steps | None = None
    width: Side | None = None
    height: Side | None = None

    @model_validator(mode="after")
    def _both_sides(self) -> FileDefaults:
        if (self.width is None) != (self.height is None):
            raise ValueError("width and height go together: give both or neither")
        return self


Vocabulary = dict[str, list[str] | dict[str, list[str]]]


class ServingFile(BaseModel):
    """serving.json. Every part is optional; unknown keys are refused (a typo would otherwise
    be silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    description: str | None = Field(None, max_length=1000)
    defaults: FileDefaults = FileDefaults()
    # Words prompts may use, by category: a list, or a map from a value to its synonyms.
    vocabulary: Vocabulary | None = None
    examples: list[str] = Field(default_factory=list, max_length=32)


def read_serving_file(folder: Path) -> tuple[Path, ServingFile] | None:
    """The folder's serving.json, validated; None when the folder has none."""
    path = folder / SERVING_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ServingFileError(f"invalid model serving file {path}: not JSON ({exc})") from None
    try:
        return path, ServingFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ServingFileError(f"invalid model serving file {path}: {problems}") from None


@dataclass(frozen=True)
class ServedDefaults:
    """The defaults a request without those fields gets, and where each came from."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    sources: dict[str, Source]
    file: Path | None = None
    content: ServingFile | None = None

    def describe(self) -> dict[str, Any]:
        """For the capabilities: sources, the file, and what it says about prompts."""
        content = self.content or ServingFile()
        return {
            "defaults_source": dict(self.sources),
            "serving_file": str(self.file) if self.file else None,
            "description": content.description,
            "vocabulary": content.vocabulary,
            "example_prompts": list(content.examples),
        }


def resolve_defaults(
    settings: RuntimeSettings,
    found: tuple[Path, ServingFile] | None,
    pipeline_side: int,
    size_multiple: int,
) -> ServedDefaults:
    """Each default from the first that gives it: environment, serving.json, runtime (size:
    the pipeline's sample size). Steps stay within MAX_STEPS; the size within MAX_PIXELS,
    halved until it fits, as the pipeline's own is."""
    path, content = found if found else (None, None)
    given = content.defaults if content else FileDefaults()
    explicit = settings.model_fields_set
    sources: dict[str, Source] = {}

    def pick(name: str, from_file: Any, setting: Any) -> Any:
        if name in explicit:
            sources[name] = "environment"
            return setting
        if from_file is not None:
            sources[name] = "model"
            return from_file
        sources[name] = "runtime"
        return setting

    steps = pick("default_steps", given.num_inference_steps, settings.default_steps)
    guidance = pick("default_guidance_scale", given.guidance_scale, settings.default_guidance_scale)
    if given.width is not None and given.height is not None:
        for side in ("width", "height"):
            if getattr(given, side) % size_multiple:
                raise ServingFileError(
                    f"invalid model serving file {path}: defaults.{side}: "
                    f"{getattr(given, side)} is not a multiple of {size_multiple}, the "
                    "pipeline's size multiple"
                )
        width, height = given.width, given.height
        size_source: Source = "model"
    else:
        width = height = pipeline_side
        size_source = "pipeline"
    while width * height > settings.max_pixels and min(width, height) > size_multiple:
        width, height = width // 2, height // 2
    sources["default_width"] = sources["default_height"] = size_source
    return ServedDefaults(
        width=width,
        height=height,
        steps=min(steps, settings.max_steps),
        guidance_scale=guidance,
        sources=sources,
        file=path,
        content=content,
    )
