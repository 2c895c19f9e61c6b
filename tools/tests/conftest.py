"""What the tests of tools/ share."""

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1]


def _load_tool(relative: str):
    """A fresh module of the script tools/RELATIVE (e.g. "bench/grad_check.py"), imported
    from its file: the scripts are not a package, and each test gets its own copy."""
    path = TOOLS / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool():
    """load_tool("bench/grad_check.py") -> that script as a freshly imported module."""
    return _load_tool
