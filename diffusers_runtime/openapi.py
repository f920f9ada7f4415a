"""The runtime's OpenAPI document. KServe's routes and ours read raw bodies, so FastAPI cannot
see what they take: this says it, from the same models the parsing uses and the served
model's limits, with every error each route can answer. A request the document calls valid
is one the runtime serves."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from wire.fields import EDIT_RULES, OPTION_RULES, STREAM_ONLY, limit_keywords, with_limits

from .openai_api import PREFIX, OpenAIFields
from .request import GenerationRequest

REF = "#/components/schemas/{model}"
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
            "required": ["message", "type", "code"],
        }
    },
    "required": ["error"],
}
# One server-sent event, as clients parse it (the data a JSON object).
EVENTS = {
    "schema": {
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": ["data"],
    }
}
IMAGE_TYPES = "image/png, image/jpeg, image/webp"
# The request schemas _schemas adds.
SCHEMAS = (
    "GenerationRequest",
    "Parameters",
    "V2Parameters",
    "OpenAIImageRequest",
    "OpenAIEditForm",
)


# The rules between fields that resolve() checks, for the document (resolve says why).
RULES = [*OPTION_RULES, *EDIT_RULES]


def _responses(body: dict[str, Any], *codes: tuple[int, str]) -> dict[str, Any]:
    return {
        str(code): {"description": why, "content": {"application/json": {"schema": body}}}
        for code, why in codes
    }


BAD_REQUEST = (400, "Invalid request; the message names the field")
UNKNOWN_MODEL = (404, "No model of that name is served here")
NOT_READY = (503, "The model is not loaded, the device is out of memory, or the pod is stopping")
FAILED = (500, "The generation failed; the message says what failed")


# Where only text travels (a form part, KServe's scalar v2 parameters), the list as JSON text.
LORAS_AS_TEXT = {
    "type": "string",
    "contentMediaType": "application/json",
    "description": 'The loras list as JSON text: [{"name": "outline", "scale": 1}]',
}


def _not_null(properties: dict[str, Any]) -> dict[str, Any]:
    """PROPERTIES with each nullable one's non-null branch only."""
    return {
        name: next((b for b in prop.get("anyOf", []) if b.get("type") != "null"), prop)
        for name, prop in properties.items()
    }


def _schemas(capabilities: dict[str, Any]) -> dict[str, Any]:
    request = GenerationRequest.model_json_schema(ref_template=REF)
    # Published as opaque or auto (transparent is taken to say why it is refused), or null.
    background = request["properties"]["background"]
    background["anyOf"] = [{key: background.pop(key) for key in ("type", "enum")}, {"type": "null"}]
    request["allOf"] = RULES
    parameters = copy.deepcopy({k: v for k, v in request.items() if k != "required"})
    del parameters["properties"]["prompt"]  # each instance's own
    openai = copy.deepcopy(request)
    fields = OpenAIFields.model_json_schema(ref_template=REF)["properties"]
    for name in ("width", "height", "num_images"):  # OpenAI's size and n
        del openai["properties"][name]
    openai["properties"] |= fields
    openai["properties"]["response_format"]["anyOf"][0]["enum"] = ["b64_json"]  # url: 400
    openai["properties"]["style"]["enum"] = [None]  # DALL-E 3's: 400 saying why
    openai["properties"]["model"]["enum"] = [capabilities["model_name"], None]
    openai["allOf"] = [*RULES, STREAM_ONLY]
    form = copy.deepcopy(openai)
    # A form part cannot be null, nor a file carry base64.
    form["properties"] = _not_null(
        {k: v for k, v in form["properties"].items() if k not in ("image", "mask_image")}
    )
    # What the nullable model's top-level enum said, for the branch that stays.
    form["properties"]["model"]["enum"] = [capabilities["model_name"]]
    del form["properties"]["style"]  # only null was valid, which a form cannot send
    form["properties"] |= {
        "image": {"type": "string", "format": "binary", "description": "The image to edit."},
        "mask": {"type": "string", "format": "binary", "description": "White = repaint."},
    }
    form["properties"]["loras"] = dict(LORAS_AS_TEXT)
    form["required"] = ["prompt", "image"]
    form["allOf"] = [*OPTION_RULES, STREAM_ONLY]
    v2_parameters = copy.deepcopy(parameters)
    v2_parameters["properties"] = _not_null(v2_parameters["properties"])
    v2_parameters["properties"]["loras"] = dict(LORAS_AS_TEXT)
    for title, schema in (
        ("Parameters", parameters),
        ("V2Parameters", v2_parameters),
        ("OpenAIImageRequest", openai),
        ("OpenAIEditForm", form),
    ):
        schema["title"] = title
        schema.pop("description")
    return {
        "GenerationRequest": request,
        "Parameters": parameters,
        "OpenAIImageRequest": openai,
        "OpenAIEditForm": form,
        "V2Parameters": v2_parameters,
        "Error": ERROR,
        "OpenAIError": OPENAI_ERROR,
    }


def _no_partials(schema: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA where partial_images stays 0: only streams carry partial images."""
    return {"allOf": [schema, {"properties": {"partial_images": {"maximum": 0}}}]}


def _v2_body() -> dict[str, Any]:
    """KServe v2's request as this model reads it: one BYTES input `prompt` (one generation
    per element), the other fields as parameters."""
    prompt = {"$ref": REF.format(model="GenerationRequest") + "/properties/prompt"}
    one_input = {
        "type": "object",
        "properties": {
            "name": {"const": "prompt"},
            "datatype": {"const": "BYTES"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": prompt, "minItems": 1},
        },
        "required": ["name", "datatype", "shape", "data"],
    }
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": ["string", "null"]},
            "inputs": {"type": "array", "items": one_input, "minItems": 1, "maxItems": 1},
            # KServe's parameters are numbers, booleans or strings: never null.
            "parameters": {
                "anyOf": [
                    _no_partials({"$ref": REF.format(model="V2Parameters")}),
                    {"type": "null"},
                ]
            },
        },
        "required": ["inputs"],
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _v1_body(one: bool) -> dict[str, Any]:
    instances: dict[str, Any] = {
        "type": "array",
        "items": {"$ref": REF.format(model="GenerationRequest")},
        "minItems": 1,
    }
    parameters: dict[str, Any] = {"$ref": REF.format(model="Parameters")}
    if one:
        instances["maxItems"] = 1
    else:
        instances["items"] = _no_partials(instances["items"])
        parameters = _no_partials(parameters)
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "instances": instances,
                        "parameters": parameters,
                    },
                    "required": ["instances"],
                    "additionalProperties": False,
                }
            }
        },
    }


def _document(base: dict[str, Any], capabilities: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(base)
    document.setdefault("components", {}).setdefault("schemas", {}).update(_schemas(capabilities))
    paths = document["paths"]
    error = {"$ref": REF.format(model="Error")}
    openai_error = {"$ref": REF.format(model="OpenAIError")}

    def operation(path: str, method: str = "post") -> dict[str, Any]:
        found: dict[str, Any] = paths[path][method]
        found["responses"].pop("422", None)  # the runtime answers 400
        return found

    for path, one in (
        ("/v1/models/{model_name}:predict", False),
        ("/v1/models/{model_name}:generate", True),
    ):
        op = operation(path)
        op["requestBody"] = _v1_body(one)
        op["responses"] |= _responses(error, BAD_REQUEST, UNKNOWN_MODEL, FAILED, NOT_READY)
    paths["/v1/models/{model_name}:generate"]["post"]["responses"]["200"]["content"] = {
        "text/event-stream": EVENTS
    }
    for path, media, schema in (
        (f"{PREFIX}/images/generations", "application/json", "OpenAIImageRequest"),
        (f"{PREFIX}/images/edits", "multipart/form-data", "OpenAIEditForm"),
    ):
        content: dict[str, Any] = {"schema": {"$ref": REF.format(model=schema)}}
        if media == "multipart/form-data":
            content["encoding"] = {
                "image": {"contentType": IMAGE_TYPES},
                "mask": {"contentType": IMAGE_TYPES},
            }
        op = operation(path)
        op["requestBody"] = {"required": True, "content": {media: content}}
        op["responses"]["200"]["content"] = {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": EVENTS,
        }
        op["responses"] |= _responses(openai_error, BAD_REQUEST, FAILED, NOT_READY)
    for path in (
        "/v1/models/{model_name}",
        "/v1/models/{model_name}/capabilities",
        "/v1/models/{model_name}/adapters",
    ):
        operation(path, "get")["responses"] |= _responses(error, UNKNOWN_MODEL, NOT_READY)
    paths["/v2/models/{model_name}/infer"]["post"]["requestBody"] = _v2_body()
    for path in (p for p in paths if p.startswith("/v2/models/{model_name}")):
        for op in paths[path].values():
            op["responses"] |= _responses(error, BAD_REQUEST, UNKNOWN_MODEL, FAILED, NOT_READY)
            # KServe's optional version answers 501 whenever given: one model, no versions.
            op["parameters"] = [p for p in op["parameters"] if p["name"] != "model_version"]
    paths["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {}}
    for op in (op for item in paths.values() for op in item.values()):
        for parameter in op.get("parameters", []):
            if parameter["name"] == "model_name":  # any other is a 404
                parameter["schema"] = {"type": "string", "enum": [capabilities["model_name"]]}
    with_limits(document["components"]["schemas"], SCHEMAS, limit_keywords(capabilities))
    return document


def publish(
    app_openapi: Callable[[], dict[str, Any]], capabilities: Callable[[], dict[str, Any]]
) -> Callable[[], dict[str, Any]]:
    """APP_OPENAPI's document with what the routes read and answer and the served limits."""
    return lambda: _document(app_openapi(), capabilities())
