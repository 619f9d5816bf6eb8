import os
from pathlib import Path

import pytest

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
