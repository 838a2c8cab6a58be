"""Library internals are touched only in tunesmith/compat (issue 16's rule, kept by a test).

Outside compat/, nothing imports a private name or module of transformers, peft, accelerate or
liger-kernel, nor one of the internal modules compat/ wraps, and no attribute with a leading
underscore is read or written unless tunesmith itself defines that name.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import tunesmith

LIBRARIES = ("transformers", "peft", "accelerate", "liger_kernel")
# public APIs of the standard library that start with an underscore (os._exit, namedtuple's)
STDLIB_PUBLIC = {"_exit", "_asdict", "_replace", "_fields", "_make"}
SRC = Path(tunesmith.__file__).parent
COMPAT = SRC / "compat"


def _trees(files) -> dict[Path, ast.Module]:
    return {f: ast.parse(f.read_text(), str(f)) for f in files}


def _library_imports(tree: ast.Module):
    """(line, module, imported name or None) of each import from one of LIBRARIES."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                for alias in node.names:
                    yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    yield node.lineno, alias.name, None


def _exported(package: str, name: str) -> bool:
    """`name` is public API: the library's top-level package exports it."""
    try:
        return hasattr(importlib.import_module(package), name)
    except ImportError:  # liger-kernel without triton: count its names as internal
        return False


def _outside_compat() -> dict[Path, ast.Module]:
    return _trees(f for f in SRC.rglob("*.py") if COMPAT not in f.parents)


def test_no_private_or_compat_wrapped_library_import_outside_compat():
    # what compat/ takes from the libraries, dotted: `from M import N` -> M.N unless the library
    # exports N at its top level (public: others may import it too; M's other names may be
    # public as well); `import M.sub` -> M.sub, a module only compat/ imports
    wrapped = set()
    for tree in _trees(COMPAT.glob("*.py")).values():
        for _, module, name in _library_imports(tree):
            if name is None:
                wrapped.add(module)
            elif not _exported(module.split(".")[0], name):
                wrapped.add(f"{module}.{name}")
    wrapped -= set(LIBRARIES)
    found = []
    for path, tree in _outside_compat().items():
        for line, module, name in _library_imports(tree):
            private = any(part.startswith("_") for part in module.split(".")) or (
                name is not None and name.startswith("_")
            )
            dotted = module if name is None else f"{module}.{name}"
            inside_wrapped = any(dotted == w or dotted.startswith(w + ".") for w in wrapped)
            if private or inside_wrapped:
                found.append(f"{path.relative_to(SRC)}:{line}: {module} import {name}")
    assert not found, "library internals outside tunesmith/compat: " + "; ".join(found)


def test_no_foreign_underscore_attribute_outside_compat():
    """`obj._name` is allowed only where tunesmith defines `_name` itself."""
    everything = _trees(SRC.rglob("*.py"))
    own = set()
    for tree in everything.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
            elif isinstance(node, ast.alias):
                own.add(node.asname or node.name.split(".")[-1])
    found = []
    for path, tree in _outside_compat().items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") or node.attr in own | STDLIB_PUBLIC:
                continue
            found.append(f"{path.relative_to(SRC)}:{node.lineno}: .{node.attr}")
    assert not found, "another library's private attribute outside tunesmith/compat: " + (
        "; ".join(found)
    )
