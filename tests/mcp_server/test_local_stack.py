"""`make run`'s script: both processes up, the banner and a first picture of what it promises
printed, SIGINT stops both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scene_model import analysis
from scripts.servers import DEFAULT_MODEL, REPO, free_port

FIRST = "a red circle in the center on a blue background"


def _listening(port: int) -> set[str]:
    """The addresses with a TCP socket listening on PORT, from the kernel's tables."""
    found = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    if width == 4:
                        found.add(".".join(str(b) for b in reversed(raw)))
                    else:
                        found.add("::" if raw == bytes(16) else raw.hex())
    return found


def test_local_stack_starts_both_and_stops_both_on_sigint() -> None:
    runtime_port, mcp_port = free_port(), free_port()
    stack = subprocess.Popen(
        [sys.executable, "-m", "scripts.local_stack"],
        cwd=REPO,
        env={
            **os.environ,
            "MODEL_ID": str(DEFAULT_MODEL),
            "RUNTIME_PORT": str(runtime_port),
            "MCP_PORT": str(mcp_port),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert stack.stdout is not None
        while time.monotonic() < deadline:
            line = stack.stdout.readline()
            assert line, "".join(lines[-30:])
            lines.append(line)
            if line.startswith("  url:"):
                break
        output = "".join(lines)
        # The page comes first: the banner's first line after the rule.
        first = output.split("=" * 72 + "\n", 1)[1].splitlines()[0]
        assert first.startswith(f"Playground:        http://127.0.0.1:{mcp_port}/ ")
        assert httpx.get(f"http://127.0.0.1:{mcp_port}/", timeout=10).status_code == 200
        assert f"MCP server ready:  http://127.0.0.1:{mcp_port}/mcp" in output
        config = output.split("MCP client config (streamable HTTP):\n", 1)[1]
        config = json.loads(config.split("\n\n", 1)[0])
        assert config["mcpServers"]["diffusers"]["url"] == f"http://127.0.0.1:{mcp_port}/mcp"
        assert f"curl -s http://127.0.0.1:{mcp_port}/v1/images/generations" in output
        assert httpx.get(f"http://127.0.0.1:{mcp_port}/ready", timeout=10).status_code == 200
        # The model's own defaults and words, from its folder's serving.json, reach the model
        # list (GET /v1/models is list_models' content) with no variable set for them.
        (model,) = httpx.get(f"http://127.0.0.1:{mcp_port}/v1/models", timeout=10).json()["data"]
        capabilities = model["capabilities"]
        assert capabilities["default_guidance_scale"] == 4.0
        assert capabilities["defaults_source"]["default_guidance_scale"] == "model"
        assert "ring" in capabilities["vocabulary"]["shapes"]
        assert FIRST in capabilities["example_prompts"]
        # The first picture is the one announced, saved where it says, and served at its URL.
        assert f'First picture, "{FIRST}"' in output
        path = output.split("  file: ", 1)[1].split("\n", 1)[0]
        url = output.split("  url:  ", 1)[1].split("\n", 1)[0]
        picture = Image.open(path)
        reading = analysis.read(picture)
        assert (reading.background, reading.colour, reading.shape, reading.position) == (
            "blue",
            "red",
            "circle",
            "center",
        )
        assert httpx.get(url, timeout=10).content == Path(path).read_bytes()
        for port in (runtime_port, mcp_port):
            assert _listening(port) == {"127.0.0.1"}, port

        stack.send_signal(signal.SIGINT)
        assert stack.wait(30) == 0
    finally:
        if stack.poll() is None:
            # SIGTERM first: the script then stops its children, which SIGKILL would orphan.
            stack.terminate()
            try:
                stack.wait(30)
            except subprocess.TimeoutExpired:
                stack.kill()
                stack.wait()
    for port in (runtime_port, mcp_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
