"""The code base stays ruff-clean (configuration in pyproject.toml), and the command line stays on
top: no module imports it back, so nothing it starts can form an import cycle with it."""

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
