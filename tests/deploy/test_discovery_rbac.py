"""Model discovery in the manifests: least-privilege RBAC for the MCP server's own
ServiceAccount in the runtime namespace, a mounted token, and a discovery configuration that
finds the InferenceService of the runtime overlay it is deployed with."""

from __future__ import annotations

import ast

from tests.deploy.manifests import (
    KUSTOMIZE,
    MCP_ENVS,
    REPO,
    RUNTIMES,
    config,
    find,
    mcp_dir,
    one,
    render,
    runtime_dir,
)
from tests.deploy.test_tooling import make

# The Kubernetes client's method prefixes and the RBAC verb each needs.
VERBS = {"list_": "list", "read_": "get", "get_": "get", "watch": "watch", "create_": "create"}


def verbs_the_code_calls() -> set[str]:
    """The RBAC verbs of every call discovery makes on its Kubernetes client (`self._api`)."""
    tree = ast.parse((REPO / "mcp_server" / "discovery.py").read_text())
    called = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and ast.unparse(node.func.value) == "self._api"
    }
    assert called, "discovery makes no Kubernetes call: this test reads the wrong module"
    unknown = sorted(name for name in called if not name.startswith(tuple(VERBS)))
    assert not unknown, f"add the RBAC verb of {unknown} to VERBS"
    verbs = {verb for name in called for prefix, verb in VERBS.items() if name.startswith(prefix)}
    # A list call with watch=True is a watch.
    if any(isinstance(node, ast.keyword) and node.arg == "watch" for node in ast.walk(tree)):
        verbs.add("watch")
    return verbs


EVERY_TREE = [
    KUSTOMIZE / "base",
    KUSTOMIZE / "runtime" / "base",
    *(mcp_dir(env) for env in MCP_ENVS),
    *(runtime_dir(model) for model in set(MCP_ENVS.values())),
]


def test_the_role_only_reads_inference_services_and_their_endpoints(model_docs):
    role = one(model_docs, "Role", "diffusers-mcp-discovery")
    isvcs, slices = role["rules"]
    assert isvcs["apiGroups"] == ["serving.kserve.io"]
    assert isvcs["resources"] == ["inferenceservices"]
    # The predictor Services' EndpointSlices: the ready replicas admission counts.
    assert slices["apiGroups"] == ["discovery.k8s.io"]
    assert slices["resources"] == ["endpointslices"]
    for rule in (isvcs, slices):
        assert rule["verbs"] == sorted(verbs_the_code_calls())
        assert set(rule) == {"apiGroups", "resources", "verbs"}
    # Namespaced: the grant covers the runtime namespace only.
    assert (
        role["metadata"]["namespace"]
        == one(model_docs, "InferenceService")["metadata"]["namespace"]
    )


def test_no_cluster_wide_or_other_grants():
    for tree in EVERY_TREE:
        docs = render(tree)
        assert find(docs, "ClusterRole") == [] and find(docs, "ClusterRoleBinding") == []
        # The discovery Role, and where the runtime autoscales, the metrics reader's and KEDA's
        # right to request that reader's bound tokens.
        assert {r["metadata"]["name"] for r in find(docs, "Role")} <= {
            "diffusers-mcp-discovery",
            "diffusers-runtime-metrics-reader",
            "diffusers-runtime-autoscaler-token-requester",
        }, tree


def test_the_binding_names_each_mcp_servers_own_account(env, mcp_docs, runtime_docs):
    binding = one(runtime_docs, "RoleBinding", "diffusers-mcp-discovery")
    role = one(runtime_docs, "Role", "diffusers-mcp-discovery")
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = one(mcp_docs, "ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    assert subject in binding["subjects"]
    # Only the MCP server accounts of the environments that use this runtime; never a group
    # or a user, never another environment's.
    assert {s["kind"] for s in binding["subjects"]} == {"ServiceAccount"}
    users = {f"mcp-server-{e}" for e, model in MCP_ENVS.items() if model == MCP_ENVS[env]}
    assert {s["namespace"] for s in binding["subjects"]} == users
    spec = one(mcp_docs, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["name"]
    assert spec["automountServiceAccountToken"] is True
    assert one(mcp_docs, "ServiceAccount").get("automountServiceAccountToken", True) is True


def test_discovery_finds_the_runtime_it_is_deployed_with(env, mcp_docs, runtime_docs):
    settings = config(mcp_docs)
    assert settings["DISCOVERY_ENABLED"] == "true"
    isvc = one(runtime_docs, "InferenceService")
    assert settings["DISCOVERY_NAMESPACES"].split(",") == [isvc["metadata"]["namespace"]]
    assert (
        one(runtime_docs, "Role", "diffusers-mcp-discovery")["metadata"]["namespace"]
        in settings["DISCOVERY_NAMESPACES"]
    )
    assert selects(settings["DISCOVERY_LABEL_SELECTOR"], isvc["metadata"]["labels"])
    # Discovered under the name clients already use for the static runtime.
    assert isvc["metadata"]["name"] == settings["DEFAULT_MODEL_NAME"]


def selects(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (`k=v,k2=v2`, what DISCOVERY_LABEL_SELECTOR holds)."""
    terms = dict(term.split("=", 1) for term in selector.split(","))
    return all(labels.get(key) == value for key, value in terms.items())


def test_on_a_shared_cluster_each_environment_discovers_only_its_own_runtime(env, mcp_docs):
    """Every runtime overlay on one cluster: the InferenceServices this environment's server
    lists (a namespace in DISCOVERY_NAMESPACES whose RoleBinding names its account) and keeps
    (its label selector) are its own runtime's alone."""
    settings = config(mcp_docs)
    account = one(mcp_docs, "ServiceAccount")["metadata"]
    me = {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    listed, kept = set(), set()
    for model in RUNTIMES:
        docs = render(runtime_dir(model))
        isvc = one(docs, "InferenceService")["metadata"]
        binding = one(docs, "RoleBinding", "diffusers-mcp-discovery")
        if isvc["namespace"] in settings["DISCOVERY_NAMESPACES"].split(",") and (
            me in binding["subjects"]
        ):
            listed.add(isvc["name"])
        # Labels alone, wherever the InferenceService runs, select this environment's only.
        if selects(settings["DISCOVERY_LABEL_SELECTOR"], isvc["labels"]):
            kept.add(isvc["name"])
    assert listed == kept == {MCP_ENVS[env]}


def test_check_services_asks_the_server_what_it_serves():
    assert make("check-services", "ENV=staging")[-3:] == [
        "oc -n default get inferenceservice"
        " -l diffusers-mcp.io/expose=true,environment.diffusers-mcp.io/staging=true",
        "oc -n default get role,rolebinding diffusers-mcp-discovery",
        "oc -n mcp-server-staging exec -i deploy/mcp-server -c mcp-server"
        " -- python - models < deploy/checks.py",
    ]
