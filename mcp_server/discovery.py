"""Model discovery: the KServe InferenceServices that carry DISCOVERY_LABEL_SELECTOR, in
DISCOVERY_NAMESPACES, read through the Kubernetes API with this server's own ServiceAccount.

Each InferenceService becomes a model named after it, served at the internal URL KServe
publishes in its status, usable while its Ready condition is True. The model id on that
runtime (the `{name}` in /v1/models/{name}) is `model` unless the annotation
`diffusers-mcp.io/model-id` says otherwise.

Why a periodic list and not a watch: a namespace holds a handful of InferenceServices, so a
list every DISCOVERY_INTERVAL_SECONDS (5) costs the API server next to nothing, while each
list is a complete, self-healing snapshot (no missed events, no expired resourceVersions to
recover from) and doubles as a check that the API server is still reachable: a watch can sit
silently on a dead connection, a failed list marks the models stale at once. A new
InferenceService is therefore usable, and a deleted or failing one reported, within one
interval.

Replicas: the same list pass reads the EndpointSlices of each predictor Service
(`<isvc>-predictor` in RawDeployment) and counts its ready pods, so that admission grows and
shrinks with the replicas KServe's autoscaler runs. Slices that cannot be read leave the count
unknown (admission then assumes one replica) and say why in the namespace's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from mcp_server.settings import RuntimeTarget, Settings

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
SLICES_RESOURCE = "endpointslices.discovery.k8s.io"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MODEL_ID_ANNOTATION = "diffusers-mcp.io/model-id"
# A model whose InferenceService disappeared stays listed as unavailable this long, so that
# clients still using its name learn why it is gone rather than "unknown model".
DELETED_MEMORY_SECONDS = 3600
# A list of a few objects answers in milliseconds; these bounds keep a hung API server from
# delaying the stale mark by more than a few seconds.
CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10


class DiscoveryConfigError(Exception):
    """No usable Kubernetes API configuration; the message says what was tried."""


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class Origin(BaseModel):
    """Where a model comes from: static configuration, or an InferenceService (with whether
    the list it comes from is stale)."""

    source: Literal["static", "discovery"] = "static"
    inference_service: str | None = None
    stale: bool | None = None
    stale_since: str | None = None
    discovery_error: str | None = None


@dataclass(frozen=True)
class DiscoveredModel:
    """One InferenceService as this server sees it."""

    name: str
    namespace: str
    url: str | None
    model_id: str
    ready: bool
    # Why it is not usable (the Ready condition's message, a missing URL, its deletion).
    message: str = ""
    deleted_at: float | None = None
    # Ready pods behind its predictor Service; None when unknown.
    replicas: int | None = None

    @property
    def available(self) -> bool:
        return self.ready and self.url is not None and self.deleted_at is None

    @property
    def reference(self) -> str:
        return f"InferenceService {self.namespace}/{self.name}"

    def target(self) -> RuntimeTarget:
        assert self.url is not None, "only available models have a target"
        return RuntimeTarget(name=self.name, url=self.url, model_id=self.model_id)


def _condition_message(conditions: list[dict[str, Any]]) -> tuple[bool, str]:
    """(ready, why not) from KServe's conditions. When Ready carries no message, the first
    failing condition that has one (PredictorReady, IngressReady...) usually explains it."""
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        return False, (
            "KServe has not reported a Ready condition yet (the InferenceService is new, or "
            "the KServe controller is not running)"
        )
    if ready.get("status") == "True":
        return True, ""
    message = ready.get("message") or ready.get("reason")
    if not message:
        failing = [c for c in conditions if c.get("status") != "True" and c.get("message")]
        message = f"{failing[0]['type']}: {failing[0]['message']}" if failing else ""
    return False, f"not Ready ({message or 'Ready is ' + str(ready.get('status'))})"


def parse_inference_service(obj: dict[str, Any]) -> DiscoveredModel:
    """An InferenceService object from the API -> the model it offers."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    name, namespace = metadata.get("name", ""), metadata.get("namespace", "")
    model_id = (metadata.get("annotations") or {}).get(MODEL_ID_ANNOTATION) or "model"
    # The cluster-internal address; the predictor's own is the fallback for KServe versions
    # or modes that fill only the component status.
    url = (status.get("address") or {}).get("url") or (
        ((status.get("components") or {}).get("predictor") or {}).get("address") or {}
    ).get("url")
    ready, message = _condition_message(status.get("conditions") or [])
    if url is not None:
        url = url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            ready, message = False, f"its status address {url!r} is not an http(s) URL"
    elif ready:
        ready, message = False, "Ready, but KServe published no address URL in its status"
    return DiscoveredModel(name, namespace, url, model_id, ready, message)


@dataclass
class NamespaceState:
    """What the last lists of one namespace gave."""

    models: dict[str, DiscoveredModel] = field(default_factory=dict)
    synced_at: float | None = None
    error: str | None = None
    failing_since: float | None = None
    # Why the replicas of this namespace's models are unknown.
    replicas_error: str | None = None

    def describe(self) -> dict[str, Any]:
        stale = self.error is not None and self.synced_at is not None
        return {
            "synced_at": _iso(self.synced_at),
            "stale": stale,
            "stale_since": _iso(self.failing_since) if stale else None,
            "error": self.error,
            "replicas_error": self.replicas_error,
        }


def ready_replicas(slices: list[dict[str, Any]]) -> dict[str, int]:
    """Ready pods per Service from its EndpointSlices. A pod appears once per address family
    (dual-stack clusters give each Service two slices), so pods are counted by name. A
    terminating pod is not ready: a replica being scaled down stops counting at once."""
    pods: dict[str, set[str]] = {}
    for item in slices:
        service = ((item.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not service:
            continue
        ready = pods.setdefault(service, set())
        for endpoint in item.get("endpoints") or []:
            # The API says an unset `ready` means ready.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            target = (endpoint.get("targetRef") or {}).get("name")
            ready.add(target or ",".join(endpoint.get("addresses") or []))
    return {service: len(ready) for service, ready in pods.items()}


def _api_message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message") or "").strip()
    except (TypeError, ValueError, AttributeError):
        return str(body or "").strip()[:300]


class Discovery:
    """Lists the labelled InferenceServices every interval and remembers what it saw.

    Static configuration wins a name clash, so that an InferenceService created by someone
    else cannot take over a name the operator pinned. An InferenceService with a static
    model's name, URL and model id is that same runtime: not a clash, nothing to report.
    """

    def __init__(self, settings: Settings) -> None:
        self.namespaces = settings.discovery_namespaces
        self.selector = settings.discovery_label_selector
        self.interval = settings.discovery_interval_seconds
        self.api_url = settings.kubernetes_api_url
        self.static = {t.name: (t.url, t.model_id) for t in settings.runtimes}
        self.states = {namespace: NamespaceState() for namespace in self.namespaces}
        self.deleted: dict[tuple[str, str], DiscoveredModel] = {}
        # Bumped on every change, so the image service rebuilds its clients only then.
        self.generation = 0
        self.shadowed: list[str] = []
        self._models: dict[str, DiscoveredModel] = {}
        self._api: Any = None
        self._where = ""
        self._task: asyncio.Task[None] | None = None

    def connect(self) -> None:
        """Build the API client: KUBERNETES_API_URL, else in-cluster, else KUBECONFIG."""
        # Imported here: only a server with discovery on needs the Kubernetes client.
        from kubernetes import client, config

        if self.api_url:
            configuration = client.Configuration(host=self.api_url)
            self._where = self.api_url
        else:
            configuration = client.Configuration()
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    config.load_incluster_config(client_configuration=configuration)
                    self._where = "the in-cluster API server (ServiceAccount token)"
                else:
                    # Read KUBECONFIG now: the library reads it once, at its import.
                    config.load_kube_config(
                        config_file=os.environ.get("KUBECONFIG"),
                        client_configuration=configuration,
                    )
                    self._where = f"{configuration.host} (from KUBECONFIG)"
            except config.ConfigException as exc:
                raise DiscoveryConfigError(
                    f"DISCOVERY_ENABLED=true but there is no Kubernetes API to ask: {exc}. "
                    "In a pod, mount the ServiceAccount token (automountServiceAccountToken: "
                    "true); elsewhere set KUBECONFIG or KUBERNETES_API_URL (e.g. the URL of "
                    "`kubectl proxy`), or set DISCOVERY_ENABLED=false."
                ) from None
        # One attempt per list: the next interval is the retry, and urllib3's own retries
        # would only delay the stale mark.
        configuration.retries = False
        self._api = client.CustomObjectsApi(client.ApiClient(configuration))

    def _list(self, namespace: str) -> list[dict[str, Any]]:
        answer = self._api.list_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            label_selector=self.selector,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        )
        return list(answer.get("items") or [])

    def _list_slices(self, namespace: str) -> list[dict[str, Any]]:
        answer = self._api.list_namespaced_custom_object(
            *SLICES[:2],
            namespace,
            SLICES[2],
            label_selector=SERVICE_NAME_LABEL,
            _request_timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
        )
        return list(answer.get("items") or [])

    async def _with_replicas(
        self, namespace: str, models: dict[str, DiscoveredModel]
    ) -> dict[str, DiscoveredModel]:
        """MODELS with their ready replicas; unchanged (replicas unknown) when the slices
        cannot be read, which the namespace's status then explains."""
        state = self.states[namespace]
        try:
            counts = ready_replicas(await asyncio.to_thread(self._list_slices, namespace))
        except Exception as exc:
            error = self._explain(exc, namespace, SLICES_RESOURCE)
            if state.replicas_error is None:
                log.warning("discovery: %s; counting one replica per model", error)
            state.replicas_error = error
            return models
        state.replicas_error = None
        return {
            name: replace(model, replicas=counts.get(f"{name}-predictor"))
            for name, model in models.items()
        }

    def _explain(self, exc: Exception, namespace: str, resource: str = RESOURCE) -> str:
        from kubernetes.client.exceptions import ApiException

        verb = f"list {resource} in namespace {namespace}"
        if isinstance(exc, ApiException):
            detail = _api_message(exc.body)
            detail = f": {detail}" if detail else ""
            if exc.status == 403:
                return (
                    f"forbidden (HTTP 403): this server's ServiceAccount may not {verb}{detail}. "
                    f"Grant list on {resource} in namespace {namespace} (the "
                    "Role and RoleBinding diffusers-mcp-discovery in kustomize/runtime/base), "
                    "or remove the namespace from DISCOVERY_NAMESPACES."
                )
            if exc.status == 401:
                return (
                    f"unauthorized (HTTP 401) to {verb}{detail}: the API server rejected the "
                    "credentials; check the ServiceAccount token is mounted "
                    "(automountServiceAccountToken: true) or the KUBECONFIG user."
                )
            if exc.status == 404:
                return (
                    f"not found (HTTP 404) to {verb}{detail}: the API server does not serve "
                    f"{resource}; is KServe installed in this cluster?"
                )
            return f"the API server answered HTTP {exc.status} to {verb}{detail}"
        return (
            f"cannot reach the Kubernetes API at {self._where} to {verb}: "
            f"{type(exc).__name__}: {exc}. Check that a NetworkPolicy allows egress to the "
            "API server (TCP 6443, or 443) and that the API address is right."
        )

    async def sync(self) -> None:
        """List every namespace once; keep the last good list of a namespace that fails."""
        now = time.time()
        changed = False
        for namespace in self.namespaces:
            state = self.states[namespace]
            try:
                items = await asyncio.to_thread(self._list, namespace)
            except Exception as exc:
                error = self._explain(exc, namespace)
                if state.error is None:
                    state.failing_since = now
                    kept = f"; keeping the {len(state.models)} model(s) listed before"
                    log.warning("discovery: %s%s", error, kept if state.synced_at else "")
                state.error = error
                continue
            if state.error is not None:
                log.info("discovery: %s is readable again", namespace)
            models = {m.name: m for m in map(parse_inference_service, items) if m.name}
            models = await self._with_replicas(namespace, models)
            changed |= models != state.models
            for name in state.models.keys() - models.keys():
                gone = state.models[name]
                log.info("discovery: %s is gone", gone.reference)
                self.deleted[(namespace, name)] = DiscoveredModel(
                    gone.name,
                    namespace,
                    gone.url,
                    gone.model_id,
                    ready=False,
                    message=(
                        f"the {gone.reference} was deleted or lost the label {self.selector} "
                        f"(noticed at {_iso(now)})"
                    ),
                    deleted_at=now,
                )
            for name, model in models.items():
                self.deleted.pop((namespace, name), None)
                if state.models.get(name) != model:
                    log.info(
                        "discovery: %s at %s, %s, %s ready replica(s)",
                        model.reference,
                        model.url,
                        "available" if model.available else f"unavailable: {model.message}",
                        "unknown" if model.replicas is None else model.replicas,
                    )
            state.models, state.synced_at = models, now
            state.error = state.failing_since = None
        self.deleted = {
            key: model
            for key, model in self.deleted.items()
            if now - (model.deleted_at or now) < DELETED_MEMORY_SECONDS
        }
        self._merge(changed)

    def _merge(self, changed: bool) -> None:
        """One model per name: static names first, then namespaces in the configured order."""
        merged: dict[str, DiscoveredModel] = {}
        shadowed = []
        candidates = [m for ns in self.namespaces for m in self.states[ns].models.values()]
        for model in [*candidates, *self.deleted.values()]:
            if model.name in self.static:
                if model.deleted_at is None and self.static[model.name] != (
                    model.url,
                    model.model_id,
                ):
                    shadowed.append(
                        f"{model.reference}: the static configuration already has a model "
                        f"{model.name!r} and wins"
                    )
            elif model.name in merged:
                if model.deleted_at is None:
                    shadowed.append(
                        f"{model.reference}: {merged[model.name].reference} has the same name "
                        "and comes first in DISCOVERY_NAMESPACES"
                    )
            else:
                merged[model.name] = model
        # CHANGED covers the replicas of an InferenceService that a static model serves too.
        if changed or merged != self._models or shadowed != self.shadowed:
            for line in set(shadowed) - set(self.shadowed):
                log.warning("discovery: ignoring %s", line)
            self._models, self.shadowed = merged, shadowed
            self.generation += 1

    @property
    def models(self) -> list[DiscoveredModel]:
        return list(self._models.values())

    def replicas_of(self, name: str, url: str) -> int | None:
        """The ready replicas of the InferenceService NAME at URL, also when a static model
        with that name and URL is what serves it."""
        for namespace in self.namespaces:
            model = self.states[namespace].models.get(name)
            if model is not None and model.url == url:
                return model.replicas
        return None

    def origin(self, model: DiscoveredModel) -> Origin:
        """The discovery part of a model's entry in list_models."""
        state = self.states[model.namespace].describe()
        return Origin(
            source="discovery",
            inference_service=f"{model.namespace}/{model.name}",
            stale=state["stale"],
            stale_since=state["stale_since"],
            discovery_error=state["error"],
        )

    def status(self) -> dict[str, Any]:
        """For list_models, the status resource and /ready."""
        return {
            "label_selector": self.selector,
            "interval_seconds": self.interval,
            "api": self._where,
            "namespaces": {ns: state.describe() for ns, state in self.states.items()},
            "stale": any(s.error is not None and s.synced_at for s in self.states.values()),
            "ignored": self.shadowed,
        }

    async def start(self) -> None:
        """Connect, list once (so the first request already sees the models), then follow."""
        self.connect()
        await self.sync()
        self._task = asyncio.create_task(self._follow(), name="model-discovery")

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sync()
            except Exception:
                # A bug here must not end discovery for the life of the process.
                log.exception("discovery: unexpected error; retrying next interval")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
