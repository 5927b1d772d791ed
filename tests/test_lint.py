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


# The entry points compose the roles (`vidfarm serve` runs the API, `vidfarm up` a whole local farm):
# they alone of the core may import one. Anything else in vidfarm/ is shared by every role.
COMPOSERS = {"vidfarm/cli.py", "vidfarm/up.py"}
ROLES = ("uploader", "transcoder", "autoscaler")


def role_imports(root) -> dict[str, list[str]]:
    """Modules of the core (other than the composers) that import a role, and what they import."""
    found = {}
    for path in sorted((root / "vidfarm").rglob("*.py")):
        name = str(path.relative_to(root))
        roles = sorted(m for m in imported_modules(path) if m.split(".")[0] in ROLES)
        if roles and name not in COMPOSERS:
            found[name] = roles
    return found


def test_the_core_imports_no_role():
    assert role_imports(ROOT) == {}


# The catalog's writes that can move a status; `status=` given to one of them is a transition.
CATALOG_WRITES = {"create", "fill", "update", "update_task"}
LIFECYCLE = "vidfarm/lifecycle.py"
STATUS_ENUMS = {"VideoStatus", "TaskStatus"}


def status_writes(path) -> list[int]:
    """Lines of `path` that write a status: `x.update(..., status=...)` and the like, or a status put
    into a dict of fields (`fields["status"] = VideoStatus.X`) that such a call then spreads."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if _writes_status(node) or _stores_status(node) or _announces_or_counts_an_ending(node)]


def _writes_status(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in CATALOG_WRITES and any(keyword.arg == "status" for keyword in node.keywords))


def _announces_or_counts_an_ending(node: ast.AST) -> bool:
    """`events.publish(..., "status", ...)` or `FAILURES.labels(...)`: what goes with a transition."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    owner = node.func.value
    if node.func.attr == "labels":
        return isinstance(owner, ast.Attribute) and owner.attr == "FAILURES"
    return (node.func.attr == "publish" and isinstance(owner, ast.Name) and owner.id == "events"
            and any(isinstance(arg, ast.Constant) and arg.value == "status" for arg in node.args))


def _stores_status(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    return (isinstance(node, ast.Assign) and isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name)
            and value.value.id in STATUS_ENUMS
            and any(isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "status"
                    for t in node.targets))


def status_writers(root) -> dict[str, list[int]]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if lines := status_writes(path):
                found[str(path.relative_to(root))] = lines
    return found


def test_only_the_lifecycle_changes_a_status():
    """Every transition of a video or a task goes through `vidfarm.lifecycle`, which announces, counts
    and stops sibling jobs along with the write: a status written anywhere else would skip them."""
    writers = status_writers(ROOT)
    assert set(writers) == {LIFECYCLE}, {name: lines for name, lines in writers.items() if name != LIFECYCLE}
