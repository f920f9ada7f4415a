"""Rendering the kustomize trees with the real kubectl, and reading the rendered objects."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE = REPO / "kustomize"
# The dev tools come with the venv that runs the tests (`make test` installs them).
BIN = Path(sys.executable).parent

# Each MCP overlay and the runtime overlay whose Service its DIFFUSERS_RUNTIME_URL names.
MCP_ENVS = {"dev": "tiny-sd", "staging": "tiny-sd", "production": "redhat-dog"}
# tiny-sd-embedded: the same InferenceService serving the model the runtime image carries.
RUNTIMES = ("tiny-sd", "tiny-sd-embedded", "redhat-dog")
# Where each runtime overlay puts its objects: production's runtime has a namespace of its own.
RUNTIME_NAMESPACES = {
    "tiny-sd": "default",
    "tiny-sd-embedded": "default",
    "redhat-dog": "diffusers-production",
}


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


def predictor_labels(model: str) -> dict[str, str]:
    """The predictor pod's labels as KServe sets them: the InferenceService's predictor.labels
    and its own name."""
    isvc = one(render(runtime_dir(model)), "InferenceService")
    return isvc["spec"]["predictor"]["labels"] | {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]
    }


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


# Labels the API server (kubernetes.io/metadata.name) and OpenShift (the router's policy
# group) put on namespaces.
ROUTER_NS_LABELS = {"policy-group.network.openshift.io/ingress": ""}


def stand_in_pod(ref: str, labels: dict) -> dict:
    """A pod for what the manifests do not create (a predictor, the router, DNS...)."""
    namespace, name = ref.split("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "stand-in"}]},
    }


def namespace(name: str) -> dict:
    labels = {"kubernetes.io/metadata.name": name}
    if name == "openshift-ingress":
        labels |= ROUTER_NS_LABELS
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def nca_connections(
    rendered: str, pods: list[dict], namespaces: set[str]
) -> list[tuple[str, str, str]]:
    """(source, destination, allowed) for each connection network-config-analyzer finds
    between the RENDERED manifests and the stand-in PODS, in NAMESPACES (plus the pods')."""
    names = namespaces | {pod["metadata"]["namespace"] for pod in pods}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "rendered.yaml").write_text(rendered)
        for file, items in (
            ("pods.yaml", pods),
            ("namespaces.yaml", [namespace(n) for n in sorted(names)]),
        ):
            (folder / file).write_text(
                yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
            )
        result = subprocess.run(
            [
                tool("nca"),
                "--connectivity", str(folder / "rendered.yaml"),
                "--pod_list", str(folder / "rendered.yaml"),
                "--pod_list", str(folder / "pods.yaml"),
                "--ns_list", str(folder / "namespaces.yaml"),
                "--output_format", "txt_no_fw_rules",
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    found = [
        match.groups()
        for line in result.stdout.splitlines()
        if (match := re.match(r"^(\S+) => (\S+) : (.+)$", line))
    ]
    assert found, f"nca printed no connections:\n{result.stdout}"
    return found
