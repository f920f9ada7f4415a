"""The models this server serves: the static runtimes, then what discovery found.

Static models are fixed at start. Discovered ones follow discovery (which already applies the
rule that a static name wins a clash): a client per available model, reused while its URL
and model id stay the same; the unavailable ones are kept to say why. Each model's admission
(limiter) and retries (client) follow the ready replicas discovery counts behind it, also for
a static model whose InferenceService discovery sees; one replica when nothing counts them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import BaseModel

from mcp_server import metrics
from mcp_server.discovery import DiscoveredModel, Discovery, Origin
from mcp_server.errors import ModelUnavailableError, RuntimeCallError, UnknownModelError
from mcp_server.limiter import ClientLimits, Limiter
from mcp_server.runtime_client import RuntimeClient
from mcp_server.settings import RuntimeTarget, Settings


# One entry of list_models, GET /v1/models and diffusers://models (no docstring: it would be
# published in list_models' output schema).
class ModelInfo(Origin):
    name: str
    default: bool
    ready: bool
    runtime_url: str | None
    runtime_model_id: str
    capabilities: dict[str, Any] | None = None
    error: str | None = None


class RuntimeState(BaseModel):
    """One runtime in diffusers://status and /health?details=true."""

    model: str
    ready: bool
    error: str | None = None
    waiting: int = 0
    running: int = 0
    # Ready runtime replicas admission counts with (one when unknown), and the slots they give.
    replicas: int = 1
    slots: int = 0


class ModelRegistry:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, discovery: Discovery | None = None
    ) -> None:
        self._settings = settings
        self._http = http
        self.discovery = discovery
        diagnostics = ""
        if settings.diffusers_runtime_service:
            namespace = settings.diffusers_runtime_namespace or "(this namespace)"
            diagnostics = (
                f"the Service {settings.diffusers_runtime_service!r} in namespace {namespace}"
            )
        self._static = {t.name: self._client(t, diagnostics) for t in settings.runtimes}
        # Usable models by name, static first; rebuilt when discovery changes.
        self._clients = dict(self._static)
        # Discovered models by name, available or not.
        self._discovered: dict[str, DiscoveredModel] = {}
        self._limiters: dict[str, Limiter] = {}
        self.clients_limit = ClientLimits(settings.max_concurrent_per_client)
        self._seen_generation = -1

    def _client(self, target: RuntimeTarget, diagnostics: str) -> RuntimeClient:
        return RuntimeClient(
            target,
            self._http,
            connect_timeout=self._settings.runtime_connect_timeout_seconds,
            generation_timeout=self._settings.generation_timeout_seconds,
            diagnostics=diagnostics,
        )

    def _refresh(self) -> None:
        if self.discovery is None or self.discovery.generation == self._seen_generation:
            return
        self._seen_generation = self.discovery.generation
        self._discovered = {m.name: m for m in self.discovery.models}
        clients = dict(self._static)
        for name, model in self._discovered.items():
            if not model.available:
                continue
            client = self._clients.get(name)
            target = model.target()
            if client is None or client.target != target:
                client = self._client(target, f"the {model.reference}")
            clients[name] = client
        self._clients = clients
        for name, client in clients.items():
            client.replicas = self._replicas(name, client)
            self.limiter(name).resize(client.replicas)
            metrics.RUNTIME_REPLICAS.labels(name).set(client.replicas)

    def _replicas(self, name: str, client: RuntimeClient) -> int:
        assert self.discovery is not None
        found = self.discovery.replicas_of(name, client.url)
        return 1 if found is None else max(1, found)

    @property
    def default_model(self) -> str | None:
        """The first static runtime; else DEFAULT_MODEL_NAME or the first available
        discovered model (by name); None while discovery has found nothing usable."""
        if self._static:
            return next(iter(self._static))
        self._refresh()
        preferred = self._settings.default_model_name
        if preferred in self._discovered:
            return preferred
        available = sorted(n for n, m in self._discovered.items() if m.available)
        return available[0] if available else None

    def names(self) -> list[str]:
        """The models a request can name now."""
        self._refresh()
        return list(self._clients)

    def client(self, model: str | None) -> RuntimeClient:
        """The runtime serving MODEL (the default when None), or why there is none."""
        self._refresh()
        name = model or self.default_model
        if name is None:
            raise ModelUnavailableError(
                "No model is available yet: no runtime is configured and discovery has found "
                f"no Ready InferenceService labelled {self._settings.discovery_label_selector} "
                "(see list_models for what it found and why each is unavailable)."
            )
        if name in self._clients:
            return self._clients[name]
        if name in self._discovered:
            found = self._discovered[name]
            raise ModelUnavailableError(
                f"Model {name!r} is unavailable: {found.message} ({found.reference}). "
                "Check it with `oc describe inferenceservice`, or pick another model from "
                "list_models.",
                param="model",
            )
        raise UnknownModelError(name, list(self._clients))

    def limiter(self, name: str) -> Limiter:
        self._refresh()
        if name not in self._limiters:
            settings = self._settings
            limiter = Limiter(
                name, settings.max_concurrent_per_runtime, settings.max_queue_per_runtime
            )
            client = self._clients.get(name)
            limiter.resize(client.replicas if client is not None else 1)
            self._limiters[name] = limiter
        return self._limiters[name]

    def _origin(self, name: str) -> Origin:
        model = self._discovered.get(name)
        if self.discovery is None or model is None:
            return Origin()
        return self.discovery.origin(model)

    def _unavailable(self) -> list[DiscoveredModel]:
        return [m for n, m in self._discovered.items() if n not in self._clients]

    async def models(self) -> list[ModelInfo]:
        """Every model with its readiness and limits, checked concurrently; discovered models
        that are not usable are listed too, with the reason."""
        self._refresh()
        default = self.default_model

        async def describe(name: str, client: RuntimeClient) -> ModelInfo:
            info = ModelInfo(
                **self._origin(name).model_dump(),
                name=name,
                default=name == default,
                ready=False,
                runtime_url=client.url,
                runtime_model_id=client.target.model_id,
            )
            try:
                info.ready = await client.ready()
                info.capabilities = await client.capabilities()
            except RuntimeCallError as exc:
                info.error = str(exc)
            return info

        entries = await asyncio.gather(*(describe(n, c) for n, c in self._clients.items()))
        return [
            *entries,
            *(
                ModelInfo(
                    **self._origin(m.name).model_dump(),
                    name=m.name,
                    default=False,
                    ready=False,
                    runtime_url=m.url,
                    runtime_model_id=m.model_id,
                    error=f"unavailable: {m.message}",
                )
                for m in self._unavailable()
            ),
        ]

    async def states(self) -> tuple[bool, list[RuntimeState]]:
        """Each runtime's readiness, and whether the models are: every static runtime and at
        least one model ready, so one failing discovered InferenceService does not count
        against the others."""
        self._refresh()

        async def check(name: str, client: RuntimeClient) -> RuntimeState:
            limiter = self.limiter(name)
            state = RuntimeState(
                model=name,
                ready=False,
                waiting=limiter.waiting,
                running=limiter.running,
                replicas=limiter.replicas,
                slots=limiter.capacity,
            )
            try:
                state.ready = await client.ready()
            except RuntimeCallError as exc:
                state.error = str(exc)
            return state

        states = list(await asyncio.gather(*(check(n, c) for n, c in self._clients.items())))
        states += [
            RuntimeState(model=m.name, ready=False, error=f"unavailable: {m.message}")
            for m in self._unavailable()
        ]
        static_ready = all(s.ready for s in states if s.model in self._static)
        return static_ready and any(s.ready for s in states), states

    def discovery_status(self) -> dict[str, Any] | None:
        """What discovery last saw (namespaces, staleness, errors); None when it is off."""
        return None if self.discovery is None else self.discovery.status()
