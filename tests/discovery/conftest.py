"""A fake Kubernetes API (kmock's emulator, a real HTTP server on a free loopback port) holding
InferenceServices, for the discovery tests. The real `kubernetes` client talks to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import pytest_asyncio
import yaml

from mcp_server.discovery import GROUP, PLURAL, SERVICE_NAME_LABEL, SLICES, VERSION

ISVC = kmock.resource(GROUP, VERSION, PLURAL)
ENDPOINT_SLICES = kmock.resource(*SLICES)
LABEL = {"diffusers-mcp.io/expose": "true"}


def _selected(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b,c=d`), what the server sends."""
    wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
    return all(labels.get(key) == value for key, value in wanted.items())


@dataclass
class FakeCluster:
    """The emulator plus what the API server does that the emulator does not: label-selector
    filtering on lists, and RBAC refusals for chosen namespaces."""

    api: kmock.KubernetesEmulator
    serving: contextlib.AsyncExitStack
    url: str = ""
    forbidden: set[str] = field(default_factory=set)
    # Namespaces whose EndpointSlices this server's account may not list.
    slices_forbidden: set[str] = field(default_factory=set)

    async def stop_serving(self) -> None:
        """The API server goes away: its port refuses connections from now on."""
        await self.serving.aclose()

    def list_requests(self) -> list[Any]:
        return [r for r in self.api if r.resource == ISVC and r.action == kmock.action.LIST]

    def _list(self, request: kmock.Request) -> dict[str, Any]:
        if request.namespace in self.forbidden:
            raise _forbidden(GROUP, PLURAL, request.namespace)
        selector = request.params.get("labelSelector", "")
        items = [
            obj.raw
            for (resource, namespace, _), obj in self.api.objects.items()
            if resource == ISVC and namespace == request.namespace and not obj.deleted
            if _selected(obj.raw["metadata"].get("labels") or {}, selector)
        ]
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceServiceList",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }

    def _list_slices(self, request: kmock.Request) -> dict[str, Any]:
        if request.namespace in self.slices_forbidden:
            raise _forbidden(SLICES[0], SLICES[2], request.namespace)
        items = [
            obj.raw
            for (resource, namespace, _), obj in self.api.objects.items()
            if resource == ENDPOINT_SLICES and namespace == request.namespace and not obj.deleted
        ]
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "items": items}

    def put_endpoints(self, name: str, ready: list[bool], namespace: str = "default") -> None:
        """The EndpointSlice of the InferenceService NAME's predictor Service: one endpoint per
        pod, READY saying which are ready (as KServe's RawDeployment Service would have)."""
        service = f"{name}-predictor"
        self.api.objects[ENDPOINT_SLICES, namespace, f"{service}-x1"] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-x1",
                "namespace": namespace,
                "labels": {SERVICE_NAME_LABEL: service},
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [f"10.0.0.{index + 1}"],
                    "conditions": {"ready": is_ready},
                    "targetRef": {"kind": "Pod", "name": f"{service}-pod-{index}"},
                }
                for index, is_ready in enumerate(ready)
            ],
            "ports": [{"name": "http1", "port": 8080, "protocol": "TCP"}],
        }

    def put(
        self,
        name: str,
        *,
        url: str | None,
        namespace: str = "default",
        ready: bool = True,
        message: str = "",
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """Create or replace an InferenceService with the status KServe would write."""
        status: dict[str, Any] = {"conditions": [_ready(ready, message)]}
        if url is not None:
            status["address"] = {"url": url}
        self.api.objects[ISVC, namespace, name] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": LABEL if labels is None else labels,
                "annotations": annotations or {},
            },
            "spec": {"predictor": {"model": {"modelFormat": {"name": "diffusers"}}}},
            "status": status,
        }

    def set_ready(self, name: str, ready: bool, message: str = "", namespace: str = "default"):
        obj = self.api.objects[ISVC, namespace, name]
        status = {**obj.raw["status"], "conditions": [_ready(ready, message)]}
        obj.patch({"status": status})

    def delete(self, name: str, namespace: str = "default") -> None:
        self.api.objects[ISVC, namespace, name].delete()


def discovery_env(cluster: FakeCluster, tmp_path: Path) -> dict[str, str]:
    """An MCP server process's environment for discovery through a standard kubeconfig that
    points at the fake API server (with a bearer token the fake sees), and no static runtime."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
                "users": [{"name": "reader", "user": {"token": "reader-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "reader"}}],
                "current-context": "fake",
            }
        )
    )
    return {
        "DISCOVERY_ENABLED": "true",
        "DISCOVERY_INTERVAL_SECONDS": "0.3",
        "KUBECONFIG": str(kubeconfig),
        # Not in a pod: the kubeconfig, not the in-cluster config, is used.
        "KUBERNETES_SERVICE_HOST": "",
        "DIFFUSERS_RUNTIME_URL": "",
        "DIFFUSERS_RUNTIMES": "",
    }


def _forbidden(group: str, plural: str, namespace: str | None) -> kmock.KubernetesError:
    """The API server's refusal of a list, in its own words."""
    return kmock.KubernetesError(
        status=403,
        reason="Forbidden",
        message=f'{plural}.{group} is forbidden: User "system:serviceaccount:mcp-server-dev:'
        f'mcp-server" cannot list resource "{plural}" in API group "{group}" in the '
        f'namespace "{namespace}"',
    )


def _ready(ready: bool, message: str) -> dict[str, str]:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    if message:
        condition |= {"reason": "PredictorNotReady", "message": message}
    return condition


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[FakeCluster]:
    """The fake API server, running in the test's event loop: tests must await, not block,
    while something talks to it. `stop_serving()` makes it unreachable."""
    async with kmock.KubernetesEmulator() as api, contextlib.AsyncExitStack() as serving:
        fake = FakeCluster(api, serving)
        api["list", ISVC] << fake._list
        api["list", ENDPOINT_SLICES] << fake._list_slices
        server = await serving.enter_async_context(kmock.Server(api))
        fake.url = str(server.url).rstrip("/")
        yield fake
