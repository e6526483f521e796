"""The package's layers hold, every module imports on its own, and internal imports form no circle.

(1) ``lint-imports`` keeps the contracts in pyproject.toml ``[tool.importlinter]``: the layers of
docs/architecture.md, the method modules independent of each other, no method known by name outside the
registry; (2) the doc's layers table and the layers contract name the same layers in the same order; (3) each
module is imported first, in a fresh interpreter with no ``openseer`` module loaded; (4) the graph of internal
imports (read with ``ast``, both module-level and inside functions) has no cycle; (5) imports sit at the top of
modules: an import inside a function hides a circle until someone moves it ("partially initialized module").
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import openseer

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

PACKAGE = Path(openseer.__file__).parent
ROOT = PACKAGE.parent


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


def test_imports_sit_at_the_top_of_modules():
    _, lazy = import_graph()
    found = {m: sorted(targets) for m, targets in lazy.items() if targets}
    assert not found, f"move these imports to the top of their modules: {found}"


def test_no_circle_even_through_imports_inside_functions():
    top, lazy = import_graph()
    both = {m: top[m] | lazy[m] for m in MODULES}
    assert find_cycle(both) == []


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` between the package's top-level parts (``openseer.train.setup`` -> ``openseer.train``)."""
    top_level = {m: ".".join(m.split(".")[:2]) for m in graph}
    out: dict[str, set[str]] = {p: set() for p in top_level.values()}
    for module, targets in graph.items():
        out[top_level[module]] |= {top_level[t] for t in targets} - {top_level[module]}
    return out


def test_no_circle_between_the_top_level_packages():
    top, lazy = import_graph()
    packages = package_graph({m: top[m] | lazy[m] for m in MODULES})
    packages.pop("openseer")  # the root __init__ imports the public API
    assert find_cycle(packages) == []
    assert package_graph({"a.b.c": {"a.d.e"}, "a.d.e": set(), "a.b": {"a.b.c"}}) == {"a.b": {"a.d"}, "a.d": set()}


def test_import_linter_keeps_every_contract():
    """``lint-imports`` (import-linter's Python API, in a fresh interpreter at the repository root, no cache)."""
    script = (
        "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = done.stdout[done.stdout.find("Contracts") :] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "BROKEN" not in done.stdout and " KEPT" in done.stdout, report


def contract_layers() -> list[tuple[set[str], str]]:
    """The layers contract of pyproject.toml, top to bottom: (module names, "|" independent / ":" or "" not)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert contract["containers"] == ["openseer"] and contract.get("exhaustive") is True
    out = []
    for layer in contract["layers"]:
        delimiter = "|" if "|" in layer else ":" if ":" in layer else ""
        out.append(({part.strip().strip("()") for part in re.split(r"[|:]", layer)}, delimiter))
    return out


def doc_layers(text: str) -> list[tuple[set[str], str]]:
    """The "Layers" table of docs/architecture.md, top to bottom: (top-level modules named `openseer/x.py` or
    `openseer/x/` in its modules column, "|" if its last column says the parts are independent, ":" if not)."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| layer", "| -"))]
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        names = set(re.findall(r"`openseer/([a-z_]+)(?:/|\.py)`", cells[1]))
        out.append((names, {"no": "|", "yes": ":", "-": ""}[cells[-1]]))
    return out


def test_doc_layers_table_is_the_layers_contract():
    assert doc_layers((ROOT / "docs" / "architecture.md").read_text()) == contract_layers()


def test_doc_layers_parser_reads_modules_and_independence():
    text = (
        "## Layers\n\n| layer | modules | does | parts import each other |\n| --- | --- | --- | --- |\n"
        "| top | `openseer/cli/` (`cli/eval/`), `openseer/api.py` | x | no |\n"
        "| low | `openseer/config.py`, `openseer/configs/*.yaml` | y | - |\n\n## Next\n| a | b |\n"
    )
    assert doc_layers(text) == [({"cli", "api"}, "|"), ({"config"}, "")]
