"""What a fresh clone needs: its own fixtures, real-data tests that skip (or fail in CI), Python 3.10's TOML."""

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["pytester"]


def test_official_fixtures_are_in_the_repository(official_fixtures):
    names = {"tiny_official_layout.pt", "tiny_official_layout_ema.pt", "tiny_official_forward.npz",
             "tiny_official_pipeline.npz", "full_keys_generalist.txt", "tiny_vae/config.json",
             "tiny_vae/diffusion_pytorch_model.safetensors", "tiny_scheduler/scheduler_config.json"}
    assert official_fixtures.is_relative_to(ROOT / "tests")
    assert all((official_fixtures / n).is_file() for n in names)
    if shutil.which("git") and (ROOT / ".git").exists():  # none of them may be git-ignored (a clone would lack them)
        ignored = subprocess.run(["git", "check-ignore", *names], cwd=official_fixtures, capture_output=True, text=True)
        assert ignored.stdout == "", f"git ignores {ignored.stdout.split()}"


@pytest.mark.parametrize("situation", ["no-shared", "no-shared-in-ci", "shared"])
def test_realdata_tests_skip_without_shared_and_fail_in_ci(pytester, monkeypatch, situation):
    """tests/conftest.py's `shared` fixture, in a copy laid out as clone + (maybe) ../shared."""
    repo = pytester.path / "repo"
    (repo / "tests").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_real.py").write_text(
        "def test_real(shared):\n    assert (shared / 'realdata').is_dir()\n")
    monkeypatch.delenv("PERCEPT_REQUIRE_REALDATA", raising=False)
    if situation == "shared":
        (pytester.path / "shared" / "realdata").mkdir(parents=True)
        monkeypatch.setenv("PERCEPT_REQUIRE_REALDATA", "1")
    if situation == "no-shared-in-ci":
        monkeypatch.setenv("PERCEPT_REQUIRE_REALDATA", "1")
    monkeypatch.chdir(repo)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rsE", str(repo / "tests"))
    if situation == "no-shared":
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*../shared/realdata not beside the repository; real-data tests run in CI*"])
    elif situation == "no-shared-in-ci":
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*PERCEPT_REQUIRE_REALDATA=1*"])
    else:
        result.assert_outcomes(passed=1)


def test_ci_runs_the_readme_command_with_realdata_required_and_slow_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -q torch==2.13.0 -e ".[test]" && python -m pytest'
    assert command in readme
    assert ci.rstrip().splitlines()[-1] == command  # exactly the README's command, last
    assert "export PERCEPT_REQUIRE_REALDATA=1" in ci and "export PERCEPT_SLOW=1" in ci


def test_every_tomllib_import_is_guarded():
    """Python 3.10 (which pyproject allows) has no tomllib: every import of it must fall back to tomli."""
    for path in sorted((ROOT / "percept_cli").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded = {id(node) for t in ast.walk(tree) if isinstance(t, ast.Try)
                   if any(isinstance(h.type, ast.Name) and h.type.id in ("ModuleNotFoundError", "ImportError")
                          for h in t.handlers)
                   for stmt in t.body for node in ast.walk(stmt)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
                assert id(node) in guarded, f"{path.relative_to(ROOT)}:{node.lineno}: unguarded `import tomllib`"


def test_train_and_scaling_configs_load_without_tomllib(monkeypatch):
    """`percept train --config` and `percept scaling` read TOML on Python 3.10: no tomllib, tomli instead."""
    import tomllib

    import percept_cli.tomlcompat
    from percept_cli.scaling import load_study
    from percept_cli.train import load_config

    monkeypatch.setitem(sys.modules, "tomli", tomllib)  # stands in for the tomli that pyproject installs on 3.10
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now raises ModuleNotFoundError, as on 3.10
    try:
        importlib.reload(percept_cli.tomlcompat)  # takes its fallback branch
        assert percept_cli.tomlcompat.tomllib is sys.modules["tomli"]
        cfg = load_config(ROOT / "configs" / "tiny.toml", max_steps=3)  # their TOML imports run at call time
        study = load_study(ROOT / "configs" / "scaling-cpu.toml")
        assert cfg.max_steps == 3 and cfg.out and study.runs
    finally:
        monkeypatch.undo()
        importlib.reload(percept_cli.tomlcompat)
