"""`percept models list|info|pull|lock|verify` with --json, through the stand-in Hub and a temporary lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from percept_cli import cli_models
from percept_cli.errors import ChecksumError, ModelError, PerceptError
from tests.hub_server import SD2, WEIGHTS_REPO, HubStandIn, hub, hub_env, lock_text, official_files, sha  # noqa: F401

PT = bytes(range(256)) * 16
SD2_FILES = {"vae/diffusion_pytorch_model.safetensors": b"\x05" * 3000, "vae/config.json": b"{}",
             "scheduler/scheduler_config.json": b'{"steps_offset": 1}'}


def run(*args: str) -> Result:
    """Invoke `percept models ARGS` in-process; percept errors stay in result.exception."""
    return CliRunner().invoke(cli_models.app, list(args))


def run_json(*args: str) -> dict:
    """Invoke with --json, require exit 0, and parse stdout."""
    result = run(*args, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def fails_with(error: type[PerceptError], *args: str) -> PerceptError:
    """Invoke, require the given percept error (exit code 1 once main() maps it), return it."""
    result = run(*args)
    assert isinstance(result.exception, error), (result.output, result.exception)
    assert result.exception.exit_code == 1
    return result.exception


@pytest.fixture
def unpinned(hub_env: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The two repos in the stand-in and a lock that names their files without commits or hashes."""
    data = {"dit_moe_generalist.pt": PT, **SD2_FILES}
    commits = {WEIGHTS_REPO: hub_env.add(WEIGHTS_REPO, {"dit_moe_generalist.pt": PT}), SD2: hub_env.add(SD2, SD2_FILES)}
    lock = tmp_path / "weights.lock"
    lock.write_text(lock_text("generalist", official_files(data, commits, pinned=False)))
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))
    return lock


def test_list_info_pull_lock_verify(unpinned: Path) -> None:
    listed = run_json("list")
    (gen,) = listed["models"]
    assert (gen["name"], gen["pinned"], gen["cached"], gen["download_size"]) == ("generalist", False, False, None)
    assert gen["tasks"] == ["depth", "flow"] and gen["parameters"] == 123 and listed["default"] == "generalist"

    info = run_json("info", "generalist")
    assert info["layout"] == "official" and info["config"] == {"num_heads": 2}
    assert [f["cache_path"] for f in info["files"]] == [None] * 4 and info["hub_cache"] == os.environ["HF_HUB_CACHE"]

    pulled = run_json("pull", "generalist")
    assert pulled["lock_pinned"] is False
    weights = next(f for f in pulled["files"] if f["role"] == "weights")
    assert weights["sha256"] == sha(PT) and weights["size"] == len(PT) and len(weights["revision"]) == 40
    assert Path(weights["cache_path"]).read_bytes() == PT
    assert run_json("list")["models"][0]["cached"] is True  # found through the last pull's commit

    locked = run_json("lock", "generalist")
    assert all(f["revision"] and f["sha256"] for f in locked["files"])
    assert Path(locked["lock"]) == unpinned.resolve()
    gen = run_json("list")["models"][0]
    assert gen["pinned"] and gen["cached"] and gen["download_size"] == len(PT) + sum(map(len, SD2_FILES.values()))

    checked = run_json("verify")
    assert checked["ok"] and {f["status"] for f in checked["models"]["generalist"]} == {"ok"}


def test_verify_reports_and_fails_on_a_corrupt_file(unpinned: Path) -> None:
    run_json("pull", "generalist")
    run_json("lock", "generalist")
    info = run_json("info", "generalist")
    blob = Path(os.path.realpath(info["files"][0]["cache_path"]))
    blob.write_bytes(b"\x00" * len(PT))
    result = run("verify", "generalist", "--json")
    assert isinstance(result.exception, ChecksumError)
    assert "percept models pull generalist --force" in str(result.exception)
    report = json.loads(result.stdout)
    assert not report["ok"] and report["models"]["generalist"][0]["status"] == "mismatch"
    run_json("pull", "generalist", "--force")  # the fix it names works
    assert run_json("verify", "generalist")["ok"]


def test_human_output_goes_to_the_right_streams(unpinned: Path) -> None:
    result = run("pull", "generalist")
    assert result.exit_code == 0, result.output
    assert "percept models lock generalist" in result.stderr and result.stdout == ""
    table = run("list")
    assert "generalist" in table.stdout and "(default)" in table.stdout


def test_errors_name_the_model_and_the_fix(unpinned: Path) -> None:
    assert "use one of generalist" in str(fails_with(ModelError, "info", "nope"))
    assert "run `percept models pull generalist` first" in str(fails_with(ModelError, "lock", "generalist"))


def test_models_cli_does_not_import_torch() -> None:
    code = "import sys, percept_cli.cli_models; sys.exit('torch' in sys.modules or 'huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0
