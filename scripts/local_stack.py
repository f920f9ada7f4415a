"""`make run`: the diffusers runtime and the MCP server together on 127.0.0.1.

Reads MODEL_ID (default: the shipped models/default), RUNTIME_PORT (8080) and MCP_PORT (8000);
once both are ready prints the MCP URL, client configs and a curl example, then draws a first
picture through the REST API and says where it is; Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from scripts.servers import (
    DEFAULT_MODEL,
    REPO,
    Interrupted,
    ServerError,
    ServerProcess,
    port_is_free,
    runtime_args,
    spawn,
    wait_until_ready,
)

# With the shape's place named: left free, the default model draws the asked kind far less
# often (49% against 80%, docs/default-model.md "How well it draws").
FIRST_PROMPT = "a red circle in the center on a blue background"
FIRST_PICTURE = REPO / ".cache" / "first-picture.png"
# The default model knows only its scene language; these show what it can draw.
SCENE_EXAMPLES = (
    "a small yellow star in the top left corner on a purple background",
    "black background, large white ring",
    "a big green triangle at the bottom right on a pink background",
)
# A real model may first download gigabytes; Ctrl-C ends the wait sooner.
READY_TIMEOUT_SECONDS = 1800


def first_picture(mcp_port: int) -> str:
    """Draw one picture through the REST API, as a user would, and save it."""
    started = time.monotonic()
    try:
        answer = httpx.post(
            f"http://127.0.0.1:{mcp_port}/v1/images/generations",
            json={"prompt": FIRST_PROMPT, "response_format": "url", "seed": 0},
            timeout=300,
        )
        if answer.status_code != 200:
            return f"First picture failed ({answer.status_code}): {answer.text[:300]}"
        url = answer.json()["data"][0]["url"]
        picture = httpx.get(url, timeout=30)
        picture.raise_for_status()
    except httpx.HTTPError as exc:
        # The stack keeps running: the user can still try, and the logs above say more.
        return f"First picture failed: {type(exc).__name__}: {exc}"
    FIRST_PICTURE.parent.mkdir(parents=True, exist_ok=True)
    FIRST_PICTURE.write_bytes(picture.content)
    seconds = time.monotonic() - started
    return (
        f'First picture, "{FIRST_PROMPT}" ({seconds:.1f} s):\n'
        f"  file: {FIRST_PICTURE}\n  url:  {url}"
    )


def banner(mcp_port: int, runtime_port: int, default_model: bool) -> str:
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    http_config = {"mcpServers": {"diffusers": {"type": "http", "url": mcp_url}}}
    stdio_config = {
        "mcpServers": {
            "diffusers": {
                "command": sys.executable,
                "args": ["-m", "mcp_server", "--transport", "stdio"],
                "cwd": str(REPO),
                "env": {"DIFFUSERS_RUNTIME_URL": f"http://127.0.0.1:{runtime_port}"},
            }
        }
    }
    prompt = SCENE_EXAMPLES[0] if default_model else "a lighthouse at dusk"
    curl = (
        f"curl -s http://127.0.0.1:{mcp_port}/v1/images/generations "
        "-H 'Content-Type: application/json' "
        f'-d \'{{"prompt": "{prompt}", "response_format": "url"}}\''
    )
    examples = (
        [
            "",
            "The default model draws one shape (circle, square, triangle, star, ring) in one of",
            "ten colours, at a position and size, on a coloured background. Try:",
            *(f"  {example}" for example in SCENE_EXAMPLES),
        ]
        if default_model
        else []
    )
    return "\n".join(
        [
            "",
            "=" * 72,
            f"Playground:        http://127.0.0.1:{mcp_port}/   (open it in a browser)",
            f"MCP server ready:  {mcp_url}",
            f"REST API + docs:   http://127.0.0.1:{mcp_port}/docs",
            f"Runtime:           http://127.0.0.1:{runtime_port}/v1/models/model",
            "",
            "MCP client config (streamable HTTP):",
            json.dumps(http_config, indent=2),
            "",
            "MCP client config (stdio, for desktop clients that only launch commands):",
            json.dumps(stdio_config, indent=2),
            "",
            "Try it:",
            curl,
            *examples,
            "",
            "Ctrl-C stops both.",
            "=" * 72,
            "",
        ]
    )


def main() -> int:
    model_id = os.environ.get("MODEL_ID", str(DEFAULT_MODEL))
    runtime_port = int(os.environ.get("RUNTIME_PORT", "8080"))
    mcp_port = int(os.environ.get("MCP_PORT", "8000"))
    for name, port, variable in (
        ("runtime", runtime_port, "RUNTIME_PORT"),
        ("MCP server", mcp_port, "MCP_PORT"),
    ):
        if not port_is_free(port):
            print(
                f"local_stack: port {port} for the {name} is in use; stop what listens there "
                f"or pick another port, e.g. make run {variable}={port + 1}",
                file=sys.stderr,
            )
            return 1

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    default_model = Path(model_id).resolve() == DEFAULT_MODEL
    # Loopback only, as the MCP server: a laptop's stack is not for the network it is on.
    runtime_env = {"MODEL_ID": model_id, "MODEL_NAME": "model", "HOST": "127.0.0.1"}
    servers: list[ServerProcess] = []
    try:
        runtime = ServerProcess(
            spawn(runtime_args(runtime_port), runtime_env, relay_as="runtime"),
            f"http://127.0.0.1:{runtime_port}",
            None,
            "runtime",
        )
        servers.append(runtime)
        mcp_env = {
            "DIFFUSERS_RUNTIME_URL": runtime.url,
            "DIFFUSERS_MODEL_ID": "model",
            "HOST": "127.0.0.1",
            "PORT": str(mcp_port),
            "IMAGE_STORE_DIR": str(REPO / ".cache" / "images"),
        }
        server = ServerProcess(
            spawn(["-m", "mcp_server"], mcp_env, relay_as="mcp"),
            f"http://127.0.0.1:{mcp_port}",
            None,
            "MCP server",
        )
        servers.append(server)
        for each, path in ((runtime, "/v1/models/model"), (server, "/ready")):
            wait_until_ready(each, path, READY_TIMEOUT_SECONDS, 0.3, stopping)
        print(banner(mcp_port, runtime_port, default_model), flush=True)
        print(first_picture(mcp_port), flush=True)
        while not stopping.wait(0.5):
            for each in servers:
                if each.process.poll() is not None:
                    raise ServerError(f"the {each.name} exited with code {each.process.returncode}")
        print("local_stack: stopping", flush=True)
        return 0
    except Interrupted:
        print("local_stack: interrupted before both were ready; stopping", flush=True)
        return 0
    except ServerError as exc:
        print(f"local_stack: {exc}", file=sys.stderr)
        return 1
    finally:
        # The MCP server first, so it never reports the runtime's shutdown as an error.
        for each in reversed(servers):
            each.stop(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
