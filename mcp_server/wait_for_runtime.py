"""The init container's readiness gate: `python -m mcp_server.wait_for_runtime`.

Waits until every configured runtime says its model is ready (WAIT_TIMEOUT_SECONDS, default
300). On timeout it exits 1 printing, per runtime, the URL it polled, what DNS answered, the
last HTTP status or error, and what to check.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field

import httpx

from mcp_server.settings import RuntimeTarget, Settings, load_settings_or_exit


@dataclass
class Probe:
    target: RuntimeTarget
    url: str = ""
    dns: str = "not resolved yet"
    last: str = "no answer yet"
    ready: bool = False
    attempts: int = 0
    history: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = f"{self.target.url}/v1/models/{self.target.model_id}"


def _resolve(host: str) -> str:
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except socket.gaierror as exc:
        return f"{host} does not resolve ({exc.strerror or exc})"
    return f"{host} -> {', '.join(addresses)}"


def _poll(probe: Probe, timeout: float) -> None:
    probe.attempts += 1
    probe.dns = _resolve(httpx.URL(probe.url).host)
    try:
        response = httpx.get(probe.url, timeout=timeout)
    except httpx.HTTPError as exc:
        probe.last = f"{type(exc).__name__}: {exc or 'no details'}"
        return
    body = response.text[:200].strip()
    probe.last = f"HTTP {response.status_code} {body}"
    if response.status_code == 200:
        try:
            probe.ready = bool(response.json().get("ready"))
        except ValueError:
            probe.last += " (not JSON: is this URL a diffusers runtime?)"


def _advice(probe: Probe, settings: Settings) -> str:
    if "does not resolve" in probe.dns:
        where = settings.diffusers_runtime_service or "<isvc>-predictor"
        namespace = settings.diffusers_runtime_namespace or "the runtime's namespace"
        return (
            "the host name does not resolve: check DIFFUSERS_RUNTIME_URL; in-cluster it is "
            f"http://{where}.{namespace}.svc.cluster.local:<port> (KServe RawDeployment names "
            "the Service <isvc>-predictor), and the InferenceService must exist"
        )
    if "HTTP 404" in probe.last:
        return (
            f"the runtime answers but has no model {probe.target.model_id!r}: set "
            "DIFFUSERS_MODEL_ID to the runtime's MODEL_NAME"
        )
    if probe.last.startswith("HTTP"):
        return (
            "the runtime answers but its model is not ready: it may still be downloading or "
            "loading the model (check the predictor's logs and its memory/GPU limits)"
        )
    return (
        "nothing answers at that address: check the predictor pod is running and listening "
        "on that port, and that NetworkPolicies allow this namespace to reach it"
    )


def wait(settings: Settings, *, interval: float = 1.0) -> bool:
    probes = [Probe(target) for target in settings.runtimes]
    if not probes:
        # Discovery only: the server follows the InferenceServices itself and /ready says
        # when one is usable; holding the pod here would only delay that.
        print("no static runtime configured (model discovery only): nothing to wait for")
        return True
    deadline = time.monotonic() + settings.wait_timeout_seconds
    poll_timeout = settings.runtime_connect_timeout_seconds
    print(
        f"waiting up to {settings.wait_timeout_seconds:g} s for: "
        + ", ".join(p.url for p in probes),
        flush=True,
    )
    while True:
        for probe in probes:
            if not probe.ready:
                _poll(probe, min(poll_timeout, max(deadline - time.monotonic(), 0.1)))
                if probe.ready:
                    print(f"ready: {probe.url} (after {probe.attempts} attempts)", flush=True)
        if all(p.ready for p in probes):
            return True
        if time.monotonic() + interval >= deadline:
            break
        time.sleep(interval)
    print(
        f"the runtime did not become ready within {settings.wait_timeout_seconds:g} s",
        file=sys.stderr,
    )
    for probe in probes:
        if probe.ready:
            continue
        print(
            f"  model {probe.target.name!r}:\n"
            f"    URL:       {probe.url} ({probe.attempts} attempts)\n"
            f"    DNS:       {probe.dns}\n"
            f"    last:      {probe.last}\n"
            f"    check:     {_advice(probe, settings)}",
            file=sys.stderr,
        )
    return False


def main() -> None:
    settings = load_settings_or_exit()
    sys.exit(0 if wait(settings) else 1)


if __name__ == "__main__":
    main()
