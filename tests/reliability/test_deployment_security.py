"""What tests/deploy does not already prove about the rendered manifests: the production
runtime cannot reach the internet (network-config-analyzer on the rendered NetworkPolicies,
with stand-in pods for the predictors), while the dev runtime, which downloads its model from
the Hugging Face Hub, keeps that path. The lock-down of every container, limits, secrets and
the MCP server's own policies are checked in tests/deploy."""

from __future__ import annotations

import functools

from tests.deploy.manifests import (
    mcp_dir,
    nca_connections,
    predictor_labels,
    render_text,
    runtime_dir,
    stand_in_pod,
)

PREDICTORS = {
    "diffusers-production/redhat-dog-predictor": predictor_labels("redhat-dog"),
    "default/tiny-sd-predictor": predictor_labels("tiny-sd"),
    "openshift-dns/dns": {},
    "other/client": {},
}


@functools.cache
def runtime_egress() -> dict[str, set[str]]:
    """{predictor: destinations it may reach} with both runtime overlays applied together,
    as in a cluster running dev and production (each runtime in its own namespace)."""
    rendered = "---\n".join(
        render_text(path)
        for path in (runtime_dir("redhat-dog"), runtime_dir("tiny-sd"), mcp_dir("production"))
    )
    pods = [stand_in_pod(ref, labels) for ref, labels in PREDICTORS.items()]
    edges: dict[str, set[str]] = {}
    for source, destination, _ in nca_connections(
        rendered, pods, {"kube-system", "mcp-server-production"}
    ):
        edges.setdefault(source, set()).add(destination)
    return edges


def _is_address(destination: str) -> bool:
    return destination[0].isdigit()


def test_production_runtime_reaches_only_cluster_dns() -> None:
    reached = runtime_egress()["diffusers-production/redhat-dog-predictor[Pod]"]
    assert not [d for d in reached if _is_address(d)], reached  # no internet, no IP range
    assert reached == {"openshift-dns/dns[Pod]", "kube-system/kube-dns-livesim[Pod]"}


def test_dev_runtime_keeps_its_path_to_the_hub() -> None:
    """The egress policy selects redhat-dog alone: tiny-sd (hf:// model) still downloads."""
    reached = runtime_egress()["default/tiny-sd-predictor[Pod]"]
    assert [d for d in reached if _is_address(d)], reached
