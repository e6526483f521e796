"""Every test here carries the ``faults`` marker (``pytest -m faults`` runs the suite, ``-m 'not faults'`` skips it)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
