"""Each request field is declared once, in wire/request.py: the runtime's strict request and the
MCP server's tool and REST models are made of those declarations, not copies of them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from diffusers_runtime.request import GenerationRequest as RuntimeRequest
from mcp_server.generation import GenerationFields, ImageRequest
from mcp_server.rest import ImageEditForm, ImageGenerationRequest
from wire import request as wire

GROUPS = (wire.PromptFields, wire.SizeFields, wire.EditFields, wire.OutputOptions)


def declared(*groups: type) -> dict[str, str]:
    """Field name -> its declaration (type, bounds, default, description), comparable."""
    return {name: repr(field) for group in groups for name, field in group.model_fields.items()}


def fields(model: type) -> dict[str, str]:
    return declared(model)


def test_the_runtime_takes_every_shared_field_as_declared() -> None:
    shared = declared(*GROUPS, wire.StreamFields)
    assert fields(RuntimeRequest) == shared


def test_the_mcp_server_adds_only_its_own_fields() -> None:
    """Which model draws, and an edit source that may be an image stored here."""
    assert ImageRequest.model_fields.keys() - declared(*GROUPS).keys() == {"model"}
    for name, field in declared(*GROUPS).items():
        if name != "image":
            assert fields(ImageRequest)[name] == field, name
    assert GenerationFields.model_fields.keys() == declared(
        wire.PromptFields, wire.SizeFields
    ).keys() | {"model"}
    for body in (ImageGenerationRequest, ImageEditForm):
        for name in declared(wire.PromptFields, wire.OutputOptions, wire.StreamFields):
            assert fields(body)[name] == declared(*GROUPS, wire.StreamFields)[name], name


@pytest.mark.parametrize("value", [True, 2.0])
@pytest.mark.parametrize("strict", [True, False])
def test_a_count_is_a_whole_number_in_both_modes(value: object, strict: bool) -> None:
    with pytest.raises(ValidationError, match="num_images"):
        RuntimeRequest.model_validate({"prompt": "p", "num_images": value}, strict=strict)


def test_null_is_the_default_for_every_optional_field() -> None:
    nulls = {n: None for n, f in RuntimeRequest.model_fields.items() if f.default is None}
    assert RuntimeRequest.model_validate({"prompt": "p", **nulls}, strict=True)
