"""network-config-analyzer on the rendered overlays: the connections the NetworkPolicies
allow, between the real MCP Deployment and stand-in pods for what the manifests do not create
(the KServe predictor, the router, cluster DNS, monitoring, an unrelated namespace)."""

from __future__ import annotations

import functools
import re

import pytest

from tests.deploy.manifests import (
    MCP_ENVS,
    RUNTIME_NAMESPACES,
    mcp_dir,
    nca_connections,
    predictor_labels,
    render_text,
    runtime_dir,
    stand_in_pod,
)

MCP = "mcp-server[Deployment]"


STAND_INS = {
    "openshift-ingress/router": {},
    "openshift-dns/dns": {},
    "openshift-user-workload-monitoring/prometheus": {},
    "other/client": {},
    # An unrelated pod beside the MCP server in its own namespace.
    "{mcp_ns}/neighbour": {},
}


@functools.cache
def connectivity(env: str) -> dict[tuple[str, str], str]:
    """{(source, destination): allowed connection} for the MCP overlay ENV with its runtime."""
    mcp_ns, runtime_ns = f"mcp-server-{env}", RUNTIME_NAMESPACES[MCP_ENVS[env]]
    rendered = render_text(mcp_dir(env)) + "---\n" + render_text(runtime_dir(MCP_ENVS[env]))
    pods = [
        stand_in_pod(f"{runtime_ns}/predictor", predictor_labels(MCP_ENVS[env])),
        *(stand_in_pod(ref.format(mcp_ns=mcp_ns), labels) for ref, labels in STAND_INS.items()),
    ]
    return {
        (source.removeprefix(f"{mcp_ns}/"), destination.removeprefix(f"{mcp_ns}/")): allowed
        for source, destination, allowed in nca_connections(rendered, pods, {mcp_ns, "kube-system"})
    }


@pytest.fixture
def edges(env):
    return connectivity(env)


@pytest.fixture
def predictor(env):
    return f"{RUNTIME_NAMESPACES[MCP_ENVS[env]]}/predictor[Pod]"


def test_mcp_reaches_the_runtime_on_its_port_only(edges, predictor):
    assert edges[(MCP, predictor)] == "{protocols:TCP,dst_ports:8080}"


def test_mcp_reaches_cluster_dns(edges):
    allowed = edges[(MCP, "openshift-dns/dns[Pod]")]
    assert "UDP" in allowed and "TCP" in allowed
    assert re.search(r"\b53\b", allowed) and "5353" in allowed


def test_only_mcp_namespaces_and_monitoring_reach_the_runtime(edges, predictor):
    sources = {src for (src, dst) in edges if dst == predictor}
    assert sources == {MCP, "openshift-user-workload-monitoring/prometheus[Pod]"}
    assert edges[("openshift-user-workload-monitoring/prometheus[Pod]", predictor)] == (
        "{protocols:TCP,dst_ports:8080}"
    )


def test_only_the_router_and_own_namespace_reach_mcp(edges):
    sources = {src for (src, dst) in edges if dst == MCP}
    assert sources == {"openshift-ingress/router[Pod]", "neighbour[Pod]"}
    for source in sources:
        assert edges[(source, MCP)] == "{protocols:TCP,dst_ports:8080}"


def test_mcp_egress_is_dns_runtime_api_server_and_image_store_only(env, edges, predictor):
    destinations = {dst for (src, dst) in edges if src == MCP}
    # Addresses outside the pod network: the Kubernetes API server's endpoints on 6443 (model
    # discovery; they are node or external addresses) and, in production, the S3 image store
    # over HTTPS.
    external = {dst for dst in destinations if dst[0].isdigit()}
    ports = "443,6443" if env == "production" else "6443"
    assert external
    assert all(edges[(MCP, dst)] == f"{{protocols:TCP,dst_ports:{ports}}}" for dst in external)
    assert destinations - external == {
        predictor,
        "openshift-dns/dns[Pod]",
        "kube-system/kube-dns-livesim[Pod]",
    }


@functools.cache
def one_cluster() -> dict[tuple[str, str], str]:
    """Every MCP overlay and both runtimes applied to one shared cluster, with stand-ins for
    the two predictors' pods: {(source, destination): allowed connection}."""
    trees = [*map(mcp_dir, MCP_ENVS), runtime_dir("tiny-sd"), runtime_dir("redhat-dog")]
    rendered = "---\n".join(render_text(tree) for tree in trees)
    pods = [
        stand_in_pod(f"{RUNTIME_NAMESPACES[model]}/{model}-predictor", predictor_labels(model))
        for model in ("tiny-sd", "redhat-dog")
    ]
    namespaces = {f"mcp-server-{env}" for env in MCP_ENVS} | {"kube-system"}
    return {
        (src, dst): allowed for src, dst, allowed in nca_connections(rendered, pods, namespaces)
    }


@pytest.mark.parametrize("env", MCP_ENVS)
def test_on_a_shared_cluster_each_environment_reaches_only_its_own_runtime(env):
    edges = one_cluster()
    mcp = f"mcp-server-{env}/mcp-server[Deployment]"
    reached = {dst for (src, dst) in edges if src == mcp and dst.endswith("-predictor[Pod]")}
    model = MCP_ENVS[env]
    assert reached == {f"{RUNTIME_NAMESPACES[model]}/{model}-predictor[Pod]"}
    # And the other way round: the predictor admits no other environment's MCP server.
    for other in MCP_ENVS:
        if MCP_ENVS[other] != model:
            other_runtime = (
                f"{RUNTIME_NAMESPACES[MCP_ENVS[other]]}/{MCP_ENVS[other]}-predictor[Pod]"
            )
            assert (mcp, other_runtime) not in edges


@functools.cache
def one_namespace() -> dict[tuple[str, str], str]:
    """Every MCP overlay and the tiny-sd runtime, with the production runtime's predictor (as
    if deployed into default by mistake) and an unlabelled diffusers runtime (another team's)
    beside tiny-sd's in default: {(source, destination): allowed connection}."""
    trees = [*map(mcp_dir, MCP_ENVS), runtime_dir("tiny-sd")]
    rendered = "---\n".join(render_text(tree) for tree in trees)
    pods = [
        stand_in_pod("default/tiny-sd-predictor", predictor_labels("tiny-sd")),
        stand_in_pod("default/redhat-dog-predictor", predictor_labels("redhat-dog")),
        stand_in_pod("default/other-predictor", {"app.kubernetes.io/name": "diffusers-runtime"}),
    ]
    namespaces = {f"mcp-server-{env}" for env in MCP_ENVS} | {"kube-system"}
    return {
        (src, dst): allowed for src, dst, allowed in nca_connections(rendered, pods, namespaces)
    }


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_labels_keep_environments_apart_within_one_namespace(env):
    """Namespaces aside, the environment labels alone keep dev and staging away from a
    production runtime pod and from a runtime labelled for no environment."""
    edges = one_namespace()
    reached = {
        dst
        for (src, dst) in edges
        if src == f"mcp-server-{env}/mcp-server[Deployment]" and dst.endswith("-predictor[Pod]")
    }
    assert reached == {"default/tiny-sd-predictor[Pod]"}
    # Nor does any other environment's MCP server reach them: neither is labelled for it.
    for stranger in ("default/redhat-dog-predictor[Pod]", "default/other-predictor[Pod]"):
        assert not [src for (src, dst) in edges if dst == stranger and src.startswith("mcp-")]
