"""What the tests of tools/ share."""

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1]


def _load_tool(relative: str):
    """A fresh module of the script tools/RELATIVE (e.g. "bench/grad_check.py"), imported
    from its file: the scripts are not a package, and each test gets its own copy. The
    modules of its folder it imports (`from machine import ...`, which `python SCRIPT`
    finds in the script's folder) are imported from their files first, under their names."""
    path = TOOLS / relative
    _load_siblings(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    # registered under its name, as `python SCRIPT` registers __main__: a dataclass in it
    # looks its module up there as it runs (the next load of the script replaces the entry)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_siblings(path: Path) -> None:
    """Import the modules beside path that it imports at its top level (and theirs)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            sibling = path.with_name(f"{name}.py")
            if sibling.is_file() and name not in sys.modules:
                _load_siblings(sibling)
                spec = importlib.util.spec_from_file_location(name, sibling)
                sys.modules[name] = module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)


@pytest.fixture(scope="session")
def load_tool():
    """load_tool("bench/grad_check.py") -> that script as a freshly imported module."""
    return _load_tool
