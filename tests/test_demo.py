import json

from openseer.cli import main


def test_demo_runs_end_to_end_and_writes_its_json(tmp_path, capsys):
    """The embedded default, shortened (the full demo's figures are in BENCHMARKS.md)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-steps", "8"]) == 0
    result = json.loads((out / "demo.json").read_text())
    for key in ("knn_top1_pretrained", "knn_top1_random"):
        assert 0.0 <= result[key] <= 1.0
    assert result["pretrain_steps"] == 8
    assert (
        len(list((out / "data" / "train").glob("*/*.png"))) + len(list((out / "data" / "test").glob("*/*.png"))) == 1797
    )
    assert "random init" in capsys.readouterr().out
