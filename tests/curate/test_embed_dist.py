"""Pool embeddings split over 2 gloo processes equal the single-process ones (openseer.curate.embed)."""

from __future__ import annotations

import numpy as np
import pytest

from openseer.checkpoint import load_backbone
from openseer.curate.embed import embed_source, embedding_key
from openseer.data import open_source
from openseer.eval.settings import EvalSettings
from tests.dist.common import spawn

SETTINGS = EvalSettings(image_size=32, batch_size=8, num_workers=0, device="cpu")


def embed_rows(rank: int, world: int, pool: str, model: str, folder: str) -> list[int]:
    source = open_source(pool)
    backbone, config = load_backbone(model)
    run = SETTINGS.resolve(config)
    key = embedding_key(model, source, run, "pooled")
    emb = embed_source(source, backbone, run, folder, key, chunk=8, progress=False)
    return np.flatnonzero(emb.ok).tolist()


@pytest.mark.dist
def test_two_processes_write_the_single_process_rows(pool, tiny_model, tmp_path):
    two = spawn(embed_rows, 2, tmp_path, str(pool["pool"]), str(tiny_model), str(tmp_path / "two"))
    one = embed_rows(0, 1, str(pool["pool"]), str(tiny_model), str(tmp_path / "one"))
    assert two[0] == two[1] == one  # every process sees every row after the final barrier
    for name in ("vectors", "ok", "digests", "sizes", "done"):
        np.testing.assert_array_equal(
            np.load(tmp_path / "two" / f"{name}.npy"), np.load(tmp_path / "one" / f"{name}.npy")
        )
