"""`python -m mcp_server.wait_for_runtime`, the init container's readiness gate."""

from __future__ import annotations

import subprocess

from scripts.servers import REPO, ServerProcess, free_port
from tests.mcp_server.conftest import LateRuntime, gate_command


def run_gate(**env: str) -> subprocess.CompletedProcess[str]:
    args, full_env = gate_command(**env)
    return subprocess.run(args, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60)


def test_gate_passes_once_the_runtime_comes_up(late_runtime: LateRuntime) -> None:
    assert late_runtime.gate_returncode == 0, late_runtime.gate_output
    assert f"ready: {late_runtime.url}/v1/models/model" in late_runtime.gate_output


def test_gate_passes_at_once_when_the_runtime_is_ready(runtime: ServerProcess) -> None:
    done = run_gate(DIFFUSERS_RUNTIME_URL=runtime.url, WAIT_TIMEOUT_SECONDS="10")
    assert done.returncode == 0, done.stderr
    assert "after 1 attempts" in done.stdout


def test_gate_fails_with_a_diagnosis_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_gate(DIFFUSERS_RUNTIME_URL=url, WAIT_TIMEOUT_SECONDS="2")
    assert done.returncode == 1
    assert f"{url}/v1/models/model" in done.stderr
    assert "DNS:       127.0.0.1 -> 127.0.0.1" in done.stderr
    assert "ConnectError" in done.stderr
    assert "predictor pod is running" in done.stderr


def test_gate_fails_with_a_diagnosis_when_the_name_does_not_resolve() -> None:
    done = run_gate(
        DIFFUSERS_RUNTIME_URL="http://tiny-sd-predictor.nowhere.invalid:8080",
        DIFFUSERS_RUNTIME_SERVICE="tiny-sd-predictor",
        DIFFUSERS_RUNTIME_NAMESPACE="default",
        WAIT_TIMEOUT_SECONDS="2",
    )
    assert done.returncode == 1
    assert "tiny-sd-predictor.nowhere.invalid does not resolve" in done.stderr
    assert "tiny-sd-predictor.default.svc.cluster.local" in done.stderr


def test_gate_reports_a_wrong_model_name(runtime: ServerProcess) -> None:
    done = run_gate(
        DIFFUSERS_RUNTIME_URL=runtime.url, DIFFUSERS_MODEL_ID="other", WAIT_TIMEOUT_SECONDS="2"
    )
    assert done.returncode == 1
    assert "HTTP 404" in done.stderr and "DIFFUSERS_MODEL_ID" in done.stderr
