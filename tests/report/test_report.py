"""End to end on a tiny run: pretrain with the monitor, embed, every eval command, then the report."""

import json

import pytest

from openseer.cli import main
from openseer.report import eval_rows

pytest.importorskip("matplotlib")

COMMON = ["--image-size", "16", "--crop-pct", "1.0", "--num-workers", "0"]


@pytest.fixture(scope="module")
def run(tiny_labelled_run_copy):
    return tiny_labelled_run_copy  # monitored at steps 2 and 3


def test_monitor_rows_in_metrics(run):
    run_dir, _, _ = run
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    monitored = [r["step"] for r in rows if "monitor_knn_top1" in r]
    assert monitored == [2, 3] and all(0.0 <= r.get("monitor_knn_top1", 0) <= 1.0 for r in rows)


def test_eval_commands_and_report(run, capsys):
    run_dir, train, test = run
    ev = run_dir / "eval"
    frozen = ["--checkpoint", str(run_dir), "--train", str(train), "--test", str(test), *COMMON]
    assert main(["eval", "knn", *frozen, "--k", "1,5", "--out", str(ev / "knn.json")]) == 0
    cached = json.loads((ev / "knn.json").read_text())["features_cached"]
    assert main(["eval", "linear", *frozen, "--epochs", "3", "--out", str(ev / "linear.json")]) == 0
    assert json.loads((ev / "linear.json").read_text())["features_cached"] == [True, True] != cached
    lowshot = ["--fractions", "0.1,0.5", "--seeds", "2", "--epochs", "2", "--out", str(ev / "lowshot.json")]
    assert main(["eval", "lowshot", *frozen, *lowshot]) == 0
    assert (ev / "lowshot.subsets.json").is_file()
    ft = ["--fraction", "0.5", "--epochs", "1", "--batch-size", "4", "--out", str(ev / "finetune.json")]
    assert (
        main(
            [
                "eval",
                "finetune",
                "--checkpoint",
                str(run_dir),
                "--train",
                str(train),
                "--test",
                str(test),
                *COMMON,
                *ft,
            ]
        )
        == 0
    )
    assert json.loads((ev / "finetune.json").read_text())["num_train"] == len(list(train.rglob("*.png"))) // 2
    # features files from embed feed the same evaluations
    for split, data in (("train", train), ("test", test)):
        argv = [
            "embed",
            "--checkpoint",
            str(run_dir),
            "--data",
            str(data),
            "--out",
            str(run_dir / f"{split}.pt"),
        ]
        assert main([*argv, *COMMON]) == 0
    feats = ["--train-features", str(run_dir / "train.pt"), "--test-features", str(run_dir / "test.pt")]
    assert main(["eval", "knn", *feats, "--k", "3"]) == 0

    kinds = {row[1] for row in eval_rows(run_dir)}
    assert {"kNN", "linear", "low-shot 10% linear", "low-shot 50% kNN", "fine-tune 50%"} <= kinds
    assert main(["report", str(run_dir), "--max-images", "16", "--queries", "3", "--prototypes", "3"]) == 0
    report = run_dir / "report"
    for name in ("report.html", "curves.png", "neighbours.png", "prototypes.png"):
        assert (report / name).stat().st_size > 1000, name
    page = (report / "report.html").read_text()
    assert "low-shot 10% linear" in page and "prototypes.png" in page
    capsys.readouterr()
