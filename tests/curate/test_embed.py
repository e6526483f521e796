"""Memory-mapped, resumable pool embeddings (openseer.curate.embed)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from openseer.checkpoint import load_backbone
from openseer.curate import embed as embed_module
from openseer.curate.embed import embed_source, embedding_key
from openseer.data import load_rgb, open_source
from openseer.eval.settings import EvalSettings


class Killed(Exception):
    pass


SETTINGS = EvalSettings(image_size=32, batch_size=8, num_workers=0, device="cpu")


def _embed(pool, model, folder, **kw):
    source = open_source(pool)
    backbone, config = load_backbone(model)
    run = SETTINGS.resolve(config)
    key = embedding_key(str(model), source, run, "pooled")
    return source, backbone, embed_source(source, backbone, run, folder, key, chunk=8, progress=False, **kw)


def test_rows_are_unit_features_digests_and_sizes(pool, tiny_model, tmp_path):
    source, backbone, emb = _embed(pool["pool"], tiny_model, tmp_path / "e", dtype="float32")
    broken = emb.names.index("c/broken.png")
    assert not emb.ok[broken] and emb.ok.sum() == len(source) - 1 and not emb.vectors[broken].any()
    i = emb.names.index("a/img005.png")
    data = source.read(i)
    assert bytes(emb.digests[i]) == hashlib.blake2b(data, digest_size=16).digest() and emb.sizes[i] == len(data)
    run = SETTINGS.resolve({})  # the default config: bf16 autocast, as extraction runs it
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=run.precision == "bf16"):
        ref = backbone.eval()(run.transform()(load_rgb(data))[None])[0].float().double()
    np.testing.assert_allclose(emb.vectors[i], (ref / ref.norm()).numpy(), atol=1e-5)
    assert (emb.folder / "files.txt").read_text().split() == emb.names


def test_interrupted_run_resumes_to_the_same_array(pool, tiny_model, tmp_path, monkeypatch):
    _, _, full = _embed(pool["pool"], tiny_model, tmp_path / "full")
    reference = np.array(full.vectors)
    real = embed_module.extract_features
    calls, crash = [], [True]

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and crash:
            raise Killed  # as if killed while computing the third chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_module, "extract_features", crash_on_third)
    with pytest.raises(Killed):
        _embed(pool["pool"], tiny_model, tmp_path / "part")
    done = np.load(tmp_path / "part" / "done.npy")
    assert done.tolist()[:2] == [1, 1] and done.sum() == 2
    calls.clear()
    crash.clear()
    _, _, resumed = _embed(pool["pool"], tiny_model, tmp_path / "part")
    assert len(calls) == len(done) - 2  # only the missing chunks were computed
    np.testing.assert_array_equal(np.array(resumed.vectors), reference)
    np.testing.assert_array_equal(np.array(resumed.ok), np.array(full.ok))


def test_another_key_starts_afresh(pool, tiny_model, tmp_path):
    _embed(pool["pool"], tiny_model, tmp_path / "e")
    (pool["pool"] / "a" / "img000.png").unlink()  # the listing changed: the old rows do not fit
    _, _, emb = _embed(pool["pool"], tiny_model, tmp_path / "e")
    assert "a/img000.png" not in emb.names and np.load(tmp_path / "e" / "done.npy").all()
