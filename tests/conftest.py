"""Test tiers, and the fixtures that let many fast tests share one tiny run.

``pytest -q`` (README's command) runs the **fast tier**: pyproject's ``addopts`` deselects the three markers
below; it is meant to take at most ~5 minutes on a 2-core machine. ``.ci/run`` runs the other tiers after it, each as
its own pytest call; ``pytest -m ""`` runs everything at once.

Which marker a new test needs (an explicit ``-m`` on the command line replaces the default selection):

* ``dist``   - it spawns processes: gloo process groups (``tests.dist.common.spawn``), torchrun, ``openseer
  launch``. Every test under ``tests/dist/`` gets it here, and so does any test whose body calls ``spawn``.
* ``faults`` - it injects faults (kill -9, full disks, corrupt files, fuzzing). Every test under
  ``tests/faults/`` gets it here.
* ``slow``   - it trains for more than ~10 s, reads CIFAR-10, or builds a 224-px preset.
* none       - everything else, and it must be fast: 16-32 px images, 2-3 steps, tiny backbones (``regnetx_002``,
  the 36k-parameter RegNetY of ``tests/methods/test_two_view_training.py``), small heads. A test that only reads
  the outputs of a tiny pretraining run takes the session-scoped ``tiny_labelled_run`` fixture below (or
  ``tiny_labelled_run_copy`` when it writes beside the run) instead of training its own.

Every module of the package keeps at least one fast test: a capability that is only checked at full size in a
slow test also gets a small version in the fast tier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_run_with_labels

TESTS = Path(__file__).resolve().parent
#: every test below these folders carries the marker
FOLDER_MARKERS = {TESTS / "dist": "dist", TESTS / "faults": "faults"}


def _calls_spawn(item: pytest.Item) -> bool:
    code = getattr(getattr(item, "function", None), "__code__", None)
    return code is not None and "spawn" in code.co_names


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give folder-wide markers, and ``dist`` to any test that calls ``spawn`` (so none slips into the fast tier)."""
    for item in items:
        path = Path(str(item.path)).resolve()
        for folder, marker in FOLDER_MARKERS.items():
            if folder in path.parents:
                item.add_marker(marker)
        if _calls_spawn(item):
            item.add_marker("dist")


@pytest.fixture(scope="session")
def tiny_labelled_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One tiny ``demo`` run (3 steps, online kNN monitor at steps 2 and 3) and a 3-class labelled train (30
    images) / test (9) pair: ``(run_dir, train, test)``, shared by the tests that only evaluate or report a run.
    Don't write into it: take ``tiny_labelled_run_copy``."""
    root = tmp_path_factory.mktemp("tiny_labelled_run")
    monitor = ["--monitor-train", str(root / "train"), "--monitor-test", str(root / "test"), "--monitor-every", "2"]
    return tiny_run_with_labels(root, *monitor, train_images=30)


@pytest.fixture(scope="module")
def tiny_labelled_run_copy(tiny_labelled_run, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A copy of ``tiny_labelled_run``'s run directory per test module (its outputs land beside the run)."""
    run_dir, train, test = tiny_labelled_run
    copy = shutil.copytree(run_dir, tmp_path_factory.mktemp("run_copy") / "run")
    return copy, train, test
