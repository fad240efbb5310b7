"""The layout holds: imports point one way (core <- attacks <- eval <- training <- entry points), no cycles, and
the autoattack adapter and the import hooks are leaves."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"robust_sabn": "robust_sabn", "attacks": "robust_sabn.attacks", "training": "robust_sabn.training",
           "eval": "robust_sabn.eval"}
ENTRY_POINTS = ("robust_sabn.cli", "robust_sabn.quickstart", "robust_sabn.doctor", "robust_sabn.bench",
                "robust_sabn.exporting.cli", "robust_sabn.__main__")
# (importer prefix, imported prefix) pairs that must not occur
FORBIDDEN = [("robust_sabn.attacks", "robust_sabn.eval"), ("robust_sabn.attacks", "robust_sabn.training"),
             ("robust_sabn.eval", "robust_sabn.training")]


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


def test_imports_point_one_way(graph):
    wrong = [(a, b) for a, targets in graph.items() for b in targets
             for importer, imported in FORBIDDEN if a.startswith(importer) and b.startswith(imported)]
    core = [(a, b) for a, targets in graph.items() for b in targets
            if a.startswith("robust_sabn.") and not a.startswith(ENTRY_POINTS + tuple(FOLDERS.values())[1:])
            and b.startswith(tuple(FOLDERS.values())[1:])]
    assert not wrong and not core, wrong + core


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
