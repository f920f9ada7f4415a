"""The mcp SDK client against the real server and runtime over streamable HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import signal
import time

import httpx
import pytest
from mcp import Client
from PIL import Image

from mcp_server.generation import EditRequest, GenerationFields, GenerationRequest, GenerationResult
from mcp_server.jobs import JobState
from mcp_server.registry import ModelInfo
from scripts.servers import ServerProcess, metric, start_mcp_server
from tests.helpers import LONG, SMALL, image_size


def run(coro):
    return asyncio.run(coro)


def test_lists_tools_with_truthful_annotations_and_schemas(mcp_server: ServerProcess) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = run(scenario())
    assert set(tools) >= {
        "generate_image",
        "list_models",
        "start_generation",
        "get_generation",
        "cancel_generation",
    }
    generate = tools["generate_image"]
    fields = set(generate.input_schema["properties"])
    assert fields == {
        "prompt",
        "negative_prompt",
        "width",
        "height",
        "num_inference_steps",
        "guidance_scale",
        "seed",
        "num_images",
        "scheduler",
        "output_format",
        "speed",
        "loras",
        "model",
    }
    assert {"images", "seed", "width", "height", "model", "timings"} <= set(
        generate.output_schema["properties"]
    )
    assert generate.annotations.read_only_hint is False
    assert generate.annotations.destructive_hint is False
    assert tools["list_models"].annotations.read_only_hint is True
    assert tools["get_generation"].annotations.read_only_hint is True
    assert tools["cancel_generation"].annotations.destructive_hint is True


def test_tools_list_fits_an_agents_context_without_losing_a_field(
    mcp_server: ServerProcess,
) -> None:
    """An agent pays for every character of tools/list: under 15,200 (it was 26,247), with
    every argument described and every result field published. (12,000 until the speed tier,
    which three tools take and two return, added about 450; 12,500 until the seed and guidance
    bounds the runtime enforces, about 50; 13,600 until the LoRA adapters, which three tools
    take, about 1,550.)"""

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            return (await client.list_tools()).tools

    tools = run(scenario())
    listed = [tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools]
    size = len(json.dumps({"tools": listed}))
    print(f"tools/list: {size} characters")
    assert size < 15_200
    schemas = {tool.name: tool for tool in tools}
    for name, model in (
        ("generate_image", GenerationFields),
        ("edit_image", EditRequest),
        ("start_generation", GenerationRequest),
    ):
        properties = schemas[name].input_schema["properties"]
        assert set(properties) == set(model.model_fields), name
        assert all(schema.get("description") for schema in properties.values()), name
        assert not any("title" in schema or "anyOf" in schema for schema in properties.values())
    # Fields excluded from the result (the REST answer's quality, background) are not in it.
    published = {n for n, f in GenerationResult.model_fields.items() if not f.exclude}
    for name in ("generate_image", "edit_image"):
        assert set(schemas[name].output_schema["properties"]) == published
    for name in ("start_generation", "get_generation", "cancel_generation"):
        assert set(schemas[name].output_schema["properties"]) == set(JobState.model_fields)
    assert set(schemas["list_models"].output_schema["$defs"]["ModelInfo"]["properties"]) == set(
        ModelInfo.model_fields
    )


def test_generate_image_takes_a_speed_tier_and_says_which_ran(mcp_server: ServerProcess) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            fast = await client.call_tool(
                "generate_image", {"prompt": "x", **SMALL, "speed": "fast"}
            )
            wrong = await client.call_tool("generate_image", {"prompt": "x", "speed": "warp"})
            models = await client.call_tool("list_models", {})
            return fast, wrong, models

    fast, wrong, models = run(scenario())
    capabilities = models.structured_content["models"][0]["capabilities"]
    assert set(capabilities["speeds"]) == {"exact", "balanced", "fast"}
    assert capabilities["default_speed"] == "balanced"
    assert not fast.is_error, fast.content
    assert fast.structured_content["speed"] == "fast"
    assert wrong.is_error
    assert "exact" in wrong.content[0].text and "balanced" in wrong.content[0].text


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_generates_an_image_with_one_progress_notification_per_step(
    mcp_server: ServerProcess, mode: str
) -> None:
    """`auto` speaks protocol 2026-07-28; `legacy` is the 2025-11-25 handshake most desktop
    clients still use."""
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, _message: str | None) -> None:
        progress.append((done, total))

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp", mode=mode) as client:
            result = await client.call_tool(
                "generate_image",
                {"prompt": "a red cube on a table", **SMALL, "width": 96, "seed": 7},
                progress_callback=on_progress,
            )
            link = next(b for b in result.content if b.type == "resource_link")
            resource = await client.read_resource(link.uri)
            return result, link, resource

    result, link, resource = run(scenario())
    assert not result.is_error, result.content
    assert progress == [(step, 4) for step in range(1, 5)]
    data = result.structured_content
    assert (data["width"], data["height"], data["seed"], data["num_inference_steps"]) == (
        96,
        64,
        7,
        4,
    )
    inline = next(b for b in result.content if b.type == "image")
    assert image_size(inline.data) == (96, 64)
    assert link.uri == data["images"][0]["uri"] and link.mime_type == "image/png"
    assert image_size(resource.contents[0].blob) == (96, 64)
    # The HTTP link is absolute and fetchable as is.
    download = httpx.get(data["images"][0]["url"], timeout=10)
    assert download.status_code == 200 and download.headers["content-type"] == "image/png"
    assert image_size(download.content) == (96, 64)


def test_progress_messages_say_the_step_then_decoding(mcp_server: ServerProcess) -> None:
    messages: list[str | None] = []

    async def on_progress(_done: float, _total: float | None, message: str | None) -> None:
        messages.append(message)

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            return await client.call_tool(
                "generate_image", {"prompt": "x", **SMALL}, progress_callback=on_progress
            )

    assert not run(scenario()).is_error
    assert messages == ["step 1/4", "step 2/4", "step 3/4", "decoding"]


def test_get_generation_shows_a_running_job_forming(mcp_server: ServerProcess) -> None:
    """JOB_PARTIAL_IMAGES (2) partial images: after steps 33 and 67 of 100."""

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            started = await client.call_tool("start_generation", {"prompt": "forming", **LONG})
            job_id = started.structured_content["job_id"]
            # Instant looks (wait_seconds 0): the job must still be running.
            plain = await client.call_tool(
                "get_generation", {"job_id": job_id, "include_preview": True, "wait_seconds": 0}
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = await client.call_tool(
                    "get_generation",
                    {"job_id": job_id, "include_preview": True, "wait_seconds": 0},
                )
                if any(block.type == "image" for block in state.content):
                    break
                await asyncio.sleep(0.2)
            without = await client.call_tool(
                "get_generation", {"job_id": job_id, "wait_seconds": 0}
            )
            await client.call_tool("cancel_generation", {"job_id": job_id})
            return plain, state, without

    plain, state, without = run(scenario())
    assert [block.type for block in plain.content] == ["text"]
    assert "No partial image yet" in plain.content[0].text
    assert state.structured_content["status"] == "running"
    assert state.structured_content["step"] >= 33
    (preview,) = [block for block in state.content if block.type == "image"]
    assert image_size(preview.data) == (256, 256)
    assert "partial image" in state.content[0].text
    assert [block.type for block in without.content] == ["text"]


def test_argument_and_runtime_validation_errors_are_tool_errors_naming_the_field(
    mcp_server: ServerProcess,
) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            local = await client.call_tool("generate_image", {"prompt": "x", "width": 3})
            remote = await client.call_tool(
                "generate_image", {"prompt": "x", **SMALL, "num_inference_steps": 5000}
            )
            unknown = await client.call_tool("generate_image", {"prompt": "x", "model": "nope"})
            still_alive = await client.call_tool("list_models", {})
            return local, remote, unknown, still_alive

    local, remote, unknown, still_alive = run(scenario())
    assert local.is_error and "width" in local.content[0].text
    assert remote.is_error and "num_inference_steps" in remote.content[0].text
    assert unknown.is_error and "'nope'" in unknown.content[0].text
    assert "model" in unknown.content[0].text  # lists what is available
    assert not still_alive.is_error
    model = still_alive.structured_content["models"][0]
    assert model["name"] == "model" and model["ready"] is True
    assert model["capabilities"]["max_steps"] > 0


def test_cancelling_the_call_stops_the_runtime_early(
    mcp_server: ServerProcess, runtime: ServerProcess
) -> None:
    before = metric(runtime.url, "diffusers_cancellations_total")
    steps_before = metric(runtime.url, "diffusers_denoising_steps_total")
    seen: list[float] = []

    async def scenario():
        two_steps = asyncio.Event()

        async def on_progress(done: float, total: float | None, _message: str | None) -> None:
            seen.append(done)
            if done >= 2:
                two_steps.set()

        async with Client(f"{mcp_server.url}/mcp") as client:
            call = asyncio.create_task(
                client.call_tool(
                    "generate_image", {"prompt": "cancel me", **LONG}, progress_callback=on_progress
                )
            )
            await asyncio.wait_for(two_steps.wait(), 60)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

    started = time.monotonic()
    run(scenario())
    deadline = time.monotonic() + 10
    while metric(runtime.url, "diffusers_cancellations_total") <= before:
        assert time.monotonic() < deadline, runtime.log()[-3000:]
        time.sleep(0.1)
    # Stopped within a few steps of the cancel, far from the 100 it was asked for.
    time.sleep(0.5)
    done_steps = metric(runtime.url, "diffusers_denoising_steps_total") - steps_before
    assert done_steps < 50, done_steps
    assert time.monotonic() - started < 30


def test_job_tools_run_to_completion_and_to_cancellation(
    mcp_server: ServerProcess, runtime: ServerProcess
) -> None:
    cancellations = metric(runtime.url, "diffusers_cancellations_total")

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            started = await client.call_tool(
                "start_generation", {"prompt": "a job", **SMALL, "seed": 1}
            )
            job_id = started.structured_content["job_id"]
            done = await client.call_tool("get_generation", {"job_id": job_id, "wait_seconds": 60})

            long = await client.call_tool("start_generation", {"prompt": "a long job", **LONG})
            long_id = long.structured_content["job_id"]
            for _ in range(100):
                state = await client.call_tool(
                    "get_generation", {"job_id": long_id, "wait_seconds": 0}
                )
                if state.structured_content["step"] >= 2:
                    break
                await asyncio.sleep(0.1)
            cancelled = await client.call_tool("cancel_generation", {"job_id": long_id})
            after = await client.call_tool("get_generation", {"job_id": long_id})
            missing = await client.call_tool("get_generation", {"job_id": "A" * 32})
            traversal = await client.call_tool("get_generation", {"job_id": "../../etc/passwd"})
            return started, done, state, cancelled, after, missing, traversal

    started, done, running, cancelled, after, missing, traversal = run(scenario())
    assert started.structured_content["status"] in ("queued", "running")
    assert done.structured_content["status"] == "succeeded", done.content
    images = done.structured_content["result"]["images"]
    assert len(images) == 1
    assert image_size(next(b for b in done.content if b.type == "image").data) == (64, 64)
    assert running.structured_content["status"] == "running"
    assert 2 <= running.structured_content["step"] < 100
    assert running.structured_content["total_steps"] == 100
    assert cancelled.structured_content["status"] == "cancelled"
    assert after.structured_content["status"] == "cancelled"
    assert after.structured_content["step"] < 100
    deadline = time.monotonic() + 10
    while metric(runtime.url, "diffusers_cancellations_total") <= cancellations:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert missing.is_error and "No job" in missing.content[0].text
    assert traversal.is_error and "not a valid id" in traversal.content[0].text


def test_a_job_whose_worker_died_is_reported_failed(
    runtime: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two replicas share the store; the one running the job is killed mid-job."""
    store = tmp_path_factory.mktemp("shared-store")
    env = {"DIFFUSERS_RUNTIME_URL": runtime.url, "IMAGE_STORE_DIR": str(store)}
    log_dir = tmp_path_factory.mktemp("replicas")
    with start_mcp_server(log_dir, **env, JOB_STALE_SECONDS="2") as survivor:

        async def start_on(server: ServerProcess) -> str:
            async with Client(f"{server.url}/mcp") as client:
                result = await client.call_tool("start_generation", {"prompt": "x", **LONG})
                return result.structured_content["job_id"]

        async def get_on(server: ServerProcess, job_id: str):
            async with Client(f"{server.url}/mcp") as client:
                return await client.call_tool(
                    "get_generation", {"job_id": job_id, "wait_seconds": 0}
                )

        with start_mcp_server(log_dir, **env, JOB_STALE_SECONDS="2") as doomed:
            job_id = run(start_on(doomed))
            time.sleep(1)
            # Any replica answers for the job while its worker lives.
            assert run(get_on(survivor, job_id)).structured_content["status"] in (
                "queued",
                "running",
            )
            doomed.stop(signal.SIGKILL)
        time.sleep(3)
        state = run(get_on(survivor, job_id)).structured_content
        assert state["status"] == "failed"
        assert "stopped reporting" in state["error"]


def test_resources_and_prompts(mcp_server: ServerProcess) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            resources = {str(r.uri) for r in (await client.list_resources()).resources}
            templates = {
                t.uri_template for t in (await client.list_resource_templates()).resource_templates
            }
            models = await client.read_resource("diffusers://models")
            status = await client.read_resource("diffusers://status")
            missing = None
            try:
                await client.read_resource("image://generated/" + "B" * 32 + ".png")
            except Exception as exc:  # the SDK raises the server's resource error
                missing = str(exc)
            prompts = [p.name for p in (await client.list_prompts()).prompts]
            prompt = await client.get_prompt("image_prompt", {"subject": "a lighthouse"})
            return resources, templates, models, status, missing, prompts, prompt

    resources, templates, models, status, missing, prompts, prompt = run(scenario())
    assert {"diffusers://models", "diffusers://status"} <= resources
    assert "image://generated/{image_id}.png" in templates
    assert json.loads(models.contents[0].text)["models"][0]["ready"] is True
    assert json.loads(status.contents[0].text)["ready"] is True
    assert missing and "expired" in missing
    assert {"image_prompt", "refine_prompt", "product_shot"} <= set(prompts)
    assert "lighthouse" in prompt.messages[0].content.text


def _white_square_mask() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_edit_image_reworks_and_inpaints_a_stored_image(mcp_server: ServerProcess) -> None:
    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            source = await client.call_tool(
                "generate_image", {"prompt": "a house", **SMALL, "seed": 5}
            )
            image = source.structured_content["images"][0]
            reworked = await client.call_tool(
                "edit_image",
                {
                    "prompt": "a house in snow",
                    "image": image["uri"],
                    "strength": 0.5,
                    "seed": 1,
                    "num_inference_steps": 4,
                },
            )
            inpainted = await client.call_tool(
                "edit_image",
                {
                    "prompt": "a red door",
                    "image": image["url"],
                    "mask_image": _white_square_mask(),
                    "num_inference_steps": 4,
                },
            )
            job = await client.call_tool(
                "start_generation",
                {"prompt": "a house at night", "image": image["id"], "strength": 0.5, **SMALL},
            )
            edited_by_job = await client.call_tool(
                "get_generation",
                {"job_id": job.structured_content["job_id"], "wait_seconds": 60},
            )
            foreign = await client.call_tool(
                "edit_image", {"prompt": "x", "image": "https://example.com/cat.png"}
            )
            expired = await client.call_tool(
                "edit_image", {"prompt": "x", "image": "image://generated/" + "D" * 32 + ".png"}
            )
            return reworked, inpainted, edited_by_job, foreign, expired

    reworked, inpainted, edited_by_job, foreign, expired = run(scenario())
    assert edited_by_job.structured_content["status"] == "succeeded", edited_by_job.content
    for result in (reworked, inpainted):
        assert not result.is_error, result.content
        inline = next(b for b in result.content if b.type == "image")
        assert image_size(inline.data) == (64, 64)
    assert foreign.is_error and "image: " in foreign.content[0].text
    assert "not an image of this server" in foreign.content[0].text
    assert expired.is_error and "expired" in expired.content[0].text


def _objects(schema):
    """Every object schema within SCHEMA, itself included."""
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _objects(item)


def test_inputs_pass_a_strict_mode_conversion_and_null_or_empty_means_the_default(
    mcp_server: ServerProcess,
) -> None:
    """What openai-agents, langchain (strict=True) and pydantic-ai on OpenAI do to a tool: every
    object closed, every property required, so a model sends null (or "") for what it would
    omit. The call must mean the defaults, not fail."""

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            nulls = dict.fromkeys(tools["generate_image"].input_schema["properties"])
            nulls |= {"prompt": "a red circle", **SMALL, "num_inference_steps": 2}
            with_nulls = await client.call_tool("generate_image", nulls)
            empties = {"prompt": "a red circle", **SMALL, "num_inference_steps": 2}
            empties |= {"scheduler": "", "negative_prompt": "", "model": "", "speed": ""}
            with_empties = await client.call_tool("generate_image", empties)
            polled = await client.call_tool("get_generation", {"job_id": "A" * 32})
            return tools, with_nulls, with_empties, polled

    tools, with_nulls, with_empties, polled = run(scenario())
    for tool in tools.values():
        schema = tool.input_schema
        assert schema["additionalProperties"] is False, tool.name
        for obj in _objects(schema):
            assert obj.get("additionalProperties") is False, (tool.name, obj)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            if name not in required and "default" not in prop:
                # Strict conversion makes it required: null must be a value it takes.
                kinds = prop.get("type")
                assert isinstance(kinds, list) and "null" in kinds, (tool.name, name, prop)
                if "enum" in prop:
                    assert None in prop["enum"], (tool.name, name)
    assert not with_nulls.is_error, with_nulls.content[0].text
    assert not with_empties.is_error, with_empties.content[0].text
    assert with_empties.structured_content["speed"] == with_nulls.structured_content["speed"]
    wait = tools["get_generation"].input_schema["properties"]["wait_seconds"]
    assert 0 < wait["default"] < 5 and "timeout" in wait["description"]
    assert polled.is_error  # an unknown job: a clear tool error, not a timeout


def test_errors_are_written_for_the_model_and_carry_the_specs_codes(
    mcp_server: ServerProcess,
) -> None:
    from mcp.shared.exceptions import MCPError

    async def scenario():
        async with Client(f"{mcp_server.url}/mcp") as client:
            bad = await client.call_tool(
                "generate_image", {"prompt": "x", "width": "wide", "output_format": "gif"}
            )
            codes = {}
            for name, call in (
                ("prompt", client.get_prompt("no_such_prompt", {})),
                ("arguments", client.get_prompt("image_prompt", {})),
                ("resource", client.read_resource("image://generated/" + "B" * 32 + ".png")),
            ):
                try:
                    await call
                except MCPError as exc:
                    codes[name] = (exc.error.code, exc.error.message)
            return bad, codes

    bad, codes = run(scenario())
    text = bad.content[0].text
    assert bad.is_error and "width" in text and "output_format" in text
    assert "'png', 'jpeg' or 'webp'" in text  # what is allowed
    assert "errors.pydantic.dev" not in text and "For further information" not in text
    assert codes["prompt"][0] == -32602 and "image_prompt" in codes["prompt"][1]
    assert codes["arguments"][0] == -32602 and "subject" in codes["arguments"][1]
    assert codes["resource"][0] == -32602
