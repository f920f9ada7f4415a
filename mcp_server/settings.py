"""Every setting of the MCP server, read from the environment once and validated at start."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL; expected e.g. http://tiny-sd-predictor:8080")
    return value.rstrip("/")


class RuntimeTarget(BaseModel):
    """One diffusers runtime: the public model name clients ask for, where it is, its model id."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:-]+$")
    url: str
    model_id: str = Field(default="model", min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)


def _split_list(value: str | list[str]) -> list[str]:
    if isinstance(value, list):
        return value
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    # An empty variable means unset: ConfigMaps often carry keys with empty values.
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", env_ignore_empty=True)

    diffusers_runtime_url: str = "http://127.0.0.1:8080"
    diffusers_model_id: str = Field(default="model", min_length=1)
    # The name clients pass as `model`; defaults to DIFFUSERS_MODEL_ID so a single runtime
    # needs no extra configuration.
    default_model_name: str | None = None
    diffusers_runtimes: list[RuntimeTarget] | None = None
    diffusers_runtime_service: str | None = None
    diffusers_runtime_namespace: str | None = None

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = None

    generation_timeout_seconds: float = Field(default=300, gt=0)
    runtime_connect_timeout_seconds: float = Field(default=5, gt=0)
    # Per runtime replica (discovery counts the ready ones): as many as the runtime batches by
    # default (MAX_BATCH_SIZE=4), so each replica can fill a batch; the runtime queues the rest.
    max_concurrent_per_runtime: int = Field(default=4, ge=1)
    max_queue_per_runtime: int = Field(default=16, ge=0)
    # Generations one client (its address as the router saw it) may have running or waiting
    # on this server; 0 turns the cap off.
    max_concurrent_per_client: int = Field(default=8, ge=0)

    mcp_auth_token: str | None = None
    allowed_hosts: Annotated[list[str], NoDecode] = []
    allowed_origins: Annotated[list[str], NoDecode] = []

    image_store: Literal["local", "s3"] = "local"
    image_store_dir: str = "/tmp/diffusers-mcp-images"
    image_ttl_seconds: int = Field(default=3600, gt=0)
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = "diffusers-mcp/"
    inline_image_max_bytes: int = Field(default=512 * 1024, ge=0)

    # A job whose worker has not written a heartbeat for this long is reported failed.
    job_stale_seconds: float = Field(default=30, gt=0)
    # Partial images a job asks the runtime for, so that get_generation's include_preview can
    # show the picture forming; each costs one VAE decode on the runtime. 0: none.
    job_partial_images: int = Field(default=2, ge=0, le=3)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Text for a terminal; the container image sets json, what log collectors expect.
    log_format: Literal["text", "json"] = "text"
    wait_timeout_seconds: float = Field(default=300, gt=0)

    # Model discovery (mcp_server/discovery.py): KServe InferenceServices carrying the label.
    discovery_enabled: bool = False
    discovery_namespaces: Annotated[list[str], NoDecode] = ["default"]
    discovery_label_selector: str = Field(default="diffusers-mcp.io/expose=true", min_length=1)
    discovery_interval_seconds: float = Field(default=5, gt=0)
    # The API server for discovery; unset: in-cluster config in a pod, else KUBECONFIG.
    kubernetes_api_url: str | None = None

    @field_validator("allowed_hosts", "allowed_origins", "discovery_namespaces", mode="before")
    @classmethod
    def _comma_list(cls, value: str | list[str]) -> list[str]:
        return _split_list(value)

    @field_validator("discovery_namespaces")
    @classmethod
    def _namespaces(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one namespace, e.g. default")
        bad = [name for name in value if not NAMESPACE.match(name)]
        if bad:
            raise ValueError(f"not Kubernetes namespace names: {bad}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper() if isinstance(value, str) else value

    @field_validator("diffusers_runtime_url", "public_url", "s3_endpoint_url", "kubernetes_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.image_store == "s3" and not self.s3_bucket:
            raise ValueError("IMAGE_STORE=s3 needs S3_BUCKET (the bucket name)")
        if self.diffusers_runtimes is not None:
            if not self.diffusers_runtimes:
                raise ValueError("DIFFUSERS_RUNTIMES is an empty list; give at least one runtime")
            names = [r.name for r in self.diffusers_runtimes]
            if len(set(names)) != len(names):
                raise ValueError(f"DIFFUSERS_RUNTIMES has duplicate names: {names}")
        return self

    @property
    def runtimes(self) -> list[RuntimeTarget]:
        """The configured runtimes, the first one being the default model. With discovery on,
        the local default URL is not added unless DIFFUSERS_RUNTIME_URL is set explicitly."""
        static = {"diffusers_runtimes", "diffusers_runtime_url"} & self.model_fields_set
        if self.discovery_enabled and not static:
            return []
        if self.diffusers_runtimes:
            return list(self.diffusers_runtimes)
        return [
            RuntimeTarget(
                name=self.default_model_name or self.diffusers_model_id,
                url=self.diffusers_runtime_url,
                model_id=self.diffusers_model_id,
            )
        ]

    @property
    def mcp_allowed_hosts(self) -> list[str]:
        """Loopback, ALLOWED_HOSTS and PUBLIC_URL's host: clients reach us under that name."""
        public = []
        if self.public_url:
            parts = urlsplit(self.public_url)
            public = [parts.netloc, f"{parts.hostname}:*"]
        return [*LOOPBACK_HOSTS, *public, *self.allowed_hosts]

    @property
    def mcp_allowed_origins(self) -> list[str]:
        public = []
        if self.public_url:
            parts = urlsplit(self.public_url)
            public = [f"{parts.scheme}://{parts.netloc}"]
        return [*LOOPBACK_ORIGINS, *public, *self.allowed_origins]


class SettingsError(Exception):
    """A bad environment value; the message names each variable and what is wrong."""


def _describe(error: ErrorDetails) -> str:
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    variable = loc[0].upper()
    detail = f" (entry {'.'.join(loc[1:])})" if len(loc) > 1 else ""
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f"; got {value!r}"
    return f"{variable}{detail}: {message}{shown}"


def load_settings() -> Settings:
    """Read the environment; raise SettingsError naming every bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    except (ValueError, json.JSONDecodeError) as exc:
        # pydantic-settings fails before validation when a JSON variable is not JSON.
        raise SettingsError(
            f"invalid configuration: {exc}. DIFFUSERS_RUNTIMES must be a JSON list such as "
            '[{"name": "tiny-sd", "url": "http://tiny-sd-predictor:8080", "model_id": "model"}]'
        ) from None


def load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"mcp_server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
