"""Process-level promises: settings errors name the variable; no torch; a small footprint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.servers import REPO, ServerProcess


def start(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"GENERATION_TIMEOUT_SECONDS": "-1"}, "GENERATION_TIMEOUT_SECONDS"),
        ({"DIFFUSERS_RUNTIME_URL": "tiny-sd:8080"}, "DIFFUSERS_RUNTIME_URL"),
        ({"DIFFUSERS_RUNTIMES": "not json"}, "DIFFUSERS_RUNTIMES"),
        ({"DIFFUSERS_RUNTIMES": '[{"name": "a"}]'}, "DIFFUSERS_RUNTIMES"),
        ({"IMAGE_STORE": "s3", "S3_BUCKET": ""}, "S3_BUCKET"),
        ({"IMAGE_STORE": "nfs"}, "IMAGE_STORE"),
        ({"MAX_CONCURRENT_PER_RUNTIME": "0"}, "MAX_CONCURRENT_PER_RUNTIME"),
        ({"MAX_CONCURRENT_PER_CLIENT": "some"}, "MAX_CONCURRENT_PER_CLIENT"),
    ],
)
def test_a_bad_setting_stops_the_start_naming_the_variable(env: dict, named: str) -> None:
    for module in ("mcp_server", "mcp_server.wait_for_runtime"):
        done = start(module, **env)
        assert done.returncode == 2, done.stderr
        assert named in done.stderr
        assert "Traceback" not in done.stderr


def test_an_unwritable_store_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = start("mcp_server", IMAGE_STORE_DIR=str(blocker / "images"), PORT="1")
    assert done.returncode != 0
    assert "IMAGE_STORE_DIR" in done.stderr


def test_importing_the_server_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from mcp_server.settings import load_settings\n"
        "from mcp_server.app import create_app\n"
        "import mcp_server.__main__, mcp_server.wait_for_runtime\n"
        "create_app(load_settings())\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'kserve')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_the_running_server_has_no_torch_loaded_and_stays_small(
    mcp_server: ServerProcess,
) -> None:
    """Inspect the live process after it has served generations (other tests ran first)."""
    pid = mcp_server.process.pid
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "torch" not in maps and "diffusers" not in maps
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kib < 128 * 1024, f"resident memory {rss_kib} KiB"
