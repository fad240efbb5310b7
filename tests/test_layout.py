"""The layout holds: imports point one way (core <- attacks <- eval <- training <- commands), no cycles, every command
in robust_sabn.cli and none importing another, the package root imported from nowhere below it, and the leaves
(the version, the autoattack adapter, the import hooks) are leaves."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"robust_sabn": "robust_sabn", "attacks": "robust_sabn.attacks", "training": "robust_sabn.training",
           "eval": "robust_sabn.eval"}
# The layers, lowest first: a module imports its own layer and those below it only.
LAYERS = ("core", "robust_sabn.attacks", "robust_sabn.eval", "robust_sabn.training", "robust_sabn.cli")


def modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join((package, *(parts[:-1] if is_package else parts)))
            found[name] = (path, is_package)
    return found


def imports(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (module-level or inside functions), re-exporting packages excluded."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in known and c != name)
    return targets


@pytest.fixture(scope="module")
def graph():
    found = modules()
    return {name: imports(name, path, is_package, set(found)) for name, (path, is_package) in found.items()}


def test_no_import_cycles(graph):
    """Edges into packages' __init__ are re-exports, not knots, so only module-to-module edges count."""
    packages = {name for name, (_, is_package) in modules().items() if is_package}
    edges = {name: {t for t in targets if t not in packages} for name, targets in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for target in edges.get(node, ()):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in edges:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def layer(name: str) -> int:
    if name == "robust_sabn.__main__":
        return len(LAYERS) - 1
    return next((i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")), 0)


def defines(path: Path, *names: str) -> bool:
    defined = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
    return set(names) <= defined


def test_imports_point_one_way(graph):
    upward = [(a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert not upward, upward


def test_every_command_lives_in_the_cli_package_and_none_imports_another(graph):
    found = modules()
    commands = {name for name, (path, _) in found.items() if defines(path, "add_arguments", "run")}
    assert commands and all(name.startswith("robust_sabn.cli.") for name in commands), sorted(commands)
    from robust_sabn.cli import BENCHMARKS, COMMANDS

    named = {f"robust_sabn.cli.{module}" for module, _ in [*COMMANDS.values(), *BENCHMARKS.values()]}
    assert named == commands  # the command table names every command module, and nothing else
    crossing = [(a, b) for a in commands for b in graph[a] if b in commands]
    assert not crossing, crossing


def test_the_package_root_is_imported_from_nowhere_below_it(graph):
    below = [name for name, targets in graph.items() if "robust_sabn" in targets and name != "robust_sabn.__main__"]
    assert not below, below
    assert graph["robust_sabn.version"] == set()  # __version__ in a leaf that pyproject.toml reads


def imported_names(path: Path, module_level_only: bool = False) -> set[str]:
    """Every module a file imports (absolute imports), at module level only or anywhere."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    return {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names} | \
        {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}


def test_the_autoattack_adapter_is_a_leaf():
    """Served as `autoattack` from its file, it must import no robust_sabn (pyautoattack, torch, the stdlib)."""
    for path in (ROOT / "robust_sabn" / "_autoattack").glob("*.py"):
        tops = {name.split(".")[0] for name in imported_names(path)}
        assert tops <= set(sys.stdlib_module_names) | {"pyautoattack", "torch"}, (path.name, tops)


def test_the_hooks_module_imports_only_the_stdlib_and_its_callbacks_module():
    """It runs at every interpreter start-up: module-level imports from the stdlib only; robust_sabn only in the
    callbacks, and only the module that holds them."""
    path = ROOT / "_robust_sabn_hooks.py"
    assert {name.split(".")[0] for name in imported_names(path, module_level_only=True)} <= sys.stdlib_module_names
    others = {name for name in imported_names(path) if name.split(".")[0] not in sys.stdlib_module_names}
    assert others == {"robust_sabn.exporting"}, others
