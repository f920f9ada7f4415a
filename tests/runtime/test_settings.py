"""RuntimeSettings: environment names, defaults, and start-up errors that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffusers_runtime.settings import RuntimeSettings, SettingsError, load_settings


def test_defaults_follow_the_deployment_guide(monkeypatch):
    for name in ("MODEL_ID", "MODEL_NAME", "DTYPE", "ENABLE_CPU_OFFLOAD"):
        monkeypatch.delenv(name, raising=False)
    settings = RuntimeSettings()
    assert settings.model_id == "/mnt/models"
    assert settings.model_name == "model"
    assert settings.dtype == "auto"
    assert settings.enable_cpu_offload == "false"


@pytest.mark.parametrize(
    ("name", "value"),
    [("DTYPE", "fp8"), ("ENABLE_CPU_OFFLOAD", "always"), ("MAX_STEPS", "0"), ("MAX_PIXELS", "x")],
)
def test_bad_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert name in str(error.value.code)


def test_the_process_refuses_to_start_on_a_bad_value(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_runtime", "--enable_grpc", "false"],
        env={"DTYPE": "double", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DTYPE" in result.stderr and "double" in result.stderr


def test_a_missing_model_folder_says_what_to_check(tmp_path, monkeypatch):
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_runtime", "--enable_grpc", "false"],
        env={"MODEL_ID": str(tmp_path / "absent"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "is not a folder" in result.stderr and "storageUri" in result.stderr
