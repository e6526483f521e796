"""One spawn of 2 gloo processes serves every 2-process check of tests/dist (process start-up dominates)."""

from __future__ import annotations

import pytest

from tests.dist.common import spawn


def _all_checks(rank: int, world: int) -> dict:
    from tests.dist.test_collectives import on_each_rank
    from tests.dist.test_data_parallel import run_variants

    return {"collectives": on_each_rank(rank, world), "variants": run_variants(rank, world)}


@pytest.fixture(scope="session")
def two_process_results(tmp_path_factory):
    return spawn(_all_checks, 2, tmp_path_factory.mktemp("dist"))
