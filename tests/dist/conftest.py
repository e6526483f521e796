"""One spawn of 2 gloo processes serves every 2-process check of tests/dist (process start-up dominates)."""

from __future__ import annotations

import pytest

from tests.dist.common import spawn


def _all_checks(rank: int, world: int, shard_dir: str) -> dict:
    from tests.dist.test_collectives import on_each_rank
    from tests.dist.test_data_parallel import run_variants
    from tests.dist.test_stream import stream_ids

    return {
        "collectives": on_each_rank(rank, world),
        "variants": run_variants(rank, world),
        "stream": stream_ids(rank, world, shard_dir),
    }


@pytest.fixture(scope="session")
def two_process_results(tmp_path_factory):
    from tests.dist.test_stream import SHARD_COUNTS
    from tests.data.test_stream import shard_set

    root = tmp_path_factory.mktemp("dist")
    shard_set(root / "shards", SHARD_COUNTS)
    return spawn(_all_checks, 2, root, str(root / "shards"))
