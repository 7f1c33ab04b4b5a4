"""The code keeps its shape: the linter, as configured in pyproject.toml
([tool.ruff]), finds nothing in the code and tests, and the client package
``bundle`` imports the login node's package ``login_node`` only where the two
sides meet."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The roles' Python files run on login nodes; the examples are what users copy.
CHECKED = ("bundle", "login_node", "tests", "bench", "examples", "ansible")

# The client modules that may import login_node: the embedded local endpoint
# runs the login node's tasks in-process, and the wire turns a task's name into
# the login node's function. Everything else in bundle/ must run on a laptop
# that has no login node code to speak of.
MAY_IMPORT_LOGIN_NODE = {
    "bundle/transport/local.py",
    "bundle/transport/wire.py",
}


def test_ruff_finds_nothing() -> None:
    # --config names the project's settings, so a ruff.toml elsewhere cannot stand in for them;
    # ruff reads the paths in them (per-file-ignores) from the working directory, the repository
    argv = [
        sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
        "--output-format", "concise", *CHECKED,
    ]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert "No module named ruff" not in proc.stderr, "ruff is part of the test extra: pip install -e '.[test]'"
    assert proc.returncode == 0, f"ruff check {' '.join(CHECKED)} found:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}"


def _login_node_imports(source: str) -> list[tuple[int, str]]:
    """(line, statement) for each import of login_node in ``source``, at the
    top or inside a function, and for each ``import_module``/``__import__`` of
    it by a literal name; in line order."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        if any(name == "login_node" or name.startswith("login_node.") for name in names):
            found.append((node.lineno, node.col_offset, ast.get_source_segment(source, node) or ""))
    return [(line, statement) for line, _, statement in sorted(found)]


def test_only_the_meeting_points_of_bundle_import_login_node() -> None:
    modules = sorted((REPO / "bundle").rglob("*.py"))
    assert modules, "no modules found under bundle/"
    assert all((REPO / rel).is_file() for rel in MAY_IMPORT_LOGIN_NODE), "a module named in MAY_IMPORT_LOGIN_NODE moved"
    found = []
    for path in modules:
        rel = path.relative_to(REPO).as_posix()
        if rel in MAY_IMPORT_LOGIN_NODE:
            continue
        for line, statement in _login_node_imports(path.read_text(encoding="utf-8")):
            found.append(f"{rel}:{line}: {statement}")
    assert found == [], (
        "bundle/ imports login_node outside " + ", ".join(sorted(MAY_IMPORT_LOGIN_NODE))
        + " (what the login node computes reaches the client through a task's reply):\n" + "\n".join(found)
    )


def test_the_import_check_sees_every_form_of_import() -> None:
    """The check above finds what it looks for: plain, from-, function-local and by-name imports."""
    source = (
        "import json\n"
        "import login_node\n"
        "from login_node.rundir import Home\n"
        "from login_nodes import other\n"
        "from .login_node import relative\n"
        "\n"
        "def later():\n"
        "    import login_node.tasks as t\n"
        "    return __import__('login_node.driver'), importlib.import_module('login_node.state')\n"
    )
    assert _login_node_imports(source) == [
        (2, "import login_node"),
        (3, "from login_node.rundir import Home"),
        (8, "import login_node.tasks as t"),
        (9, "__import__('login_node.driver')"),
        (9, "importlib.import_module('login_node.state')"),
    ]
