"""Discovery with the real `kubernetes` client against the fake API server, feeding the real
image service, which generates on the real tiny runtime: discovery, readiness changes,
deletion, an unreachable API server, RBAC refusals, name clashes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mcp_server.discovery import (
    MODEL_ID_ANNOTATION,
    Discovery,
    DiscoveryConfigError,
    parse_inference_service,
    ready_replicas,
)
from mcp_server.errors import ServiceError
from mcp_server.generation import GenerationRequest
from mcp_server.registry import ModelRegistry
from mcp_server.service import ImageService
from mcp_server.settings import Settings, SettingsError, load_settings
from mcp_server.store import make_store
from tests.discovery.conftest import FakeCluster
from tests.helpers import SMALL

INTERVAL = 0.2


@pytest.fixture(autouse=True)
def _no_static_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIFFUSERS_RUNTIME_URL", "DIFFUSERS_RUNTIMES", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)


@contextlib.asynccontextmanager
async def serving(cluster: FakeCluster, tmp_path: Path, **env) -> AsyncIterator[ImageService]:
    """The image service with discovery started against the fake API, as the app runs it."""
    settings = Settings(
        discovery_enabled=True,
        kubernetes_api_url=cluster.url,
        discovery_interval_seconds=INTERVAL,
        image_store_dir=str(tmp_path / "images"),
        **env,
    )
    discovery = Discovery(settings)
    async with httpx.AsyncClient() as http:
        service = ImageService(make_store(settings), ModelRegistry(settings, http, discovery))
        await discovery.start()
        try:
            yield service
        finally:
            await discovery.stop()


async def eventually(check: Callable[[], object], timeout: float = 5) -> object:
    """Poll CHECK until it returns something truthy without raising; the last error otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, ServiceError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {timeout} s")
        await asyncio.sleep(0.05)


async def generate(service: ImageService, model: str) -> tuple[int, int]:
    request = GenerationRequest(prompt="a lighthouse", model=model, seed=3, **SMALL)
    result, blobs = await service.generate(request, entry="test", request_id=None)
    assert result.model == model
    with Image.open(io.BytesIO(blobs[0])) as image:
        return image.size


def refusal(service: ImageService, model: str) -> str:
    """The error a request for MODEL gets now (fails the check while it still works)."""
    try:
        service.check_model(model)
    except ServiceError as exc:
        return str(exc)
    raise AssertionError(f"{model!r} is still usable")


async def listed(service: ImageService) -> list[dict]:
    return [m.model_dump() for m in await service.models()]


def entry(models: list[dict], name: str) -> dict:
    (found,) = [m for m in models if m["name"] == name]
    return found


async def ready(service: ImageService) -> tuple[bool, set[str]]:
    """Whether the models are ready (diffusers://status), and which runtimes it lists."""
    status = await service.status()
    return status.ready, {s.model for s in status.runtimes}


@pytest.mark.asyncio
async def test_labelled_inference_services_become_models(cluster, runtime, tmp_path):
    cluster.put("painter", url=runtime.url)
    cluster.put("unlabelled", url=runtime.url, labels={})
    cluster.put("elsewhere", url=runtime.url, namespace="not-watched")
    async with serving(cluster, tmp_path) as service:
        # The server asks the API server for the label; the fake filters as the real one does.
        assert {r.params.get("labelSelector") for r in cluster.list_requests()} == {
            "diffusers-mcp.io/expose=true"
        }
        assert {r.namespace for r in cluster.list_requests()} == {"default"}
        models = await listed(service)
        assert [m["name"] for m in models] == ["painter"]
        painter = entry(models, "painter")
        assert painter["ready"] is True and painter["default"] is True
        assert painter["runtime_url"] == runtime.url
        assert painter["source"] == "discovery"
        assert painter["inference_service"] == "default/painter"
        assert painter["stale"] is False
        assert painter["capabilities"]["max_steps"] > 0
        assert await generate(service, "painter") == (64, 64)

        # A new InferenceService is usable within an interval or two.
        started = time.monotonic()
        cluster.put("late", url=runtime.url)
        await eventually(lambda: service.check_model("late"))
        assert time.monotonic() - started < 10 * INTERVAL
        assert await generate(service, "late") == (64, 64)
        ok, runtimes = await ready(service)
        assert ok and runtimes == {"painter", "late"}


@pytest.mark.asyncio
async def test_readiness_changes_are_followed(cluster, runtime, tmp_path):
    cluster.put("painter", url=runtime.url)
    async with serving(cluster, tmp_path) as service:
        assert await generate(service, "painter") == (64, 64)
        cluster.set_ready("painter", False, "Revision painter-predictor failed: OOMKilled")
        message = await eventually(lambda: refusal(service, "painter"))
        assert message.startswith("Model 'painter' is unavailable: not Ready (Revision")
        assert "OOMKilled" in message and "InferenceService default/painter" in message
        with pytest.raises(ServiceError) as caught:
            await generate(service, "painter")
        assert caught.value.status == 503 and caught.value.code == "unavailable"
        painter = entry(await listed(service), "painter")
        assert painter["ready"] is False
        assert painter["error"] == (
            "unavailable: not Ready (Revision painter-predictor failed: OOMKilled)"
        )
        ok, _ = await ready(service)
        assert not ok  # it was the only model

        cluster.set_ready("painter", True)
        await eventually(lambda: service.check_model("painter"))
        assert await generate(service, "painter") == (64, 64)


@pytest.mark.asyncio
async def test_a_deleted_inference_service_is_reported_unavailable(cluster, runtime, tmp_path):
    cluster.put("painter", url=runtime.url)
    cluster.put("keeper", url=runtime.url)
    async with serving(cluster, tmp_path) as service:
        cluster.delete("painter")
        await eventually(lambda: refusal(service, "painter"))
        with pytest.raises(ServiceError) as caught:
            await generate(service, "painter")
        assert caught.value.status == 503
        assert "was deleted or lost the label diffusers-mcp.io/expose=true" in str(caught.value)
        painter = entry(await listed(service), "painter")
        assert painter["ready"] is False and "deleted" in painter["error"]
        # The other model is untouched, and the server stays ready for it.
        ok, _ = await ready(service)
        assert ok and await generate(service, "keeper") == (64, 64)


@pytest.mark.asyncio
async def test_an_unreachable_api_server_keeps_the_last_list_marked_stale(
    cluster, runtime, tmp_path
):
    cluster.put("painter", url=runtime.url)
    async with serving(cluster, tmp_path) as service:
        assert service.discovery_status()["stale"] is False
        before = time.time()
        await cluster.stop_serving()
        status = await eventually(
            lambda: service.discovery_status()["stale"] and service.discovery_status()
        )
        default = status["namespaces"]["default"]
        assert default["stale"] is True
        assert default["error"].startswith(
            f"cannot reach the Kubernetes API at {cluster.url} to list "
            "inferenceservices.serving.kserve.io in namespace default: "
        )
        assert "NetworkPolicy allows egress to the API server" in default["error"]
        assert default["stale_since"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before))
        # The last known list still serves, each model saying it comes from a stale list.
        painter = entry(await listed(service), "painter")
        assert painter["ready"] is True and painter["stale"] is True
        assert painter["stale_since"] == default["stale_since"]
        assert painter["discovery_error"] == default["error"]
        assert await generate(service, "painter") == (64, 64)
        ok, _ = await ready(service)
        assert ok


@pytest.mark.asyncio
async def test_rbac_forbidden_names_the_missing_permission(cluster, runtime, tmp_path):
    cluster.forbidden.add("team-b")
    cluster.put("painter", url=runtime.url)
    async with serving(cluster, tmp_path, discovery_namespaces="default,team-b") as service:
        status = service.discovery_status()
        error = status["namespaces"]["team-b"]["error"]
        assert error.startswith(
            "forbidden (HTTP 403): this server's ServiceAccount may not list "
            "inferenceservices.serving.kserve.io in namespace team-b: "
        )
        # The API server's own words, then what to do.
        assert 'User "system:serviceaccount:mcp-server-dev:mcp-server" cannot list' in error
        assert "Grant list on inferenceservices.serving.kserve.io in " in error
        # Never listed, so nothing is stale; the readable namespace works.
        assert status["namespaces"]["team-b"]["stale"] is False
        assert status["namespaces"]["default"]["error"] is None
        assert await generate(service, "painter") == (64, 64)


@pytest.mark.asyncio
async def test_static_configuration_wins_a_name_clash(cluster, runtime, tmp_path):
    cluster.put("tiny", url="http://127.0.0.1:9", ready=True)
    # The same runtime as the static one (name, URL, model id): no clash to report.
    cluster.put("same", url=runtime.url, namespace="team-b")
    cluster.put("painter", url=runtime.url, namespace="team-b")
    cluster.put("painter", url="http://127.0.0.1:9", namespace="team-c")
    async with serving(
        cluster,
        tmp_path,
        diffusers_runtimes=[
            {"name": "tiny", "url": runtime.url},
            {"name": "same", "url": runtime.url},
        ],
        discovery_namespaces="default,team-b,team-c",
    ) as service:
        models = await listed(service)
        assert [(m["name"], m["source"]) for m in models] == [
            ("tiny", "static"),
            ("same", "static"),
            ("painter", "discovery"),
        ]
        assert entry(models, "tiny")["runtime_url"] == runtime.url
        assert entry(models, "painter")["inference_service"] == "team-b/painter"
        assert service.discovery_status()["ignored"] == [
            "InferenceService default/tiny: the static configuration already has a model "
            "'tiny' and wins",
            "InferenceService team-c/painter: InferenceService team-b/painter has the same "
            "name and comes first in DISCOVERY_NAMESPACES",
        ]
        assert await generate(service, "tiny") == (64, 64)
        assert await generate(service, "painter") == (64, 64)


async def replicas(service: ImageService) -> dict[str, tuple[int, int]]:
    """Per model: the replicas admission counts with, and the slots they give."""
    return {s.model: (s.replicas, s.slots) for s in (await service.status()).runtimes}


@pytest.mark.asyncio
async def test_admission_follows_the_ready_replicas_of_each_predictor(cluster, runtime, tmp_path):
    cluster.put("painter", url=runtime.url)
    cluster.put_endpoints("painter", [True, True, False])
    # A static model that is this InferenceService (same name and URL) follows it too.
    cluster.put("same", url=runtime.url)
    cluster.put_endpoints("same", [True, True, True])
    cluster.put("unlisted", url=runtime.url)  # no EndpointSlice: not RawDeployment, say
    async with serving(
        cluster,
        tmp_path,
        diffusers_runtimes=[{"name": "same", "url": runtime.url}],
        max_concurrent_per_runtime=4,
    ) as service:
        assert await replicas(service) == {"same": (3, 12), "painter": (2, 8), "unlisted": (1, 4)}
        # The autoscaler adds a pod, then scales down to none ready: never below one.
        cluster.put_endpoints("painter", [True, True, True, True])
        await eventually(lambda: service.registry.limiter("painter").replicas == 4)
        assert (await replicas(service))["painter"] == (4, 16)
        cluster.put_endpoints("painter", [False])
        await eventually(lambda: service.registry.limiter("painter").replicas == 1)
        assert await generate(service, "painter") == (64, 64)
        assert service.discovery_status()["namespaces"]["default"]["replicas_error"] is None


@pytest.mark.asyncio
async def test_unreadable_endpoint_slices_count_one_replica_and_say_why(cluster, runtime, tmp_path):
    cluster.slices_forbidden.add("default")
    cluster.put("painter", url=runtime.url)
    cluster.put_endpoints("painter", [True, True])
    async with serving(cluster, tmp_path) as service:
        error = service.discovery_status()["namespaces"]["default"]["replicas_error"]
        assert error.startswith(
            "forbidden (HTTP 403): this server's ServiceAccount may not list "
            "endpointslices.discovery.k8s.io in namespace default: "
        )
        assert "Grant list on endpointslices.discovery.k8s.io in " in error
        assert (await replicas(service))["painter"][0] == 1
        assert await generate(service, "painter") == (64, 64)


def test_ready_replicas_counts_each_ready_pod_once():
    def endpoint(pod: str | None, address: str, ready: bool | None) -> dict:
        conditions = {} if ready is None else {"ready": ready}
        found: dict = {"addresses": [address], "conditions": conditions}
        if pod:
            found["targetRef"] = {"kind": "Pod", "name": pod}
        return found

    def slice_of(service: str, *endpoints: dict) -> dict:
        labels = {"kubernetes.io/service-name": service}
        return {"metadata": {"labels": labels}, "endpoints": list(endpoints)}

    slices = [
        # Dual stack: the same two pods in an IPv4 and an IPv6 slice.
        slice_of(
            "a-predictor", endpoint("a-1", "10.0.0.1", True), endpoint("a-2", "10.0.0.2", None)
        ),
        slice_of("a-predictor", endpoint("a-1", "fd00::1", True), endpoint("a-2", "fd00::2", None)),
        # Terminating or not yet ready pods do not count.
        slice_of(
            "b-predictor", endpoint("b-1", "10.0.1.1", False), endpoint(None, "10.0.1.2", True)
        ),
        slice_of("c-predictor"),
        {"metadata": {}, "endpoints": [endpoint("x", "10.9.9.9", True)]},
    ]
    assert ready_replicas(slices) == {"a-predictor": 2, "b-predictor": 1, "c-predictor": 0}


def test_status_fields_kserve_publishes():
    def isvc(status: dict, annotations: dict | None = None) -> dict:
        metadata = {"name": "m", "namespace": "ns", "annotations": annotations or {}}
        return {"metadata": metadata, "status": status}

    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    predictor_only = {
        **ready,
        "components": {"predictor": {"address": {"url": "http://m-predictor.ns.svc/"}}},
    }
    model = parse_inference_service(isvc(predictor_only, {MODEL_ID_ANNOTATION: "dog"}))
    assert (model.url, model.model_id, model.available) == ("http://m-predictor.ns.svc", "dog", 1)
    no_url = parse_inference_service(isvc(ready))
    assert not no_url.available
    assert no_url.message == "Ready, but KServe published no address URL in its status"
    new = parse_inference_service(isvc({}))
    assert new.message.startswith("KServe has not reported a Ready condition yet")
    # Ready=False without a message: the failing condition that says why.
    failing = {
        "address": {"url": "http://m.ns.svc"},
        "conditions": [
            {"type": "PredictorReady", "status": "False", "message": "0/3 nodes have a GPU"},
            {"type": "Ready", "status": "False"},
        ],
    }
    assert parse_inference_service(isvc(failing)).message == (
        "not Ready (PredictorReady: 0/3 nodes have a GPU)"
    )


def test_settings(monkeypatch):
    monkeypatch.setenv("DISCOVERY_ENABLED", "true")
    settings = load_settings()
    assert settings.runtimes == []  # no implicit local runtime beside discovery
    assert settings.discovery_namespaces == ["default"]
    assert settings.discovery_label_selector == "diffusers-mcp.io/expose=true"
    assert settings.discovery_interval_seconds == 5
    monkeypatch.setenv("DIFFUSERS_RUNTIME_URL", "http://tiny-sd-predictor.default.svc")
    assert [t.url for t in load_settings().runtimes] == ["http://tiny-sd-predictor.default.svc"]
    monkeypatch.setenv("DISCOVERY_NAMESPACES", "default, Team_B")
    with pytest.raises(SettingsError, match=r"DISCOVERY_NAMESPACES: .*\['Team_B'\]"):
        load_settings()


def test_no_api_configuration_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    discovery = Discovery(Settings(discovery_enabled=True))
    with pytest.raises(DiscoveryConfigError) as caught:
        discovery.connect()
    message = str(caught.value)
    assert message.startswith("DISCOVERY_ENABLED=true but there is no Kubernetes API to ask")
    assert "automountServiceAccountToken" in message and "KUBERNETES_API_URL" in message
