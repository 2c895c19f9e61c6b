"""Repository-wide test policy, and where the shared test material is.

In CI (CI=true) a skipped test is a failure: a missing toolchain or missing
shared data must never pass silently. Tests that can only run on hardware CI
does not have (a GPU) carry the `needs_hardware` marker and may skip.

The shared material (corpora, vocabularies, the reference's model files) is
found at $NANO_SHARED, else at <repo>/../shared. The fixtures below hand it to
every package's tests; a missing file fails the test, never skips it.
"""

import os
import signal
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("NANO_SHARED", Path(__file__).resolve().parent.parent / "shared"))


def _shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.fail(f"shared test data missing: {path} (set NANO_SHARED to the shared/ folder, "
                    f"normally <repo>/../shared)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_file():
    """shared_file("data/x.json") -> its path in the shared folder (the test fails when it is missing)."""
    return _shared_file


@pytest.fixture(scope="session")
def psycho_path() -> Path:
    """The reference's Q8_0 text model."""
    return _shared_file("fixtures/psycho_230k_1214_q80.bin")


@pytest.fixture(scope="session")
def sort6_path() -> Path:
    """The reference's F32 full-attention model that sorts six digits."""
    return _shared_file("fixtures/sort6_f32.bin")


@pytest.fixture
def checkout_without_a_compiler(tmp_path, monkeypatch) -> Path:
    """A checkout holding a copy of engines/c-core without its builds, and PATH set to
    make and the shell tools its Makefile runs but no C compiler: what a machine without
    one looks like to the commands that build the engine. Returns the checkout."""
    import shutil

    root = tmp_path / "checkout"
    shutil.copytree(Path(__file__).parent / "engines" / "c-core", root / "engines" / "c-core",
                    ignore=shutil.ignore_patterns("build*"))
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("make", "sh", "uname", "mkdir"):
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is needed to build the C engine and is not on PATH")
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))
    return root


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_hardware: may skip in CI (e.g. needs a GPU)")
    # A shell script's background job (`pytest ... &`, without job control) starts with
    # Ctrl-C ignored, and the programs it starts inherit that: the tests of what Ctrl-C does
    # would see nothing happen. They send it on purpose, so it is Python's default again.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        os.environ.get("CI") == "true"
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("needs_hardware") is None
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, which is not allowed: {reason}"
