"""The code base stays ruff-clean (configuration in pyproject.toml), the command line stays on top
(no module imports it back), and no module imports itself back through others: layers stay layers."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGES = ("vidfarm", "uploader", "transcoder", "autoscaler")


def test_ruff_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def imported_modules(path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_entry_point_imports_the_command_line():
    importers = sorted(
        str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
        if "vidfarm.cli" in imported_modules(path)
    )
    assert importers == ["vidfarm/__main__.py"]


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` (module -> the modules it imports) as the path around it; [] if none."""
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            if cycle := walk(imported, [*path, module]):
                return cycle
        done.add(module)
        return []

    for module in sorted(graph):
        if cycle := walk(module, []):
            return cycle
    return []


def test_no_module_imports_itself_back():
    """Whatever the project imports, at the top or inside a function, forms no cycle: a cycle works
    only as long as the imports happen in one order, and hides which module is the lower layer."""
    paths = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph = {name: (imported_modules(path) & paths.keys()) - {name} for name, path in paths.items()}
    assert import_cycle(graph) == []
