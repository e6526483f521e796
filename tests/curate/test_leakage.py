"""Evaluation-set leakage (openseer.curate.leakage): pairs, whole components, the eval-time shared-image check."""

from __future__ import annotations

import logging

import numpy as np
import yaml

from openseer.curate.leakage import leakage_pairs, leaking_components, pool_path, shared_images, warn_shared_images
from tests.curate.conftest import save, smooth_image


def _digests(n, start=0):
    return np.array([[i + start] * 16 for i in range(n)], dtype=np.uint8)


def test_pairs_above_threshold_and_identical_files():
    pool = np.eye(4, dtype=np.float32)
    evals = np.array([[0.8, 0.6, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    pool_digests = _digests(4)
    eval_digests = np.stack([_digests(1, 100)[0], pool_digests[2]])  # eval row 1 is byte-identical to pool 2
    pairs = leakage_pairs(pool, pool_digests, np.array([10, 11, 12, 13]), evals, eval_digests, 0.7, k=2)
    # cos(pool 0, eval 0) = 0.8 > 0.7; cos(pool 3, eval 1) = 1; pool 2 = eval 1 by bytes; 0.6 is below
    assert [(a, b) for a, b, _ in pairs] == [(10, 0), (12, 1), (13, 1)]
    assert [s for _, _, s in pairs] == [np.float32(0.8).item(), 1.0, 1.0]


def test_whole_components_are_removed():
    components = np.array([0, 0, 2, 3, 3, 3, 6])
    removed = leaking_components(components, np.array([4]))
    assert removed.tolist() == [False, False, False, True, True, True, False]


def test_shared_images_from_a_run_dir(tmp_path, pool, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"path": str(pool["pool"])}}))
    test = pool["test"]
    (test / "copy.png").write_bytes((pool["pool"] / "a" / "img007.png").read_bytes())
    assert pool_path(run) == str(pool["pool"])
    found = shared_images(run, [str(test)])
    assert found == {str(test): [("copy.png", "a/img007.png")]}
    other = save(smooth_image(500), tmp_path / "other" / "x.png").parent  # nothing shared
    with caplog.at_level(logging.WARNING, logger="openseer"):
        assert warn_shared_images(str(run), [str(test), str(other)]) == 1
    assert "1 image(s)" in caplog.text and "copy.png = a/img007.png" in caplog.text
