"""The init container's readiness gate: `python -m mcp_server.wait_for_runtime`.

Waits until every configured runtime says its model is ready (WAIT_TIMEOUT_SECONDS, default
300). On timeout it exits 1 printing, per runtime, the URL it polled, what DNS answered, the
last answer or error (as the server's own runtime client diagnoses it), and what to check.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass

import httpx

from mcp_server.errors import RuntimeCallError
from mcp_server.runtime_client import RuntimeClient
from mcp_server.settings import Settings, load_settings_or_exit


@dataclass
class Probe:
    client: RuntimeClient
    dns: str = "not resolved yet"
    last: str = "no answer yet"
    # The code of the last RuntimeCallError; None once the runtime answered.
    failure: str | None = "connect"
    ready: bool = False
    attempts: int = 0


def _resolve(host: str) -> str:
    try:
        addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except socket.gaierror as exc:
        return f"{host} does not resolve ({exc.strerror or exc})"
    return f"{host} -> {', '.join(addresses)}"


async def _poll(probe: Probe) -> bool:
    """One attempt; whether the model is ready now."""
    probe.attempts += 1
    probe.dns = await asyncio.to_thread(_resolve, httpx.URL(probe.client.url).host)
    try:
        probe.ready = await probe.client.ready()
    except RuntimeCallError as exc:
        cause = exc.__cause__
        probe.last = f"{type(cause).__name__}: {exc}" if cause else str(exc)
        probe.failure = exc.code
        return False
    probe.failure = None
    probe.last = "HTTP 200: " + ("ready" if probe.ready else "the model is not ready yet")
    return probe.ready


def _advice(probe: Probe, settings: Settings) -> str:
    if probe.failure == "dns":
        where = settings.diffusers_runtime_service or "<isvc>-predictor"
        namespace = settings.diffusers_runtime_namespace or "the runtime's namespace"
        return (
            "the host name does not resolve: check DIFFUSERS_RUNTIME_URL; in-cluster it is "
            f"http://{where}.{namespace}.svc.cluster.local:<port> (KServe RawDeployment names "
            "the Service <isvc>-predictor), and the InferenceService must exist"
        )
    if probe.failure == "not_found":
        return (
            f"the runtime answers but has no model {probe.client.target.model_id!r}: set "
            "DIFFUSERS_MODEL_ID to the runtime's MODEL_NAME"
        )
    if probe.failure == "protocol":
        return "something other than a diffusers runtime answers: check DIFFUSERS_RUNTIME_URL"
    if probe.failure is None or probe.failure == "unavailable" or probe.failure.startswith("http"):
        return (
            "the runtime answers but its model is not ready: it may still be downloading or "
            "loading the model (check the predictor's logs and its memory/GPU limits)"
        )
    return (
        "nothing answers at that address: check the predictor pod is running and listening "
        "on that port, and that NetworkPolicies allow this namespace to reach it"
    )


async def wait(settings: Settings, *, interval: float = 1.0) -> bool:
    async with httpx.AsyncClient() as http:
        probes = [
            Probe(
                RuntimeClient(
                    target,
                    http,
                    connect_timeout=settings.runtime_connect_timeout_seconds,
                    generation_timeout=settings.generation_timeout_seconds,
                )
            )
            for target in settings.runtimes
        ]
        return await _wait(probes, settings, interval)


async def _wait(probes: list[Probe], settings: Settings, interval: float) -> bool:
    if not probes:
        # Discovery only: the server follows the InferenceServices itself;
        # holding the pod here would only delay that.
        print("no static runtime configured (model discovery only): nothing to wait for")
        return True
    deadline = time.monotonic() + settings.wait_timeout_seconds
    print(
        f"waiting up to {settings.wait_timeout_seconds:g} s for: "
        + ", ".join(p.client.model_url() for p in probes),
        flush=True,
    )
    while True:
        for probe in probes:
            if not probe.ready and await _poll(probe):
                url = probe.client.model_url()
                print(f"ready: {url} (after {probe.attempts} attempts)", flush=True)
        if all(p.ready for p in probes):
            return True
        if time.monotonic() + interval >= deadline:
            break
        await asyncio.sleep(interval)
    print(
        f"the runtime did not become ready within {settings.wait_timeout_seconds:g} s",
        file=sys.stderr,
    )
    for probe in probes:
        if probe.ready:
            continue
        print(
            f"  model {probe.client.target.name!r}:\n"
            f"    URL:       {probe.client.model_url()} ({probe.attempts} attempts)\n"
            f"    DNS:       {probe.dns}\n"
            f"    last:      {probe.last}\n"
            f"    check:     {_advice(probe, settings)}",
            file=sys.stderr,
        )
    return False


def main() -> None:
    settings = load_settings_or_exit()
    sys.exit(0 if asyncio.run(wait(settings)) else 1)


if __name__ == "__main__":
    main()
