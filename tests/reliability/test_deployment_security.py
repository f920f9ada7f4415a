"""What tests/deploy does not already prove about the rendered manifests: the production
runtime cannot reach the internet (network-config-analyzer on the rendered NetworkPolicies,
with stand-in pods for the predictors), while the dev runtime, which downloads its model from
the Hugging Face Hub, keeps that path. The lock-down of every container, limits, secrets and
the MCP server's own policies are checked in tests/deploy."""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.deploy.manifests import mcp_dir, render_text, runtime_dir, tool
from tests.deploy.test_network import _namespace, _pod

PREDICTORS = {
    "default/redhat-dog-predictor": {
        "app.kubernetes.io/name": "diffusers-runtime",
        "serving.kserve.io/inferenceservice": "redhat-dog",
    },
    "default/tiny-sd-predictor": {
        "app.kubernetes.io/name": "diffusers-runtime",
        "serving.kserve.io/inferenceservice": "tiny-sd",
    },
    "openshift-dns/dns": {},
    "other/client": {},
}


@functools.cache
def runtime_egress() -> dict[str, set[str]]:
    """{predictor: destinations it may reach} with both runtime overlays applied together,
    as in a cluster running dev and production against namespace default."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        rendered = tmp_path / "rendered.yaml"
        rendered.write_text(
            render_text(runtime_dir("redhat-dog"))
            + "---\n"
            + render_text(runtime_dir("tiny-sd"))
            + "---\n"
            + render_text(mcp_dir("production"))
        )
        pods = [_pod(ref, labels) for ref, labels in PREDICTORS.items()]
        (tmp_path / "pods.yaml").write_text(
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods})
        )
        names = {p["metadata"]["namespace"] for p in pods} | {
            "kube-system",
            "mcp-server-production",
        }
        (tmp_path / "ns.yaml").write_text(
            yaml.safe_dump(
                {"apiVersion": "v1", "kind": "List", "items": [_namespace(n) for n in names]}
            )
        )
        result = subprocess.run(
            [
                tool("nca"),
                "--connectivity", str(rendered),
                "--pod_list", str(rendered),
                "--pod_list", str(tmp_path / "pods.yaml"),
                "--ns_list", str(tmp_path / "ns.yaml"),
                "--output_format", "txt_no_fw_rules",
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    edges: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        if match := re.match(r"^(\S+) => (\S+) : (.+)$", line):
            edges.setdefault(match[1], set()).add(match[2])
    assert edges, result.stdout
    return edges


def _is_address(destination: str) -> bool:
    return destination[0].isdigit()


def test_production_runtime_reaches_only_cluster_dns() -> None:
    reached = runtime_egress()["default/redhat-dog-predictor[Pod]"]
    assert not [d for d in reached if _is_address(d)], reached  # no internet, no IP range
    assert reached == {"openshift-dns/dns[Pod]", "kube-system/kube-dns-livesim[Pod]"}


def test_dev_runtime_keeps_its_path_to_the_hub() -> None:
    """The egress policy selects redhat-dog alone: tiny-sd (hf:// model) still downloads."""
    reached = runtime_egress()["default/tiny-sd-predictor[Pod]"]
    assert [d for d in reached if _is_address(d)], reached
