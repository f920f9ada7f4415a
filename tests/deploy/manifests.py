"""Rendering the kustomize trees with the real kubectl, and reading the rendered objects."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "kustomize"
# The dev tools come with the venv that runs the tests (`make test` installs them).
BIN = Path(sys.executable).parent

# Each MCP overlay and the runtime overlay whose Service its DIFFUSERS_RUNTIME_URL names.
MCP_ENVS = {"dev": "tiny-sd", "staging": "tiny-sd", "production": "redhat-dog"}
RUNTIMES = ("tiny-sd", "redhat-dog")


def tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{path} is missing: `make install` puts it there (the dev extra)"
    return str(path)


def mcp_dir(env: str) -> Path:
    return KUSTOMIZE / "overlays" / env


def runtime_dir(model: str) -> Path:
    return KUSTOMIZE / "runtime" / "overlays" / model


@functools.cache
def render_text(path: Path) -> str:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return result.stdout


def render(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(render_text(path)) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config(docs: list[dict]) -> dict[str, str]:
    """The MCP server's environment from its generated ConfigMap."""
    (configmap,) = [
        d for d in find(docs, "ConfigMap") if d["metadata"]["name"].startswith("mcp-server-config")
    ]
    return configmap["data"]


def env_vars(container: dict) -> dict[str, dict]:
    return {var["name"]: var for var in container.get("env", [])}


def runtime_container(docs: list[dict]) -> dict:
    """The predictor container as KServe builds it: the ServingRuntime's container with the
    InferenceService's model fields (env, resources, image...) merged over it."""
    (runtime,) = one(docs, "ServingRuntime")["spec"]["containers"]
    model = one(docs, "InferenceService")["spec"]["predictor"]["model"]
    merged = {**runtime}
    for key in ("image", "resources", "args", "ports"):
        if key in model:
            merged[key] = model[key]
    merged["env"] = list({**env_vars(runtime), **env_vars(model)}.values())
    return merged


def matches(selector: dict, labels: dict) -> bool:
    """matchLabels / matchExpressions (In, NotIn, Exists, DoesNotExist) against labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True
