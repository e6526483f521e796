"""Does the fast tier (README's ``pytest -q``) still reach every module of the package?

Reads the JSON report of a coverage run of the fast tier and lists, per module of ``openseer/``, how many of its
functions ran and which share of its lines; exits 1 naming any module none of whose functions ran (importing a
module runs its ``def`` lines, so line coverage alone cannot tell). Needs ``coverage`` (the ``dev`` extra)::

    .venv/bin/python -m coverage run --source=openseer -m pytest -q -p no:cacheprovider
    .venv/bin/python -m coverage json -o fast-tier.json
    .venv/bin/python .ci/fast_tier_coverage.py fast-tier.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def module_rows(report: dict) -> list[tuple[str, int, int, float]]:
    """(module path, functions that ran, functions, % of lines) for each file of the report, by path."""
    rows = []
    for path, data in sorted(report["files"].items()):
        functions = {name: f for name, f in data.get("functions", {}).items() if name}  # "" = module level
        ran = sum(1 for f in functions.values() if f["summary"]["covered_lines"] > 0)
        module = path[path.rfind("openseer/") :]  # the package-relative path, wherever the checkout is
        rows.append((module, ran, len(functions), data["summary"]["percent_covered"]))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: fast_tier_coverage.py COVERAGE_JSON", file=sys.stderr)
        return 2
    rows = module_rows(json.loads(Path(argv[0]).read_text()))
    for path, ran, total, percent in rows:
        print(f"{path:40s} functions {ran:3d}/{total:<3d} lines {percent:5.1f}%")
    missing = [path for path, ran, total, _ in rows if total and not ran]
    print(f"{len(rows)} modules; {len(missing)} without a function run by the fast tier: {', '.join(missing) or '-'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
