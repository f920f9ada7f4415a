"""Schemathesis against a real server: every phase (examples, coverage, fuzzing, stateful) and
every check, through its engine. (Its pytest plugin's lazy loader, `from_fixture`, reads
`node._nodeid`, which pytest 9 no longer has.)

The servers under test run with small limits, which their documents publish: every request
schemathesis may send is cheap to serve. The hooks here are schemathesis's global ones: every
schemathesis run in the suite (tests/reliability too) sends real images where valid data goes."""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema

SMALL_LIMITS = {
    "MAX_PIXELS": str(64 * 64),
    "MAX_STEPS": "2",
    "DEFAULT_STEPS": "2",
    "MAX_IMAGES_PER_REQUEST": "2",
    "MAX_PROMPT_CHARS": "200",
}
# Few examples, found the same way every run.
CONFIG = {
    "seed": 35,
    "generation": {"max-examples": 3, "deterministic": True},
    "phases": {"stateful": {"max-steps": 5}},
    "max-failures": 30,
    "request-timeout": 60,
}


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
    return buffer.getvalue()


SOURCE, MASK = _png("red"), _png("white")
# A multipart image part: the documents name its content types.
schemathesis.openapi.media_type("image/png", st.just(SOURCE))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A valid JSON request's base64 image fields get a real image: JSON Schema can say "a
    string", not "a PNG in base64", and random text there is rightly refused (400 naming the
    field). Its integral floats become integers (below). Invalid requests keep theirs."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    for fields in [case.body, case.body.get("parameters"), *case.body.get("instances", [])]:
        if not isinstance(fields, dict):
            continue
        for name, data in (("image", SOURCE), ("mask_image", MASK)):
            if isinstance(fields.get(name), str):
                fields[name] = base64.b64encode(data).decode()
        # JSON Schema's integer includes 2.0; both servers take counts as integers only,
        # as pydantic's strict mode and OpenAI's API do, and refuse 2.0 on purpose.
        for name, value in fields.items():
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                fields[name] = int(value)


def _wrong(check: str, case: Any) -> bool:
    """Findings that are not the server's to fix. Schemathesis's coverage phase builds one
        multipart body from the parts' media types (the image) and fills every other required
        part with "", minLength or not, then calls the body valid: a prompt of "" is rightly
        refused. Schemathesis's stateful phase can mark a case built from positive data as negative.
    KServe parses v2 bodies itself, in pydantic's lax mode, which reads a `shape`
        of [true] as [1]; the runtime never reads shape (one generation per data element)."""
    data = case.meta.phase.data if case.meta else None
    body = case.body if isinstance(case.body, dict) else {}
    inputs = body.get("inputs")
    shapes = (
        [i.get("shape") for i in inputs if isinstance(i, dict)] if isinstance(inputs, list) else []
    )
    return (
        (
            check == "positive_data_acceptance"
            and getattr(data, "description", "") == "Multipart body with custom encoding"
            and body.get("prompt") == ""
        )
        or (
            # The stateful phase can label a case it built from positive data as negative (its
            # report then reads "Invalid component: positive test case"): nothing in it is invalid.
            check == "negative_data_rejection"
            and getattr(data, "description", "") == "Positive test case"
        )
        or (
            check == "negative_data_rejection"
            and case.operation.path == "/v2/models/{model_name}/infer"
            and any(isinstance(s, list) and not all(type(d) is int for d in s) for s in shapes)
        )
    )


def run(openapi_url: str) -> tuple[list[str], float]:
    """Run schemathesis against the document at OPENAPI_URL; the failures it found, each with
    the curl command that reproduces it, and the seconds it took."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(openapi_url, config=SchemathesisConfig.from_dict(CONFIG))
    found: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status == Status.FAILURE:
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None and not _wrong(
                        check.name, event.recorder.cases[case_id].value
                    ):
                        failure = check.failure_info.failure
                        interaction = event.recorder.interactions.get(case_id)
                        answer = interaction.response if interaction else None
                        said = answer.content[:400] if answer and answer.content else b""
                        found.append(
                            f"{event.recorder.label} [{check.name}] {failure.title}: "
                            f"{failure.message}\n{check.failure_info.code_sample}\n"
                            f"answered {said!r}"
                        )
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            found.append(f"schemathesis could not run: {event!r}")
    return sorted(set(found)), time.monotonic() - started
