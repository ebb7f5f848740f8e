"""The package structure docs/architecture.md describes, held by tests: no import circles, dependencies
point down the layers, the runtime never imports the trainer, benchmarks or simulators, and the client
stays free of the heavy stack. Every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in ("rtcalm", "trainer"):
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of this repository that ``path`` imports anywhere: at module level (``if TYPE_CHECKING``
    blocks included: a circle there is still a circle in the design) and inside functions and methods (an
    import deferred to save start-up time is still a dependency of the design)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # "from package import module" loads that module (and the package's __init__ first, as
            # every import of a submodule does; that implied edge is Python's, not the design's)
            submodules = {f"{base}.{alias.name}" for alias in node.names} & known
            found.update(submodules if len(submodules) == len(node.names) else submodules | {base})
    return {name for name in found if name in known}


GRAPH = {name: imports_of(path, set(modules())) - {name} for name, path in modules().items()}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_circles():
    """A module may import its own package's __init__ only if that __init__ does not lead back to it."""
    circles = sorted(name for name in GRAPH if name in reachable(name))
    assert not circles, f"modules that import themselves through others: {circles}"


# What each layer must never import, directly or through others (docs/architecture.md's diagram: the
# command line over the daemon, evaluation, benchmarks and simulators, over the engine, over the model;
# statistics, data, the wire format and trigger rules below all of them).
ABOVE_THE_ENGINE = ("rtcalm.daemon", "rtcalm.eval", "rtcalm.commands", "rtcalm.cli", "rtcalm.bench", "rtcalm.sim")
NEVER_IMPORTS = {
    "rtcalm.model": ("rtcalm.engine", *ABOVE_THE_ENGINE),
    "rtcalm.engine": ABOVE_THE_ENGINE,
    "rtcalm.daemon": ("rtcalm.eval", "rtcalm.commands", "rtcalm.cli", "rtcalm.bench", "rtcalm.sim"),
    "rtcalm.eval": ("rtcalm.commands", "rtcalm.cli", "rtcalm.bench"),
    **{base: ("rtcalm.model", "rtcalm.engine", *ABOVE_THE_ENGINE)
       for base in ("rtcalm.stats", "rtcalm.data", "rtcalm.protocol", "rtcalm.triggers")},
}


def in_package(name: str, packages) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


@pytest.mark.parametrize("layer", sorted(NEVER_IMPORTS))
def test_dependencies_point_down(layer):
    offenders = sorted(f"{name} -> {target}" for name in GRAPH if in_package(name, [layer])
                       for target in reachable(name) if in_package(target, NEVER_IMPORTS[layer]))
    assert not offenders, offenders


def test_the_runtime_never_imports_the_trainer():
    offenders = sorted(name for name in GRAPH if name.startswith("rtcalm")
                       and any(target.startswith("trainer") for target in reachable(name)))
    assert not offenders, offenders


@pytest.mark.parametrize("runtime", ["rtcalm.daemon.server", "rtcalm.daemon.pipeline", "rtcalm.client",
                                     "rtcalm.engine", "rtcalm.cli"])
def test_the_per_frame_path_loads_no_benchmark_or_simulator(runtime):
    loaded = reachable(runtime) | {runtime}
    assert not {name for name in loaded if name.startswith(("rtcalm.bench", "rtcalm.sim"))}


def test_the_client_loads_only_the_protocol():
    assert reachable("rtcalm.client") <= {"rtcalm", "rtcalm.protocol", "rtcalm.errors", "rtcalm.security"}


def test_the_one_percentile_definition_imports_nothing_of_this_repository():
    """The daemon's status and every benchmark share rtcalm.stats.percentile: numpy only, so importing it
    on the daemon's side can never bring benchmark code along."""
    assert reachable("rtcalm.stats.percentile") == set()
    assert "rtcalm.stats.percentile" in reachable("rtcalm.daemon.server")
