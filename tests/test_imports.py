"""Every module of the package imports on its own, and internal imports form no circle.

An import circle hides behind imports placed inside functions; it shows as soon as someone moves one to the
top of its module ("partially initialized module"). So: (1) each module is imported first, in a fresh
interpreter with no ``openseer`` module loaded; (2) the graph of internal imports (read with ``ast``, both
module-level and inside functions) has no cycle; (3) imports stay at the top of modules, except the ones
listed in ``LAZY`` below.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import openseer

PACKAGE = Path(openseer.__file__).parent
ROOT = PACKAGE.parent

#: Imports of openseer modules still made inside functions (module -> targets), with why. Shrink it; never grow
#: it: a new internal import goes at the top of its module.
LAZY: dict[str, set[str]] = {
    # the config <-> methods circle (config reads the method sections): the methods-registry work removes it
    "openseer.config": {"openseer.methods"},
    "openseer.methods.swav": {"openseer.config", "openseer.ops.schedules"},
    # the training loop (rewritten by the methods/loop work)
    "openseer.train": {"openseer.data.pipeline", "openseer.eval.monitor"},
    # checkpoint.py: dist for the sharded path, backbone to rebuild an exported backbone
    "openseer.checkpoint": {"openseer.dist", "openseer.models.backbone"},
    # the data.sources <-> data.lists circle (file lists of tars and folders)
    "openseer.data.sources": {"openseer.data", "openseer.data.lists", "openseer.data.shards"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The openseer modules an import statement loads (``from pkg import submodule`` counts the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return {n for n in names if n in MODULES and n != module}


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level imports, imports inside functions) between the package's modules."""
    top: dict[str, set[str]] = {m: set() for m in MODULES}
    lazy: dict[str, set[str]] = {m: set() for m in MODULES}

    def visit(node: ast.AST, module: str, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # never executed
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if inside else top)[module] |= _targets(child, module)
            visit(child, module, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    for module, path in MODULES.items():
        visit(ast.parse(path.read_text()), module, False)
    return top, lazy


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of modules (first == last), or [] when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return []


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_every_module_imports_alone_in_a_fresh_interpreter():
    """One interpreter; before each module every openseer module is dropped from sys.modules, so each import
    starts from nothing of the package (third-party modules such as torch stay loaded: that is only speed)."""
    script = "\n".join(
        [
            "import importlib, sys, traceback",
            f"names = {sorted(MODULES)!r}",
            "failed = []",
            "for name in names:",
            "    for loaded in [m for m in sys.modules if m == 'openseer' or m.startswith('openseer.')]:",
            "        del sys.modules[loaded]",
            "    try:",
            "        importlib.import_module(name)",
            "    except Exception:",
            "        failed.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])",
            "print('\\n'.join(failed))",
            "sys.exit(1 if failed else 0)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_module_level_imports_form_no_circle():
    top, _ = import_graph()
    assert find_cycle(top) == []


def test_imports_sit_at_the_top_of_modules_except_the_listed_ones():
    _, lazy = import_graph()
    found = {m: targets for m, targets in lazy.items() if targets}
    unlisted = {m: sorted(t - LAZY.get(m, set())) for m, t in found.items() if t - LAZY.get(m, set())}
    assert not unlisted, f"move these imports to the top of their modules: {unlisted}"


def test_no_circle_even_through_imports_inside_functions():
    """Fails while the circles named in ``LAZY`` remain (config <-> methods, data.sources <-> data.lists)."""
    top, lazy = import_graph()
    both = {m: top[m] | lazy[m] for m in MODULES}
    assert find_cycle(both) == []
