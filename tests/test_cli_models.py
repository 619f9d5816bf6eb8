"""`percept models list|info|pull|lock|verify`, through the stand-in Hub, a temporary lock and a temporary user lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from percept_cli import cli_models
from percept_cli import hub as H
from percept_cli.errors import ChecksumError, ModelError, ModelNotCachedError, PerceptError
from tests.hub_server import SD2, WEIGHTS_REPO, HubStandIn, lock_text, official_files, sha

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


def test_pin_list_info_load_verify(unpinned: Path) -> None:
    listed = run_json("list")
    (gen,) = listed["models"]
    assert (gen["name"], gen["pinned"], gen["cached"], gen["download_size"]) == ("generalist", False, False, None)
    assert gen["tasks"] == ["depth", "flow"] and gen["parameters"] == 123 and listed["default"] == "generalist"
    info = run_json("info", "generalist")
    assert info["layout"] == "official" and info["config"] == {"num_heads": 2} and info["lock"] == str(unpinned)
    assert [f["cache_path"] for f in info["files"]] == [None] * 4 and info["hub_cache"] == os.environ["HF_HUB_CACHE"]
    with pytest.raises(ModelNotCachedError, match="percept models pull generalist --pin"):
        H.resolve_model("generalist")  # loading an unpinned model is refused, naming the fix

    result = run("pull", "generalist", "--pin", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "trust on first use" in result.stderr and sha(PT) in result.stderr  # commit, sizes, sha256 said plainly
    user = Path(os.environ["PERCEPT_LOCK"])
    pulled = json.loads(result.stdout)
    assert pulled["pinned_by"] == str(user) and "[[models.generalist.files]]" in user.read_text()
    weights = next(f for f in pulled["files"] if f["role"] == "weights")
    assert weights["sha256"] == sha(PT) and weights["size"] == len(PT) and len(weights["revision"]) == 40
    assert Path(weights["cache_path"]).read_bytes() == PT
    assert "revision = \"\"" in unpinned.read_text()  # the packaged lock is untouched

    gen = run_json("list")["models"][0]
    assert gen["pinned"] and gen["cached"] and gen["lock"] == str(user)
    assert gen["download_size"] == len(PT) + sum(map(len, SD2_FILES.values()))
    assert run_json("info", "generalist")["lock"] == str(user)
    assert str(user) in run("list").stdout and str(user) in run("info", "generalist").stdout
    assert H.resolve_model("generalist", download=False).weights.read_bytes() == PT  # loading works now
    checked = run_json("verify")
    assert checked["ok"] and {f["status"] for f in checked["models"]["generalist"]} == {"ok"}

    blob = Path(os.path.realpath(weights["cache_path"]))  # tampered after the pin: refused
    blob.write_bytes(b"\x00" * len(PT))
    with pytest.raises(ChecksumError, match=f"expects {sha(PT)}"):
        H.resolve_model("generalist", download=False)


def test_plain_pull_of_an_unpinned_model_names_pin(unpinned: Path) -> None:
    err = fails_with(ModelNotCachedError, "pull", "generalist")
    assert "percept models pull generalist --pin" in str(err) and "trust on first use" in str(err)
    assert not Path(os.environ["PERCEPT_LOCK"]).exists()


def test_lock_pins_into_the_lock_in_use(unpinned: Path) -> None:
    locked = run_json("lock", "generalist")
    assert all(f["revision"] and f["sha256"] for f in locked["files"])
    assert Path(locked["lock"]) == unpinned.resolve() and not Path(os.environ["PERCEPT_LOCK"]).exists()
    assert run_json("list")["models"][0]["lock"] == str(unpinned)


def test_verify_reports_and_fails_on_a_corrupt_file(unpinned: Path) -> None:
    run_json("pull", "generalist", "--pin")
    info = run_json("info", "generalist")
    blob = Path(os.path.realpath(info["files"][0]["cache_path"]))
    blob.write_bytes(b"\x00" * len(PT))
    result = run("verify", "generalist", "--json")
    assert isinstance(result.exception, ChecksumError)
    assert "percept models pull generalist --force" in str(result.exception)
    report = json.loads(result.stdout)
    assert not report["ok"] and report["models"]["generalist"][0]["status"] == "mismatch"
    assert report["models"]["generalist"][0]["error"] == str(result.exception)  # the same words, in the JSON too
    run_json("pull", "generalist", "--force")  # the fix it names works
    assert run_json("verify", "generalist")["ok"]


def test_verify_of_a_tampered_builtin_says_reinstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 (9): builtin files come with the package; `pull --force` cannot fix them."""
    folder = tmp_path / "pkg" / "assets" / "tiny"
    (folder / "scheduler").mkdir(parents=True)
    for name, data in {"config.json": "{}", "diffusion_pytorch_model.safetensors": "w", "percept.json": "{}",
                       "scheduler/scheduler_config.json": "{}"}.items():
        (folder / name).write_text(data)
    monkeypatch.setattr(H, "PACKAGE_DIR", tmp_path / "pkg")
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path / "pc"))
    monkeypatch.setenv("PERCEPT_LOCK", str(tmp_path / "none.lock"))
    lock = tmp_path / "weights.lock"
    lock.write_text(lock_text("tiny", [], layout="percept", extra='builtin = true\nfolder = "assets/tiny"\n'))
    monkeypatch.setenv("PERCEPT_WEIGHTS_LOCK", str(lock))
    run_json("lock", "tiny")
    (folder / "diffusion_pytorch_model.safetensors").write_text("x")
    err = str(fails_with(ChecksumError, "verify", "tiny"))
    assert "pip install --force-reinstall percept-cli" in err and "pull" not in err


def test_human_output_goes_to_the_right_streams(unpinned: Path) -> None:
    result = run("pull", "generalist", "--pin")
    assert result.exit_code == 0, result.output
    assert "trust on first use" in result.stderr and result.stdout == ""
    table = run("list")
    assert "generalist" in table.stdout and "(default)" in table.stdout


def test_piped_tables_are_not_cut(unpinned: Path) -> None:
    """Issue 12 (13): with stdout not a terminal, info's table keeps repo, sha256 and cache path whole."""
    run_json("pull", "generalist", "--pin")
    env = {**os.environ, "COLUMNS": "80"}
    out = subprocess.run([sys.executable, "-m", "percept_cli", "models", "info", "generalist"], env=env,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    info = run_json("info", "generalist")
    for f in info["files"]:
        assert f["sha256"] in out.stdout and f["cache_path"] in out.stdout and f["repo"] in out.stdout


def test_bad_hf_setting_is_one_line(unpinned: Path) -> None:
    """Issue 12 (8): HF_HUB_ETAG_TIMEOUT=abc makes huggingface_hub fail on import; say which variable."""
    env = {**os.environ, "HF_HUB_ETAG_TIMEOUT": "abc"}
    for pin in ([], ["--pin"]):
        out = subprocess.run([sys.executable, "-m", "percept_cli", "models", "pull", "generalist", *pin], env=env,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "HF_HUB_ETAG_TIMEOUT='abc' must be a whole number" in out.stderr and len(out.stderr.splitlines()) == 1


def test_errors_name_the_model_and_the_fix(unpinned: Path) -> None:
    assert "use one of generalist" in str(fails_with(ModelError, "info", "nope"))
