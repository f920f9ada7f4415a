"""DiffusersModel: the KServe adapter. Turns v1 instances and v2 tensors into generations for
the Generator (generator.py), and its predictions into KServe responses."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from .errors import BadRequest, ModelNotLoaded
from .generator import Generator
from .request import Generation
from .settings import RuntimeSettings

log = logging.getLogger(__name__)


class DiffusersModel(kserve.Model):
    """KServe's view of the runtime: its name, its readiness, and v1 / v2 bodies in and out.
    The generating itself is the Generator's."""

    def __init__(self, name: str, settings: RuntimeSettings):
        super().__init__(name)
        self.settings = settings
        self.generator: Generator | None = None

    def load(self) -> bool:
        self.generator = Generator(self.name, self.settings)
        self.ready = True
        return self.ready

    def serving(self) -> Generator:
        if self.generator is None:
            raise ModelNotLoaded(
                f"model {self.name} is not loaded yet; retry when GET /v1/models/{self.name} "
                "answers ready"
            )
        return self.generator

    async def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        predictions = await self.serving().run_all(self.parse_v1(payload), "predict")
        # `image` repeats images[0]: what clients of the original runtime read.
        return {"predictions": [{"image": p["images"][0], **p} for p in predictions]}

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
        generator = self.serving()
        return [
            generator.parse(
                {**defaults, **raw} if isinstance(raw, dict) else raw, f"instances[{index}]."
            )
            for index, raw in enumerate(instances)
        ]

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
        generator = self.serving()
        generations = [
            generator.parse({**fields, "prompt": prompt}, f"inputs.prompt[{index}] / parameters.")
            for index, prompt in enumerate(prompts)
        ]
        predictions = await generator.run_all(generations, "infer")
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
