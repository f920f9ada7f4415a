"""Every kustomize tree renders with the real kubectl, and every object passes its schema:
core kinds with kubernetes-validate --strict, KServe kinds with kserve's typed models,
Routes with the OpenShift Route schema."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.manifests import (
    KUSTOMIZE,
    MCP_ENVS,
    RUNTIME_NAMESPACES,
    RUNTIMES,
    find,
    mcp_dir,
    one,
    render,
    runtime_dir,
    tool,
)
from tests.deploy.typed_models import problems

KUBERNETES_VERSION = "1.37.0"
CUSTOM_KINDS = {
    "Route",
    "InferenceService",
    "ServingRuntime",
    "PodMonitor",
    "TriggerAuthentication",
}
ALL_TREES = [
    KUSTOMIZE / "base",
    KUSTOMIZE / "runtime" / "base",
    *(mcp_dir(env) for env in MCP_ENVS),
    *(runtime_dir(model) for model in RUNTIMES),
]
ROUTE_SCHEMA = yaml.safe_load(
    (Path(__file__).parent / "schemas" / "route.openshift.io_v1_route.yaml").read_text()
)


@pytest.mark.parametrize("tree", ALL_TREES, ids=lambda p: str(p.relative_to(KUSTOMIZE)))
def test_tree_renders(tree):
    assert render(tree)


def test_mcp_overlay_objects(env, mcp_docs):
    kinds = sorted(d["kind"] for d in mcp_docs)
    expected = [
        "ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "NetworkPolicy",
        "NetworkPolicy", "Route", "Service", "ServiceAccount",
    ]  # fmt: skip
    if env == "production":
        expected += ["HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget"]
    assert kinds == sorted(expected)
    namespaced = [d for d in mcp_docs if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {f"mcp-server-{env}"}
    assert one(mcp_docs, "Namespace")["metadata"]["name"] == f"mcp-server-{env}"


def test_runtime_overlay_objects(model_docs):
    kinds = sorted(d["kind"] for d in model_docs)
    # The production model also gets its egress policy (tests/reliability checks it with nca).
    # It also autoscales: the metric pipeline's objects (tests/deploy/test_autoscaling.py).
    (isvc,) = [d["metadata"]["name"] for d in model_docs if d["kind"] == "InferenceService"]
    expected = ["InferenceService", "NetworkPolicy", "Role", "RoleBinding", "ServingRuntime"]
    # One ingress policy per environment that uses the model (tests/deploy/test_network.py).
    expected += ["NetworkPolicy"] * (1 if isvc == "redhat-dog" else 2)
    if isvc == "redhat-dog":
        expected += ["Namespace", "NetworkPolicy", "PodMonitor", "Role", "RoleBinding"]
        expected += ["ServiceAccount"]
        # KEDA may request this account's bound tokens (no token Secret).
        expected += ["Role", "RoleBinding", "TriggerAuthentication"]
        # Its LoRA adapters' volume (tests/deploy/test_loras.py).
        expected += ["PersistentVolumeClaim"]
    assert kinds == sorted(expected)
    namespaced = [d for d in model_docs if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {RUNTIME_NAMESPACES[isvc]}


def _kubernetes_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_core_kinds_pass_strict_kubernetes_validation(tmp_path):
    core = [
        doc for tree in ALL_TREES[2:] for doc in render(tree) if doc["kind"] not in CUSTOM_KINDS
    ]
    assert len(core) > 20
    result = _kubernetes_validate(core, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The control: the same tool, on a Deployment with a misspelt field, fails."""
    deployment = copy.deepcopy(one(render(mcp_dir("dev")), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    result = _kubernetes_validate([deployment], tmp_path)
    assert result.returncode != 0
    assert "readinesProbe" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kind", "model"),
    [("InferenceService", "V1beta1InferenceService"), ("ServingRuntime", "V1alpha1ServingRuntime")],
)
def test_kserve_kinds_match_the_typed_models(model_docs, kind, model):
    (resource,) = find(model_docs, kind)
    assert problems(resource, model) == []


def test_typed_models_reject_unknown_and_mistyped_fields(model_docs):
    isvc = copy.deepcopy(one(model_docs, "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = "hf://x/y"
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    assert sorted(problems(isvc, "V1beta1InferenceService")) == [
        ".spec.predictor.minReplicas: expected int, got 'one'",
        ".spec.predictor.model.storageURI: unknown field of V1beta1ModelSpec",
    ]


def test_routes_match_the_openshift_route_schema(mcp_docs):
    jsonschema.validate(one(mcp_docs, "Route"), ROUTE_SCHEMA)


def test_route_schema_rejects_a_bad_termination(mcp_docs):
    route = copy.deepcopy(one(mcp_docs, "Route"))
    route["spec"]["tls"] = {"termination": "edgy"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, ROUTE_SCHEMA)
