"""Repository-wide test policy.

In CI (CI=true) a skipped test is a failure: a missing toolchain or missing
shared data must never pass silently. Tests that can only run on hardware CI
does not have (a GPU) carry the `needs_hardware` marker and may skip.
"""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_hardware: may skip in CI (e.g. needs a GPU)")


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
