"""The Containerfile (hadolint, targets, what each image gets) and the Makefile's cluster
commands, printed in order under DRY_RUN=1."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.manifests import REPO, RUNTIME_NAMESPACES, tool

CONTAINERFILE = REPO / "Containerfile"


def test_hadolint_passes():
    result = subprocess.run(
        [tool("hadolint"), str(CONTAINERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM \S+ AS (\S+)\n", CONTAINERFILE.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_containerfile_targets():
    stages = _stages()
    assert {"mcp-server", "diffusers-runtime"} <= stages.keys()
    text = CONTAINERFILE.read_text()
    assert "ARG BASE_IMAGE=registry.access.redhat.com/ubi9/python-311" in text
    assert "USER 1001" in stages["common"]
    for target in ("mcp-server", "diffusers-runtime"):
        assert "EXPOSE 8080" in stages[target]
    # The MCP server image installs only the server extra, and its build fails if torch is
    # importable: the one mention of torch is that check.
    server = stages["mcp-server"]
    assert "[server]" in server and "[runtime]" not in server
    assert server.count("torch") == 1 and '! python -c "import torch"' in server
    # The runtime image pins torch before the runtime extra can pull another build.
    runtime = stages["diffusers-runtime"]
    assert runtime.index('"torch==${TORCH_VERSION}"') < runtime.index("[runtime]")
    assert "ARG TORCH_VERSION=2.13.0" in runtime


# Server-side: a field the HPA or KEDA owns (the replica count) is never overwritten.
APPLY = "apply --server-side --field-manager=diffusers-mcp"


def make(*args: str) -> list[str]:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "DRY_RUN=1", "KUBECTL=oc", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize(
    ("target", "model", "env"),
    [
        ("deploy-with-diffusers-dev", "tiny-sd", "dev"),
        ("deploy-with-diffusers-staging", "tiny-sd", "staging"),
        ("deploy-with-diffusers-prod", "redhat-dog", "production"),
    ],
)
def test_deploy_with_diffusers_prints_runtime_first_then_server(target, model, env):
    assert make(target) == [
        f"oc {APPLY} -k kustomize/runtime/overlays/{model}",
        f"oc -n {RUNTIME_NAMESPACES[model]} wait --for=condition=Ready inferenceservice/{model}"
        " --timeout=30m",
        f"oc kustomize kustomize/overlays/{env}"
        ' | sed -e "s/apps.cluster.example.com/apps.cluster.example.com/g"'
        f" | oc {APPLY} -f -",
        f"oc -n mcp-server-{env} rollout status deployment/mcp-server --timeout=15m",
        f"oc -n mcp-server-{env} get route mcp-server -o custom-columns=URL:.spec.host",
    ]


def test_embedded_model_switch_deploys_the_dev_runtime_without_a_download():
    lines = make("deploy-with-diffusers-dev", "EMBEDDED_MODEL=1")
    assert lines[:2] == [
        f"oc {APPLY} -k kustomize/runtime/overlays/tiny-sd-embedded",
        "oc -n default wait --for=condition=Ready inferenceservice/tiny-sd --timeout=30m",
    ]
    # Production's model is not the embedded one: the switch leaves it alone.
    assert make("deploy-with-diffusers-prod", "EMBEDDED_MODEL=1")[0] == (
        f"oc {APPLY} -k kustomize/runtime/overlays/redhat-dog"
    )


def test_the_runtime_image_carries_the_default_model_and_both_images_log_json():
    stages = _stages()
    assert "COPY --chown=1001:0 models/default/" in stages["diffusers-runtime"]
    assert "LOG_FORMAT=json" in stages["common"]


def test_cluster_domain_replaces_the_placeholder():
    (apply,) = [
        line
        for line in make("deploy-dev", "CLUSTER_DOMAIN=apps.ocp.example.org")
        if "apply" in line
    ]
    assert "s/apps.cluster.example.com/apps.ocp.example.org/g" in apply


def test_checks_and_teardown_name_the_right_objects():
    assert make("check-services", "ENV=prod")[:2] == [
        "oc -n diffusers-production get inferenceservice redhat-dog",
        "oc -n diffusers-production get service,endpoints redhat-dog-predictor",
    ]
    assert make("test-connectivity", "ENV=staging") == [
        "oc -n mcp-server-staging exec -i deploy/mcp-server -c mcp-server"
        " -- python - connectivity < deploy/checks.py"
    ]
    (integration,) = make("test-integration", "ENV=dev")
    assert integration.endswith(
        "-m deploy.checks integration --kubectl oc --namespace mcp-server-dev"
    )
    assert make("undeploy-runtime-tiny-sd") == [
        "oc -n default delete inferenceservice tiny-sd --ignore-not-found"
    ]


def test_a_wrong_env_is_refused():
    result = subprocess.run(
        ["make", "-C", str(REPO), "DRY_RUN=1", "check-services", "ENV=qa"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert 'ENV must be dev, staging or prod here (got "qa")' in result.stderr
