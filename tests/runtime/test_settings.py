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
    [
        ("DTYPE", "fp8"),
        ("ENABLE_CPU_OFFLOAD", "always"),
        ("MAX_STEPS", "0"),
        ("MAX_PIXELS", "x"),
        ("QUALITY_LOW_STEPS", "0"),
        ("QUALITY_HIGH_STEPS", "101"),
        ("DEFAULT_SPEED", "warp"),
        ("COMPILE", "always"),
        ("COMPILE_WARMUP_SIZES", "128"),
        ("LORA_CACHE_SIZE", "2"),  # below MAX_LORAS_PER_REQUEST (4)
        ("LORA_PRELOAD", "a.b"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert name in str(error.value.code)


def test_quality_presets_follow_the_default_steps_within_max_steps():
    assert RuntimeSettings().quality_steps() == {"low": 10, "medium": 20, "high": 40}
    capped = RuntimeSettings(default_steps=28, max_steps=50)
    assert capped.quality_steps() == {"low": 14, "medium": 28, "high": 50}
    chosen = RuntimeSettings(quality_low_steps=4, quality_high_steps=60)
    assert chosen.quality_steps() == {"low": 4, "medium": 20, "high": 60}


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


def test_compile_warmup_sizes_are_read_as_width_by_height(monkeypatch):
    monkeypatch.setenv("COMPILE_WARMUP_SIZES", "128x128,256x64")
    assert RuntimeSettings().warmup_sizes() == [(128, 128), (256, 64)]
    monkeypatch.setenv("COMPILE_WARMUP_SIZES", "")
    assert RuntimeSettings().warmup_sizes() == []
