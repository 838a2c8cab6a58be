"""Imports follow the pipeline: config -> model -> data -> train -> export -> infer -> eval ->
workflow -> cli. A module may import its own stage and earlier ones, never a later one
(function-local imports count too): a lower stage that needs something from a higher one
means the thing belongs lower."""

import ast
from pathlib import Path

import tunesmith

# errors and compat (library internals, one module per library) import nothing of tunesmith
ORDER = [
    "errors",
    "compat",
    "config",
    "model",
    "data",
    "train",
    "export",
    "infer",
    "eval",
    "workflow",
    "cli",
]
RANK = {name: i for i, name in enumerate(ORDER)} | {"envinfo": len(ORDER) - 1}
PACKAGE = Path(tunesmith.__file__).parent


def _stage(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tunesmith" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def later_stage_imports(root: Path = PACKAGE) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        source = path.relative_to(root).parts[0].removesuffix(".py")
        if source not in RANK:
            continue
        for line, name in _imports(path):
            target = _stage(name)
            if target in RANK and RANK[target] > RANK[source]:
                wrong.append(f"{path.relative_to(root)}:{line}: {source} imports {name}")
    return wrong


def test_every_stage_is_in_the_order():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert stages <= set(RANK), f"stages missing from the order: {stages - set(RANK)}"


def test_no_module_imports_a_later_stage():
    assert later_stage_imports() == []


def test_the_check_sees_a_later_stage_import(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "general.py").write_text("def f():\n    import tunesmith.eval.x\n")
    assert later_stage_imports(tmp_path) == ["data/general.py:2: data imports tunesmith.eval.x"]
