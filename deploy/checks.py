"""Live checks of a deployed (or `make run`) stack: what `make test-connectivity` and
`make test-integration` run.

connectivity  DNS and runtime reachability as the MCP server sees them, then the server's own
              health. In a cluster this file is piped into the MCP pod (`python - connectivity`),
              so this subcommand needs only the standard library and httpx, both in that image;
              the runtime URL and model default to the pod's own environment.
integration   A real MCP `tools/call generate_image` (with progress) and a REST
              `POST /v1/images/generations`, through the Route (or the local server): both must
              return a decodable image of the requested size.
models        What the server serves, through its own MCP `list_models`: each model, where it
              comes from (static configuration or a discovered InferenceService), readiness
              and why not, and discovery's state per namespace. Piped into the MCP pod by
              `make check-services` (the pod has the mcp SDK and its own MCP_AUTH_TOKEN).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable

import httpx


class Report:
    """Prints one line per check and remembers whether any failed."""

    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, step: Callable[[], str]) -> None:
        try:
            detail = step()
        except Exception as exc:
            self.failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", flush=True)
        else:
            print(f"ok    {name}: {detail}", flush=True)

    def exit_code(self) -> int:
        print("all checks passed" if not self.failed else f"{self.failed} check(s) failed")
        return 1 if self.failed else 0


def _resolve(url: str) -> str:
    host = httpx.URL(url).host
    addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    return f"{host} -> {', '.join(addresses)}"


def _get_ok(url: str, *, timeout: float, expect_ready: bool = False) -> str:
    response = httpx.get(url, timeout=timeout)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} answered HTTP {response.status_code}: {response.text[:200]}")
    if expect_ready and not response.json().get("ready"):
        raise RuntimeError(f"GET {url} answered 200 but the model is not ready: {response.text}")
    return f"GET {url} -> 200"


def connectivity(args: argparse.Namespace) -> int:
    runtime = args.runtime_url.rstrip("/")
    report = Report()
    report.check("DNS of the runtime", lambda: _resolve(runtime))
    timeout = args.timeout
    report.check("runtime alive", lambda: _get_ok(f"{runtime}/v2/health/live", timeout=timeout))
    model_url = f"{runtime}/v1/models/{args.model}"
    report.check(
        f"runtime model {args.model!r} ready",
        lambda: _get_ok(model_url, timeout=timeout, expect_ready=True),
    )
    mcp = args.mcp_url.rstrip("/")
    report.check("MCP server alive", lambda: _get_ok(f"{mcp}/health", timeout=timeout))
    report.check("MCP server ready", lambda: _get_ok(f"{mcp}/ready", timeout=timeout))
    return report.exit_code()


def _route_url(kubectl: str, namespace: str) -> str:
    def get(path: str) -> str:
        command = [*kubectl.split(), "-n", namespace, "get", "route", "mcp-server"]
        command += ["-o", f"jsonpath={{{path}}}"]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    host = get(".spec.host")
    if not host:
        raise SystemExit(f"route mcp-server in {namespace} has no host yet")
    return f"{'https' if get('.spec.tls.termination') else 'http'}://{host}"


def _image_size(data: bytes) -> tuple[int, int]:
    # Pillow is only needed here, not by the in-pod connectivity check.
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


async def _mcp_generate(base: str, headers: dict[str, str], args: argparse.Namespace) -> str:
    # Imported here: the mcp SDK is not needed by the connectivity check.
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with (
        httpx2.AsyncClient(headers=headers, timeout=args.timeout) as http,
        Client(
            streamable_http_client(f"{base}/mcp", http_client=http),
            read_timeout_seconds=args.timeout,
        ) as client,
    ):
        tools = {tool.name for tool in (await client.list_tools()).tools}
        if "generate_image" not in tools:
            raise RuntimeError(f"the server has no generate_image tool (tools: {sorted(tools)})")
        result = await client.call_tool(
            "generate_image",
            {
                "prompt": "a red hat on a small dog",
                "width": args.size,
                "height": args.size,
                "num_inference_steps": args.steps,
                "seed": 7,
            },
            progress_callback=on_progress,
        )
    texts = [block.text for block in result.content if block.type == "text"]
    if result.is_error:
        raise RuntimeError(f"tools/call returned an error: {' '.join(texts)}")
    images = [block for block in result.content if block.type == "image"]
    if not images:
        raise RuntimeError(f"no image content block in the result: {result.content!r}")
    size = _image_size(base64.b64decode(images[0].data))
    structured = result.structured_content or {}
    if (structured.get("width"), structured.get("height")) != (args.size, args.size):
        asked = f"{args.size}x{args.size}"
        raise RuntimeError(f"structuredContent does not report {asked}: {structured}")
    if len(progress) < args.steps:
        raise RuntimeError(
            f"{len(progress)} progress notifications for {args.steps} steps (expected one per step)"
        )
    return (
        f"image {images[0].mime_type} preview {size[0]}x{size[1]}, "
        f"{len(progress)} progress notifications, seed {structured.get('seed')}"
    )


def _rest_generate(base: str, headers: dict[str, str], args: argparse.Namespace) -> str:
    url = f"{base}/v1/images/generations"
    response = httpx.post(
        url,
        headers=headers,
        timeout=args.timeout,
        json={
            "prompt": "a red hat on a small dog",
            "n": 1,
            "size": f"{args.size}x{args.size}",
            "response_format": "b64_json",
            "num_inference_steps": args.steps,
            "seed": 7,
        },
    )
    if response.status_code != 200:
        status, body = response.status_code, response.text[:300]
        raise RuntimeError(f"POST {url} answered HTTP {status}: {body}")
    size = _image_size(base64.b64decode(response.json()["data"][0]["b64_json"]))
    if size != (args.size, args.size):
        raise RuntimeError(f"POST {url} returned a {size[0]}x{size[1]} image")
    return f"POST {url} -> 200, a {size[0]}x{size[1]} image"


def integration(args: argparse.Namespace) -> int:
    base = (args.mcp_url or _route_url(args.kubectl, args.namespace)).rstrip("/")
    token = os.environ.get("MCP_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    print(f"MCP server: {base} ({'with' if token else 'without'} a bearer token)")
    report = Report()
    report.check("MCP server alive", lambda: _get_ok(f"{base}/health", timeout=30))
    report.check(
        "MCP tools/call generate_image",
        lambda: asyncio.run(_mcp_generate(base, headers, args)),
    )
    report.check("REST POST /v1/images/generations", lambda: _rest_generate(base, headers, args))
    return report.exit_code()


async def _list_models(base: str, headers: dict[str, str], timeout: float) -> dict:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        result = await client.call_tool("list_models", {})
    if result.is_error:
        texts = " ".join(block.text for block in result.content if block.type == "text")
        raise RuntimeError(f"list_models returned an error: {texts}")
    return result.structured_content or {}


def models(args: argparse.Namespace) -> int:
    base = args.mcp_url.rstrip("/")
    token = os.environ.get("MCP_AUTH_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        listing = asyncio.run(_list_models(base, headers, args.timeout))
    except Exception as exc:
        print(f"FAIL  MCP list_models at {base}/mcp: {type(exc).__name__}: {exc}")
        return 1
    print(f"models served by {base} (MCP list_models):")
    rows = [("MODEL", "SOURCE", "READY", "RUNTIME URL", "NOTE")]
    for model in listing.get("models", []):
        source = model.get("source", "static")
        if model.get("inference_service"):
            source = f"isvc {model['inference_service']}"
        note = model.get("error") or ""
        if model.get("stale"):
            note = f"stale since {model['stale_since']}: {model['discovery_error']} {note}"
        ready = str(model.get("ready")) + (" (default)" if model.get("default") else "")
        rows.append((model["name"], source, ready, str(model.get("runtime_url")), note.strip()))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        print("  " + "  ".join([*cells, row[4]]).rstrip())
    discovery = listing.get("discovery")
    if discovery is None:
        print("discovery: off (DISCOVERY_ENABLED is not true)")
        return 0
    print(f"discovery: label {discovery['label_selector']} via {discovery['api']}")
    for namespace, state in discovery["namespaces"].items():
        line = f"  namespace {namespace}: last listed {state['synced_at'] or 'never'}"
        if state["error"]:
            stale = f"stale since {state['stale_since']}; " if state["stale"] else ""
            line += f"; {stale}error: {state['error']}"
        print(line)
    for ignored in discovery.get("ignored", []):
        print(f"  ignored {ignored}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    conn = commands.add_parser("connectivity", help="DNS, runtime and MCP server reachability")
    conn.add_argument(
        "--runtime-url", default=os.environ.get("DIFFUSERS_RUNTIME_URL", "http://127.0.0.1:8080")
    )
    conn.add_argument("--model", default=os.environ.get("DIFFUSERS_MODEL_ID", "model"))
    conn.add_argument("--mcp-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    conn.add_argument("--timeout", type=float, default=10)
    conn.set_defaults(run=connectivity)

    integ = commands.add_parser("integration", help="MCP tools/call + REST generation")
    target = integ.add_mutually_exclusive_group(required=True)
    target.add_argument("--mcp-url", help="the server's base URL (no /mcp)")
    target.add_argument("--namespace", help="read the base URL from this namespace's Route")
    integ.add_argument("--kubectl", default="kubectl")
    integ.add_argument("--size", type=int, default=128)
    integ.add_argument("--steps", type=int, default=4)
    # Below the Route's 330 s HAProxy timeout: a slow generation reports the server's error.
    integ.add_argument("--timeout", type=float, default=320)
    integ.set_defaults(run=integration)

    listing = commands.add_parser("models", help="the models the server serves (list_models)")
    listing.add_argument("--mcp-url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    listing.add_argument("--timeout", type=float, default=30)
    listing.set_defaults(run=models)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
