"""What a Python module imports, read from its source without running it.

One scanner serves three readers: the selection (which local modules a
workflow brings along), the laptop's preflight (a local import that resolves
to nothing in the bundle) and the login node's preflight (third-party modules
the driver's environment must have). Each import is reported with the file
and line that makes it, so an error can point at it.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass

#: Exception names whose ``try`` makes an import optional (``except ImportError: fast = None``).
_OPTIONAL_HANDLERS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


@dataclass(frozen=True)
class ImportRef:
    """One imported module: ``import a.b`` gives module ``a.b``; ``from a import x`` gives
    module ``a`` with names ``("x",)`` (each may be a submodule or an attribute)."""

    module: str
    names: tuple[str, ...]
    file: str
    line: int
    #: Executed when the module is imported (not inside a function or class body).
    module_level: bool
    #: Inside ``try: ... except ImportError`` or ``if TYPE_CHECKING:``: allowed to fail.
    optional: bool

    @property
    def top(self) -> str:
        return self.module.split(".", 1)[0]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_json(self) -> dict[str, object]:
        return {"module": self.module, "names": list(self.names), "where": self.where}


def parse(source: str | bytes, filename: str) -> ast.Module | None:
    """The module's AST, or None when it is not valid Python (Python says so where it runs)."""
    try:
        return ast.parse(source, filename=filename)
    except (SyntaxError, ValueError):
        return None


def package_of(rel: str) -> list[str]:
    """The package a module at bundle path ``rel`` belongs to (for relative imports)."""
    parts = rel[:-3].split("/") if rel.endswith(".py") else rel.split("/")
    return parts[:-1]


def scan(tree: ast.Module, rel: str) -> list[ImportRef]:
    """Every import in ``tree``, relative ones made absolute against the module's package."""
    package = package_of(rel)
    found: list[ImportRef] = []

    def visit(node: ast.AST, module_level: bool, optional: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(ImportRef(alias.name, (), rel, node.lineno, module_level, optional))
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    return  # beyond the top: Python says so where it runs
                base = package[: len(package) - (node.level - 1)]
            else:
                base = []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if module:
                names = tuple(a.name for a in node.names if a.name != "*")
                found.append(ImportRef(module, names, rel, node.lineno, module_level, optional))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            for child in ast.iter_child_nodes(node):
                visit(child, False, optional)
            return
        if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            guarded = any(_handles_import_error(h) for h in node.handlers)  # type: ignore[attr-defined]
            for child in node.body:  # type: ignore[attr-defined]
                visit(child, module_level, optional or guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:  # type: ignore[attr-defined]
                visit(child, module_level, optional)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, module_level, True)
            for child in node.orelse:
                visit(child, module_level, optional)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, module_level, optional)

    for stmt in tree.body:
        visit(stmt, True, False)
    return found


def _handles_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in _OPTIONAL_HANDLERS for t in types)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def is_stdlib(top: str) -> bool:
    """A module of Python's standard library (or built into the interpreter)."""
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__future__"


def defined_names(tree: ast.Module) -> set[str] | None:
    """Names a module defines at its top level, or None when they cannot be known
    from its source (``import *``, a module ``__getattr__``, assignments to ``globals()``)."""
    names: set[str] = set()

    def add_target(t: ast.AST) -> None:
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                add_target(e)
        elif isinstance(t, ast.Starred):
            add_target(t.value)

    def visit(body: list[ast.stmt]) -> bool:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name == "__getattr__":
                    return False
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    add_target(t)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                add_target(node.target)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    names.add(a.asname or a.name.split(".", 1)[0])
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name == "*":
                        return False
                    names.add(a.asname or a.name)
            elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)) or type(node).__name__ == "TryStar":
                for field in ("body", "orelse", "finalbody"):
                    if not visit(getattr(node, field, []) or []):
                        return False
                for h in getattr(node, "handlers", []) or []:
                    if h.name:
                        names.add(h.name)
                    if not visit(h.body):
                        return False
                if isinstance(node, (ast.For,)):
                    add_target(node.target)
                if isinstance(node, ast.With):
                    for item in node.items:
                        if item.optional_vars is not None:
                            add_target(item.optional_vars)
            elif isinstance(node, ast.Expr) and "globals" in ast.dump(node):
                return False
        return True

    if not visit(tree.body):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.NamedExpr):
            add_target(node.target)
        elif isinstance(node, ast.Global):
            names.update(node.names)
    return names


class ModuleIndex:
    """A bundle's files seen as Python modules: which top-level names are local, and
    which file an import of a dotted name executes."""

    def __init__(self, files: frozenset[str] | set[str]) -> None:
        self.files = frozenset(files)
        dirs: set[str] = set()
        for f in self.files:
            parts = f.split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        self.dirs = dirs

    def is_local(self, top: str) -> bool:
        """Is ``top`` a module or package of the bundle (not an installed one)? A directory
        counts only when it holds Python files (a data folder named like a package does not)."""
        if f"{top}.py" in self.files or f"{top}/__init__.py" in self.files:
            return True
        return top in self.dirs and any(f.startswith(f"{top}/") and f.endswith(".py") for f in self.files)

    def resolve(self, dotted: str) -> tuple[str | None, str | None]:
        """(the bundle file an import of ``dotted`` executes last, None for a namespace
        package; a text saying why it does not resolve, else None)."""
        parts = dotted.split(".")
        last: str | None = None
        for i in range(1, len(parts) + 1):
            base = "/".join(parts[:i])
            if f"{base}/__init__.py" in self.files:
                last = f"{base}/__init__.py"
            elif f"{base}.py" in self.files:
                if i < len(parts):
                    return None, f"{base}.py is a module, not a package, so it has no {'.'.join(parts[i:])}"
                last = f"{base}.py"
            elif base in self.dirs:
                last = None
            else:
                return None, f"the bundle has no {base}.py or {base}/"
        return last, None
