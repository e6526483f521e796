"""No function of the package is longer than a reader can hold: at most ``MAX_LINES`` lines, from its first
decorator to its last line (docstring included), read with ``ast``. A longer one is split into named steps, as
the training loop's steps are (`openseer.train.step`); the message lists every offender, longest first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import openseer

PACKAGE = Path(openseer.__file__).parent
MAX_LINES = 80

#: Functions still allowed over the limit ("path/to/module.py:function" -> why). Shrink it; never grow it.
ALLOWED: dict[str, str] = {}


def function_lengths(root: Path) -> dict[str, int]:
    """``"relative/path.py:qualified.name"`` -> lines, for every function and method under ``root``."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, path: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                lengths[f"{path}:{prefix}{child.name}"] = child.end_lineno - first + 1
                visit(child, path, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, path, f"{prefix}{child.name}.")
            else:
                visit(child, path, prefix)

    for file in sorted(root.rglob("*.py")):
        visit(ast.parse(file.read_text(), filename=str(file)), file.relative_to(root).as_posix(), "")
    return lengths


def test_the_counter_measures_from_the_decorator_to_the_last_line(tmp_path):
    (tmp_path / "m.py").write_text(
        "import functools\n\n@functools.cache\ndef f():\n    '''doc'''\n    return 1\n\n"
        "class C:\n    def g(self):\n        def inner():\n            pass\n        return inner\n"
    )
    assert function_lengths(tmp_path) == {"m.py:f": 4, "m.py:C.g": 4, "m.py:C.g.inner": 2}


def test_no_function_is_over_the_limit():
    lengths = function_lengths(PACKAGE)
    long = sorted(((n, name) for name, n in lengths.items() if n > MAX_LINES and name not in ALLOWED), reverse=True)
    listing = "; ".join(f"{name} ({n} lines)" for n, name in long)
    assert not long, f"functions over {MAX_LINES} lines (split them into named steps): {listing}"
    stale = [name for name in ALLOWED if lengths.get(name, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from ALLOWED: {stale}"
