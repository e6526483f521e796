"""``openseer curate`` end to end on ~50 tiny images, the Python API, and one-line errors for bad input."""

from __future__ import annotations

import json
import tarfile

import pytest

import openseer
from openseer import api
from openseer.cli import main
from openseer.curate import CurateOptions
from openseer.data import open_source, write_shards
from openseer.data.tars import TarIndex, split_entry
from openseer.errors import ConfigError
from tests.curate.conftest import save, smooth_image
from tests.helpers import TINY_OVERRIDES

# measured on the fixture's random model: near copies >= 0.988, distinct pictures <= 0.97 (conftest.tiny_model)
THRESHOLDS = ["--dedup-threshold", "0.985", "--leakage-threshold", "0.98"]
COMMON = ["--image-size", "32", "--batch-size", "16", "--num-workers", "0", "--device", "cpu", "--no-progress"]


def test_curate_end_to_end(pool, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["curate", "--data", str(pool["pool"]), "--model", str(tiny_model), "--out", str(out)]
    argv += ["--eval-sets", str(pool["test"]), "--target", "20", *THRESHOLDS, *COMMON]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    # 52 files: 1 undecodable; 4 byte-identical copies; 4 near copies; 3 copies of evaluation images
    assert counts["pool"] == 52 and counts["undecodable"] == 1 and counts["decoded"] == 51
    assert counts["after_exact_dedup"] == 47 and counts["after_near_dedup"] == 43
    assert counts["removed_for_leakage"] == 3 and counts["after_leakage"] == 40 and counts["curated"] == 20
    assert sorted((p["pool"], p["eval"]) for p in summary["leakage_pairs"]) == [
        (f"c/leak{i}.png", f"t{i}.png") for i in range(3)
    ]
    curated = open_source(out / "curated.txt")  # pretrain --data reads it as it is
    names = [curated.name(i) for i in range(len(curated))]
    assert len(names) == 20 and len(set(names)) == 20
    assert not any("leak" in n or "broken" in n for n in names)
    clusters = summary["clusters"]
    assert sum(clusters["top_level_sizes_before"]) == 40 and sum(clusters["top_level_sizes_after"]) == 20
    assert (
        max(clusters["top_level_sizes_after"]) - min(clusters["top_level_sizes_after"]) <= 1
        or min(clusters["top_level_sizes_before"]) < 10
    )
    html = (out / "report.html").read_text()
    assert "leak0.png" in html and "duplicates.png" in html and (out / "duplicates.png").is_file()
    assert "curated 20" in capsys.readouterr().out

    # no sampling: every deduplicated, leakage-free image, from the embeddings already written
    mtime = (out / "embeddings" / "pool" / "vectors.npy").stat().st_mtime_ns
    summary = openseer.curate(
        pool["pool"], tiny_model, out, eval_sets=[str(pool["test"])], image_size=32, device="cpu", num_workers=0,
        dedup_threshold=0.985, leakage_threshold=0.98, progress=False, report_images=0,
    )  # fmt: skip
    assert summary["counts"]["curated"] == 40 and len((out / "curated.txt").read_text().split()) == 40
    assert (out / "embeddings" / "pool" / "vectors.npy").stat().st_mtime_ns == mtime  # reused, not recomputed

    # a target above the deduplicated pool: one line
    capsys.readouterr()
    assert main([*argv[: -len(COMMON) - len(THRESHOLDS) - 2], "--target", "41", *THRESHOLDS, *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--target 41 is larger than the 40 images left" in err


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("openseer: error:")
    return err


def test_bad_input_is_one_line(pool, tiny_model, tmp_path, capsys):
    base = ["curate", "--out", str(tmp_path / "o"), *COMMON]
    (tmp_path / "empty").mkdir()
    empty = _error([*base, "--data", str(tmp_path / "empty"), "--model", str(tiny_model)], capsys)
    assert "pool" in empty and str(tmp_path / "empty") in empty
    missing = _error([*base, "--data", str(pool["pool"]), "--model", str(tmp_path / "nope.safetensors")], capsys)
    assert "nope.safetensors" in missing
    bad_file = tmp_path / "bad.pth"
    bad_file.write_bytes(b"garbage")
    assert "bad.pth" in _error([*base, "--data", str(pool["pool"]), "--model", str(bad_file)], capsys)
    no_eval = _error(
        [*base, "--data", str(pool["pool"]), "--model", str(tiny_model), "--eval-sets", str(tmp_path / "empty")],
        capsys,
    )
    assert "evaluation set" in no_eval
    strategy = _error([*base, "--data", str(pool["pool"]), "--model", str(tiny_model), "--strategy", "best"], capsys)
    assert "random or closest" in strategy
    assert "--levels" in _error([*base, "--data", "x", "--model", "y", "--levels", "10,a"], capsys)
    assert not (tmp_path / "o" / "curated.txt").exists()


def test_tar_pool_curates_to_a_list_that_pretrain_reads(pool, tiny_model, tmp_path, monkeypatch):
    archive = tmp_path / "pool.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(pool["pool"], arcname="pool")
    out = tmp_path / "cur"
    argv = ["curate", "--data", str(archive), "--model", str(tiny_model), "--out", str(out), "--target", "16"]
    assert main([*argv, "--eval-sets", str(pool["test"]), *THRESHOLDS, *COMMON]) == 0
    lines = (out / "curated.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 16 and not (out / "curated-members.txt").exists()
    assert all(line.startswith(f"{archive}::pool/") and split_entry(line)[0] == str(archive) for line in lines)
    assert not any("leak" in line or "broken" in line or "exact" in line for line in lines)
    read, original = [], TarIndex.read
    monkeypatch.setattr(TarIndex, "read", lambda self, m: read.append(f"{self.path}::{m}") or original(self, m))
    run = tmp_path / "run"
    argv = ["pretrain", "demo", *TINY_OVERRIDES, "--data", str(out / "curated.txt"), "--out", str(run)]
    assert main([*argv, "--max-steps", "2"]) == 0
    assert sorted(set(read)) == sorted(lines)  # an epoch of 2 batches of 8: every curated image, nothing else
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and not summary["skipped_by_reason"]


def test_tar_pool_without_a_tar_suffix_is_refused_before_embedding(pool, tmp_path, capsys):
    archive = tmp_path / "pool.bin"
    with tarfile.open(archive, "w") as tar:
        tar.add(pool["pool"], arcname="pool")
    argv = ["curate", "--data", str(archive), "--model", str(tmp_path / "never-loaded"), "--out", str(tmp_path / "o")]
    err = _error([*argv, *COMMON], capsys)
    assert "pool.bin" in err and "rename the archive" in err and not (tmp_path / "o").exists()


def test_shard_pool_curates_to_shard_members(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    for i in range(6):
        save(smooth_image(i), folder / f"{i}.png")
    (folder / "6.png").write_bytes((folder / "0.png").read_bytes())  # an exact copy: curated away
    write_shards(folder, tmp_path / "shards", max_count=3, progress=False)
    out = tmp_path / "cur"
    summary = openseer.curate(
        str(tmp_path / "shards/*.tar"), tiny_model, out, image_size=32, device="cpu", num_workers=0,
        dedup_threshold=0.985, progress=False, report_images=0,
    )  # fmt: skip
    lines = (out / "curated.txt").read_text().splitlines()
    assert summary["counts"]["curated"] == len(lines) == 6
    shards = {str(tmp_path / f"shards/shard-00000{k}.tar") for k in range(2)}  # shard 2 holds only the copy
    assert {split_entry(line)[0] for line in lines} == shards
    curated = open_source(out / "curated.txt")
    assert {curated.read(i) for i in range(6)} == {(folder / f"{i}.png").read_bytes() for i in range(6)}


def test_api_options_are_checked():
    assert openseer.curate is api.curate
    with pytest.raises(ConfigError, match="unknown option.*tagret.*valid: target"):
        CurateOptions.from_kwargs(tagret=5)
    with pytest.raises(ConfigError, match="cosines in"):
        CurateOptions(dedup_threshold=1.5).validate()


def test_eval_check_leakage_warns(pool, tiny_model, tmp_path, caplog):
    from tests.helpers import write_images

    labelled = write_images(tmp_path / "lab", 12, size=24, classes=2)
    copy = labelled / "class0" / "0000.png"
    (pool["pool"] / "a" / "dup_of_eval.png").write_bytes(copy.read_bytes())
    argv = ["eval", "knn", "--checkpoint", str(tiny_model), "--train", str(labelled), "--test", str(labelled)]
    argv += ["--k", "3", "--image-size", "32", "--device", "cpu", "--num-workers", "0"]
    with caplog.at_level("WARNING", logger="openseer"):
        assert main([*argv, "--check-leakage", str(pool["pool"])]) == 0
    assert "leakage: 1 image(s)" in caplog.text and "class0/0000.png = a/dup_of_eval.png" in caplog.text
