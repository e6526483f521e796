"""`openseer eval all`: every evaluation of a run and of its random-init floor, consistent with the single commands."""

import json

import pytest
import torch

from openseer.checkpoint import load_backbone
from openseer.cli import main

COMMON = ["--image-size", "16", "--crop-pct", "1.0", "--num-workers", "0"]


@pytest.fixture(scope="module")
def run(tiny_labelled_run_copy):
    return tiny_labelled_run_copy


def test_eval_all_writes_every_result_for_both_backbones(run, capsys):
    run_dir, train, test = run
    argv = ["eval", "all", "--checkpoint", str(run_dir), "--train", str(train), "--test", str(test), *COMMON]
    argv += ["--fractions", "0.1,0.5", "--seeds", "2", "--finetune", "0.5", "--finetune-epochs", "1"]
    assert main(argv) == 0
    out = run_dir / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["rows"]) == {"pretrained", "random"}
    assert summary["header"][:4] == ["kNN k=10", "kNN k=20", "kNN k=200", "linear"]
    assert len(summary["rows"]["random"]) == len(summary["header"]) == 9
    for name in ("pretrained", "random"):
        for kind in ("knn", "linear", "lowshot", "finetune"):
            assert (out / f"{name}_{kind}.json").is_file(), (name, kind)
        assert (out / f"{name}_lowshot.subsets.json").is_file()
    assert (out / "summary.md").read_text().startswith("| backbone | kNN k=10")
    assert "random init" in capsys.readouterr().out

    # the floor: the same architecture with other (freshly initialised) weights, evaluated the same way
    pretrained, _ = load_backbone(run_dir)
    random_init, random_config = load_backbone(out / "random_init")
    assert pretrained.state_dict().keys() == random_init.state_dict().keys()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(pretrained.state_dict().values(), random_init.state_dict().values(), strict=True)
    )
    assert random_config["aug"]["global_size"] == 24  # the run's config travels with it

    # the same numbers as the single command
    knn_out = run_dir / "knn_single.json"
    argv = ["eval", "knn", "--checkpoint", str(run_dir), "--train", str(train), "--test", str(test), *COMMON]
    assert main([*argv, "--k", "10,20,200", "--out", str(knn_out)]) == 0
    single = json.loads(knn_out.read_text())["top1"]
    assert json.loads((out / "pretrained_knn.json").read_text())["top1"] == single


def test_eval_all_without_baseline_and_with_a_bad_k(run, capsys, tmp_path):
    run_dir, train, test = run
    argv = ["eval", "all", "--checkpoint", str(run_dir), "--train", str(train), "--test", str(test), *COMMON]
    assert main([*argv, "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert main([*argv, "--no-baseline", "--seeds", "1", "--out-dir", str(tmp_path / "e")]) == 0
    assert set(json.loads((tmp_path / "e" / "summary.json").read_text())["rows"]) == {"pretrained"}
