"""`make bench`: every layer of the service measured side by side, in one run.

Layers, on the same parameters and the exact tier: (1) raw: the bare pipeline plus PNG
encoding in a process of its own (bench/bare.py), the physical floor; (2) the runtime over
HTTP (KServe v1 :predict); (3) the MCP server's generate_image through the mcp SDK client over
streamable HTTP; (4) the REST endpoint through the openai client. Figures are medians (and
p90) of repeated runs with torch fixed to one thread, so that a shared 2-core machine gives
stable numbers. Writes bench/results/latest.json, bench/results/latest.md, and the
performance page's block (docs/performance.md). The speed tiers and the cost of size, steps
and batch are bench/tiers.py and bench/cost.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import httpx2
import openai
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bench.page import write_block
from scripts.proxy import fault_proxy
from scripts.servers import (
    DEFAULT_MODEL,
    REPO,
    ServerProcess,
    metric,
    start_mcp_server,
    start_runtime,
)

RESULTS = REPO / "bench" / "results"
# The model every layer serves: MODEL_ID (make bench passes it), by default the shipped one.
MODEL = os.environ.get("MODEL_ID") or str(DEFAULT_MODEL)
THREADS = 1
SIZES = [(64, 4, 20), (128, 4, 15), (256, 20, 7)]  # side, steps, repeats
CONCURRENCY = [1, 4, 8]
# Scale-out: replicas of one torch thread and one image per call each, behind a round-robin
# proxy standing in for the predictor Service; each replica gets two calls at a time.
REPLICAS = [1, 2]
SCALE_OUT = {"width": 128, "height": 128, "num_inference_steps": 8}
SMALL = {"width": 64, "height": 64, "num_inference_steps": 4}
# Every layer draws what the bare pipeline draws: the exact tier (the speed tiers have their
# own table, bench/tiers.py) at one guidance scale.
LIKE_FOR_LIKE = {"speed": "exact", "guidance_scale": 7.0}
GUIDANCE = LIKE_FOR_LIKE["guidance_scale"]
DEFAULT_TIER = "balanced"
# Calls over which the MCP server's own CPU time is averaged.
CPU_CALLS = 20


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))],
        "n": len(ordered),
    }


def timed(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict:
    """Latency of each call, interleaved round by round so that drift in the machine's speed
    (other processes, CPU frequency) weighs on every layer alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - started)
    return {name: summary(values) for name, values in samples.items()}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """Samples RSS every 20 ms while the block runs; the list holds the peak afterwards."""
    peak = [rss_mib(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_mib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


# Layer 1: the bare pipeline, in a process of its own (bench/bare.py).


class BareLayer:
    """The plain diffusers call in its own process with one torch thread, as the runtime
    has: no layer of ours, and no client in its process."""

    def __init__(self, model_dir: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare", model_dir, str(THREADS), str(GUIDANCE)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.meta = json.loads(self.stdout.readline())

    def __call__(self, params: dict) -> None:
        self.stdin.write(json.dumps(params) + "\n")
        self.stdin.flush()
        if self.stdout.readline().strip() != "done":
            raise RuntimeError("the bare pipeline process stopped")

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=60)


# Layers 2-4: clients of the processes.


def runtime_call(url: str, client: httpx.Client) -> Callable[[dict], None]:
    def generate(params: dict) -> None:
        response = client.post(
            f"{url}/v1/models/model:predict",
            json={
                "instances": [
                    {
                        "prompt": "a small red circle in the top left corner on a blue background",
                        "seed": 0,
                        **LIKE_FOR_LIKE,
                        **params,
                    }
                ]
            },
        )
        response.raise_for_status()

    return generate


class CountingTransport(httpx2.AsyncHTTPTransport):
    """Counts the bytes of the responses to tools/call: the MCP result's wire size.

    The session's other exchanges (discovery, the tools/list the client reads once to validate
    structured output) are per-session costs, not per-image ones.
    """

    received = 0

    async def handle_async_request(self, request):
        response = await super().handle_async_request(request)
        if b'"tools/call"' not in request.content:
            return response
        original = response.stream

        class Counted(httpx2.AsyncByteStream):
            async def __aiter__(inner):
                async for chunk in original:
                    CountingTransport.received += len(chunk)
                    yield chunk

            async def aclose(inner):
                await original.aclose()

        response.stream = Counted()
        return response


async def mcp_generate_counted(url: str, params: dict) -> tuple[object, int]:
    """One generate_image call; returns the result and the response bytes it took."""
    CountingTransport.received = 0
    async with (
        httpx2.AsyncClient(transport=CountingTransport(), timeout=120) as http_client,
        Client(streamable_http_client(f"{url}/mcp", http_client=http_client)) as client,
    ):
        result = await client.call_tool(
            "generate_image", {"prompt": "a large yellow star on a purple background", **params}
        )
    if result.is_error:
        raise RuntimeError(f"generate_image failed: {result.content}")
    return result, CountingTransport.received


class McpLayer:
    """One MCP client session, as an agent keeps it, driven from synchronous benchmark code."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        opened: concurrent.futures.Future[Client] = concurrent.futures.Future()
        self._closing = self._run(self._make_event())
        # The session lives in one task: anyio scopes must be left by the task that entered them.
        self._session = asyncio.run_coroutine_threadsafe(self._hold(url, opened), self.loop)
        self.client = opened.result(timeout=60)

    async def _make_event(self) -> asyncio.Event:
        return asyncio.Event()

    async def _hold(self, url: str, opened: concurrent.futures.Future) -> None:
        async with Client(f"{url}/mcp") as client:
            opened.set_result(client)
            await self._closing.wait()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __call__(self, params: dict) -> None:
        arguments = {
            "prompt": "a small red circle in the top left corner on a blue background",
            "seed": 0,
            **LIKE_FOR_LIKE,
            **params,
        }
        result = self._run(self.client.call_tool("generate_image", arguments))
        if result.is_error:
            raise RuntimeError(f"generate_image failed: {result.content}")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._closing.set)
        self._session.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)


def rest_call(url: str, client: openai.OpenAI) -> Callable[[dict], None]:
    def generate(params: dict) -> None:
        client.images.generate(
            prompt="a small red circle in the top left corner on a blue background",
            size=f"{params['width']}x{params['height']}",
            response_format="b64_json",
            extra_body={
                "num_inference_steps": params["num_inference_steps"],
                "seed": params.get("seed", 0),
                **LIKE_FOR_LIKE,
            },
        )

    return generate


def partial_image_cost(url: str, client: httpx.Client, repeats: int = 9) -> dict[str, float]:
    """What partial images cost: one 128x128, 20-step generation streamed from the runtime
    with none and with three (interleaved), and the runtime's own time per partial picture
    (estimate plus VAE decode, diffusers_partial_image_seconds)."""

    def stream(partial_images: int) -> None:
        instance = {
            "prompt": "a small red circle in the top left corner on a blue background",
            "seed": 0,
            "width": 128,
            "height": 128,
            "num_inference_steps": 20,
            "partial_images": partial_images,
        }
        with client.stream(
            "POST", f"{url}/v1/models/model:generate", json={"instances": [instance]}
        ) as response:
            response.raise_for_status()
            for _ in response.iter_lines():
                pass

    figures = timed(
        {"none": functools.partial(stream, 0), "three": functools.partial(stream, 3)}, repeats
    )
    none, three = figures["none"]["median"], figures["three"]["median"]
    count = metric(url, "diffusers_partial_image_seconds_count")
    return {
        "none_s": none,
        "three_s": three,
        "per_partial_ms": (three - none) / 3 * 1000,
        "per_partial_share": (three - none) / 3 / none,
        "decode_ms": metric(url, "diffusers_partial_image_seconds_sum") / count * 1000,
    }


def throughput(call: Callable[[dict], None], clients: int, params: dict = SMALL) -> float:
    """Images per second with CLIENTS closed-loop clients, 24 requests in all."""
    per_client = 24 // clients

    def client_loop(index: int) -> None:
        for k in range(per_client):
            call({**params, "seed": index * 100 + k})

    call(params)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    return clients * per_client / (time.perf_counter() - started)


def scale_out(log_dir: Path) -> dict[str, dict[str, float]]:
    """Images/s against runtime replicas, at the runtime (through the proxy) and through the
    MCP server's REST API, 2 x replicas clients. The MCP server is told the replicas'
    slots (MAX_CONCURRENT_PER_RUNTIME) as discovery would count them in a cluster."""
    figures = {}
    for count in REPLICAS:
        with contextlib.ExitStack() as stack:
            replicas = [
                stack.enter_context(runtime_process(log_dir, MAX_BATCH_SIZE="1"))
                for _ in range(count)
            ]
            proxy = stack.enter_context(
                fault_proxy(*(int(r.url.rsplit(":", 1)[1]) for r in replicas))
            )
            mcp = stack.enter_context(
                start_mcp_server(
                    log_dir,
                    DIFFUSERS_RUNTIME_URL=proxy.url,
                    MAX_CONCURRENT_PER_RUNTIME=str(2 * count),
                    LOG_LEVEL="WARNING",
                )
            )
            http = stack.enter_context(httpx.Client(timeout=300))
            rest = openai.OpenAI(base_url=f"{mcp.url}/v1", api_key="unused", timeout=300)
            clients = 2 * count
            figures[str(count)] = {
                "runtime": throughput(runtime_call(proxy.url, http), clients, SCALE_OUT),
                "mcp": throughput(rest_call(mcp.url, rest), clients, SCALE_OUT),
            }
        print(f"scale-out x{count}: {figures[str(count)]}", flush=True)
    return figures


def cold_start(model_dir: str, log_dir: Path) -> dict[str, float]:
    """Runtime process start to ready, against a process that only imports and loads."""
    load_only = (
        "from diffusers_runtime.loading import load_pipeline;"
        "from diffusers_runtime.settings import RuntimeSettings;"
        f"load_pipeline(RuntimeSettings(model_id={model_dir!r}))"
    )
    baseline, served = [], []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", load_only], check=True, capture_output=True)
        baseline.append(time.perf_counter() - started)
        started = time.perf_counter()
        with runtime_process(log_dir, poll=0.02):
            served.append(time.perf_counter() - started)
    return {
        "import_and_load_s": statistics.median(baseline),
        "runtime_ready_s": statistics.median(served),
    }


@contextlib.contextmanager
def runtime_process(log_dir: Path, poll: float = 0.2, **env: str) -> Iterator[ServerProcess]:
    with start_runtime(
        log_dir, poll=poll, MODEL_ID=MODEL, TORCH_THREADS=str(THREADS), LOG_LEVEL="WARNING", **env
    ) as server:
        yield server


@contextlib.contextmanager
def mcp_process(runtime: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    with start_mcp_server(
        log_dir,
        DIFFUSERS_RUNTIME_URL=runtime.url,
        # Let every benchmark client through, so the runtime can batch them.
        MAX_CONCURRENT_PER_RUNTIME="8",
        LOG_LEVEL="WARNING",
    ) as server:
        yield server


def wire_bytes(mcp_url: str, rest_url: str) -> dict[str, float]:
    params = {**SMALL, "width": 128, "height": 128, "seed": 5}
    result, mcp_wire = asyncio.run(mcp_generate_counted(mcp_url, params))
    image_ids = result.structured_content["images"]
    stored = httpx.get(image_ids[0]["url"], timeout=30).content
    rest = httpx.post(
        f"{rest_url}/v1/images/generations",
        json={
            "prompt": "a large yellow star on a purple background",
            "size": "128x128",
            "response_format": "b64_json",
            "num_inference_steps": 4,
            "seed": 5,
        },
        timeout=120,
    )
    encoded = len(base64.b64decode(rest.json()["data"][0]["b64_json"]))
    return {
        "image_bytes": encoded,
        "mcp_stored_image_bytes": len(stored),
        "mcp_result_bytes": mcp_wire,
        "rest_result_bytes": len(rest.content),
        "mcp_ratio": mcp_wire / len(stored),
        "rest_ratio": len(rest.content) / encoded,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process PID so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_ms(pid: int, call: Callable[[dict], None]) -> float:
    """The MCP server's own CPU milliseconds per call at 64x64/4, over CPU_CALLS calls."""
    before = cpu_seconds(pid)
    for seed in range(CPU_CALLS):
        call({**SMALL, "seed": seed})
    return 1000 * (cpu_seconds(pid) - before) / CPU_CALLS


def measure(log_dir: Path) -> dict:
    model_dir = MODEL
    raw = BareLayer(model_dir)
    meta = raw.meta
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch_threads": THREADS,
        },
        **meta,
        "latency": {},
        "throughput": {},
    }
    with (
        runtime_process(log_dir) as runtime,
        mcp_process(runtime, log_dir) as mcp,
        httpx.Client(timeout=300) as http,
    ):
        rest_client = openai.OpenAI(base_url=f"{mcp.url}/v1", api_key="unused", timeout=300)
        layers = {
            "raw": raw,
            "runtime": runtime_call(runtime.url, http),
            "mcp": McpLayer(mcp.url),
            "rest": rest_call(mcp.url, rest_client),
        }
        for side, steps, repeats in SIZES:
            params = {"width": side, "height": side, "num_inference_steps": steps}
            key = f"{side}x{side}/{steps}"
            figures = timed(
                {name: functools.partial(call, params) for name, call in layers.items()}, repeats
            )
            for name in ("runtime", "mcp", "rest"):
                figures[name]["ratio_to_raw"] = figures[name]["median"] / figures["raw"]["median"]
            results["latency"][key] = figures
            print(key, {n: round(f["median"] * 1000, 1) for n, f in figures.items()}, flush=True)

        results["server_cpu_ms_per_call"] = {
            name: server_cpu_ms(mcp.process.pid, layers[name]) for name in ("mcp", "rest")
        }
        print("MCP server CPU ms per call", results["server_cpu_ms_per_call"], flush=True)
        results["partial_images"] = partial_image_cost(runtime.url, http)
        print("partial images", results["partial_images"], flush=True)

        # Sequential raw throughput is one image per raw latency, measured interleaved above.
        raw_rate = 1 / results["latency"]["64x64/4"]["raw"]["median"]
        results["throughput"]["raw_sequential"] = raw_rate
        idle = rss_mib(mcp.process.pid)
        for clients in CONCURRENCY:
            for name in ("runtime", "mcp"):
                if name == "mcp" and clients == max(CONCURRENCY):
                    with peak_rss(mcp.process.pid) as peak:
                        rate = throughput(layers[name], clients)
                    results["mcp_rss_under_load_mib"] = peak[0]
                else:
                    rate = throughput(layers[name], clients)
                results["throughput"][f"{name}_{clients}"] = {
                    "images_per_s": rate,
                    "ratio_to_raw_sequential": rate / raw_rate,
                }
                print(f"throughput {name} x{clients}: {rate:.2f} img/s", flush=True)
        # What a client gets without asking for a tier: the runtime's default one.
        default = {**SMALL, "speed": DEFAULT_TIER}
        results["default_tier"] = {
            "speed": DEFAULT_TIER,
            "mcp_latency": timed({"mcp": functools.partial(layers["mcp"], default)}, 15)["mcp"],
            "mcp_8_images_per_s": throughput(layers["mcp"], max(CONCURRENCY), default),
        }
        print("default tier", results["default_tier"], flush=True)
        results["mcp_rss_idle_mib"] = idle
        results["runtime_rss_mib"] = rss_mib(runtime.process.pid)
        results["wire"] = wire_bytes(mcp.url, mcp.url)
        layers["mcp"].close()
        raw.close()
    with (
        runtime_process(log_dir, MAX_BATCH_SIZE="1") as unbatched,
        httpx.Client(timeout=300) as http,
    ):
        rate = throughput(runtime_call(unbatched.url, http), max(CONCURRENCY))
        results["throughput"][f"runtime_{max(CONCURRENCY)}_batching_off"] = {
            "images_per_s": rate,
            "ratio_to_raw_sequential": rate / raw_rate,
        }
    results["scale_out"] = scale_out(log_dir)
    results["cold_start"] = cold_start(model_dir, log_dir)
    results["cold_start"]["ratio"] = (
        results["cold_start"]["runtime_ready_s"] / results["cold_start"]["import_and_load_s"]
    )
    return results


def table(results: dict) -> str:
    lines = [
        f"Measured on {results['machine']['cores']} cores "
        f"({results['machine']['cpu']}), Python {results['machine']['python']}, "
        f"torch threads {results['machine']['torch_threads']}, model {Path(MODEL).name}; "
        "medians (p90).",
        "",
        "| single request | raw | runtime | MCP | REST |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, figures in results["latency"].items():
        cells = [f"{figures['raw']['median'] * 1000:.0f} ms ({figures['raw']['p90'] * 1000:.0f})"]
        for name in ("runtime", "mcp", "rest"):
            f = figures[name]
            cells.append(
                f"{f['median'] * 1000:.0f} ms ({f['p90'] * 1000:.0f}), **{f['ratio_to_raw']:.2f}x**"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    t = results["throughput"]
    lines += [
        "",
        f"Throughput at 64x64/4 steps (raw sequential: {t['raw_sequential']:.2f} images/s):",
        "",
        "| clients | runtime | MCP |",
        "| --- | --- | --- |",
    ]
    for clients in CONCURRENCY:
        cells = [
            f"{t[f'{n}_{clients}']['images_per_s']:.2f}/s, "
            f"**{t[f'{n}_{clients}']['ratio_to_raw_sequential']:.2f}x**"
            for n in ("runtime", "mcp")
        ]
        lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    off = t[f"runtime_{max(CONCURRENCY)}_batching_off"]
    d = results["default_tier"]
    raw_64 = results["latency"]["64x64/4"]["raw"]["median"]
    w, c, p = results["wire"], results["cold_start"], results["partial_images"]
    lines += [
        "",
        *scale_out_lines(results["scale_out"]),
        f"- MCP at the default tier ({d['speed']}), 64x64/4: "
        f"{d['mcp_latency']['median'] * 1000:.0f} ms, "
        f"**{d['mcp_latency']['median'] / raw_64:.2f}x** "
        f"bare exact; {max(CONCURRENCY)} clients {d['mcp_8_images_per_s']:.2f}/s, "
        f"**{d['mcp_8_images_per_s'] / t['raw_sequential']:.2f}x** bare sequential.",
        f"- Runtime with batching off, {max(CONCURRENCY)} clients: "
        f"{off['images_per_s']:.2f}/s ({off['ratio_to_raw_sequential']:.2f}x raw).",
        f"- MCP server CPU per call (64x64/4, {CPU_CALLS} calls): "
        f"{results['server_cpu_ms_per_call']['mcp']:.1f} ms for generate_image, "
        f"{results['server_cpu_ms_per_call']['rest']:.1f} ms for REST b64_json.",
        f"- MCP server RSS: {results['mcp_rss_idle_mib']:.0f} MiB idle, "
        f"{results['mcp_rss_under_load_mib']:.0f} MiB peak under {max(CONCURRENCY)} clients; "
        f"runtime RSS {results['runtime_rss_mib']:.0f} MiB.",
        f"- Runtime cold start: {c['runtime_ready_s']:.1f} s to ready vs "
        f"{c['import_and_load_s']:.1f} s to import and load in a bare process "
        f"(**{c['ratio']:.2f}x**).",
        f"- Partial images (128x128, 20 steps, streamed): {p['none_s'] * 1000:.0f} ms with "
        f"none, {p['three_s'] * 1000:.0f} ms with three: {p['per_partial_ms']:.0f} ms each "
        f"(**{p['per_partial_share']:.1%}** of the generation); the runtime's estimate and "
        f"decode per partial picture: {p['decode_ms']:.0f} ms.",
        f"- Wire bytes per image (128x128 PNG): MCP result {w['mcp_result_bytes']} B for a "
        f"{w['mcp_stored_image_bytes']} B image (**{w['mcp_ratio']:.2f}x**); REST b64_json "
        f"{w['rest_result_bytes']} B for {w['image_bytes']} B (**{w['rest_ratio']:.2f}x**).",
    ]
    return "\n".join(lines) + "\n"


def scale_out_lines(figures: dict[str, dict[str, float]]) -> list[str]:
    one = figures["1"]
    lines = [
        f"Images/s against runtime replicas ({SCALE_OUT['width']}x{SCALE_OUT['height']}/"
        f"{SCALE_OUT['num_inference_steps']}, one torch thread and one image per call each, "
        "behind a round-robin proxy; 2 clients per replica):",
        "",
        "| replicas | runtime | MCP (REST) |",
        "| --- | --- | --- |",
    ]
    for count, f in figures.items():
        lines.append(
            f"| {count} | {f['runtime']:.2f}/s, **{f['runtime'] / one['runtime']:.2f}x** | "
            f"{f['mcp']:.2f}/s, **{f['mcp'] / one['mcp']:.2f}x** |"
        )
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-page", action="store_true", help="leave docs/performance.md alone")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(exist_ok=True)
    results = measure(log_dir)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = table(results)
    (RESULTS / "latest.md").write_text(markdown)
    if not args.no_page:
        write_block("bench", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
