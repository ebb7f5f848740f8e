"""The tools/ scripts are not a package: each is run as ``python tools/NAME.py`` and imports rtcalm and
trainer like any user code (the installed project). A test imports one by its path with the ``tool``
fixture: ``tool("decode_experiment")`` is the module tools/decode_experiment.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def import_tool(name: str):
    """tools/<name>.py as the module ``tools_<name>`` (imported once per test session)."""
    module_name = f"tools_{name}"
    if module_name not in sys.modules:
        path = TOOLS / f"{name}.py"
        if not path.is_file():
            raise FileNotFoundError(f"no tool {path}")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture(scope="session")
def tool():
    return import_tool
