import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub_server import HubStandIn

# Small fixtures the tests need ship with the repository; real dataset samples do not.
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared"
REALDATA = SHARED / "realdata"
# Set by .ci/run: there ../shared is beside the repository, and a real-data test that skips is a failure.
REQUIRE_REALDATA = "PERCEPT_REQUIRE_REALDATA"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("PERCEPT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or PERCEPT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def official_fixtures() -> Path:
    """Tiny checkpoints and reference outputs made with the official code (see fixtures/official/README.md)."""
    return FIXTURES / "official"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared, for tests on real dataset samples in ../shared/realdata."""
    if not REALDATA.is_dir():
        reason = "../shared/realdata not beside the repository; real-data tests run in CI"
        if os.environ.get(REQUIRE_REALDATA) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_REALDATA}=1 says this is CI: put ../shared beside the repository")
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def no_user_lock(tmp_path_factory) -> Iterator[Path]:
    """PERCEPT_LOCK at a path that does not exist, so a developer's own ~/.config/percept/weights.lock never
    leaks into a test (tests that want a user lock set their own with monkeypatch)."""
    path = tmp_path_factory.mktemp("user-lock") / "weights.lock"
    before = os.environ.get("PERCEPT_LOCK")
    os.environ["PERCEPT_LOCK"] = str(path)
    yield path
    if before is None:
        os.environ.pop("PERCEPT_LOCK", None)
    else:
        os.environ["PERCEPT_LOCK"] = before


@pytest.fixture(scope="session")
def speed_benchmark():
    """benchmarks/speed.py as a module: its official_reference is the one sequential reference of the tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_benchmark", FIXTURES.parents[1] / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny seeded model folder (resolution 32, 2 experts), one per test module."""
    from tests.helpers import tiny_model_folder

    return tiny_model_folder(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    """A running stand-in Hub, stopped at teardown."""
    server = HubStandIn()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_env(hub: HubStandIn, tmp_path, monkeypatch) -> HubStandIn:
    """Point huggingface_hub and percept at the stand-in, with fresh temporary caches."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("PERCEPT_CACHE", str(tmp_path / "percept-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PERCEPT_LOCK", str(tmp_path / "config" / "weights.lock"))  # the user lock, absent at first
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "PERCEPT_MODEL", "PERCEPT_WEIGHTS_LOCK",
                "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return hub
