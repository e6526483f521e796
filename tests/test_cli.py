import json
import subprocess
import sys

import pytest
import timm
from safetensors.torch import load_file

from openseer.cli import main
from tests.helpers import TINY_OVERRIDES, write_images


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("openseer: error:")]
    assert len(err) == 1, err
    return err[0]


def test_pretrain_then_eval_knn_end_to_end(tmp_path, capsys):
    data = write_images(tmp_path / "unlabeled", 16)
    run = tmp_path / "run"
    assert main(["pretrain", "demo", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY_OVERRIDES]) == 0
    assert "completed: 2 steps" in capsys.readouterr().out
    labelled_train = write_images(tmp_path / "train", 20, classes=2, seed=1)
    labelled_test = write_images(tmp_path / "test", 10, classes=2, seed=2)
    out = tmp_path / "knn.json"
    assert (
        main(
            [
                "eval",
                "knn",
                "--checkpoint",
                str(run),
                "--train",
                str(labelled_train),
                "--test",
                str(labelled_test),
                "--k",
                "1,5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["top1"]) == {"1", "5"} and all(0 <= v <= 1 for v in result["top1"].values())
    assert "k" in capsys.readouterr().out
    # the exported backbone is a plain timm state dict
    timm.create_model("regnetx_002", num_classes=0).load_state_dict(load_file(run / "backbone.safetensors"))
    # eval also accepts a training checkpoint
    assert (
        main(
            [
                "eval",
                "knn",
                "--checkpoint",
                str(run / "checkpoints" / "last.pt"),
                "--train",
                str(labelled_train),
                "--test",
                str(labelled_test),
                "--k",
                "3",
            ]
        )
        == 0
    )


def test_max_steps_and_resume_by_rerunning(tmp_path, capsys):
    data = write_images(tmp_path / "imgs", 16)
    args = ["pretrain", "demo", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "3", *TINY_OVERRIDES]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert main([*args, "--max-steps", "3", "--no-resume"]) == 2
    assert "--no-resume" in _one_error_line(capsys)


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["pretrain", "--data", "{missing}", "--out", "{out}"], "does not exist"),
        (["pretrain", "--data", "{empty}", "--out", "{out}"], "no images found"),
        (["pretrain", "nosuchpreset", "--data", "{imgs}", "--out", "{out}"], "unknown preset 'nosuchpreset'"),
        (["pretrain", "demo", "train.bach_size=3", "--data", "{imgs}", "--out", "{out}"], "did you mean 'batch_size'"),
        (["pretrain", "demo", "train.batch_size=x", "--data", "{imgs}", "--out", "{out}"], "expected an integer"),
        (
            ["pretrain", "demo", "train.batch_size=64", "--data", "{imgs}", "--out", "{out}"],
            "fewer than one global batch",
        ),
        (["eval", "knn", "--checkpoint", "{out}", "--train", "{imgs}", "--test", "{imgs}"], "neither"),
        (["eval", "knn", "--checkpoint", "{out}", "--train", "{imgs}", "--test", "{imgs}", "--k", "a"], "--k"),
    ],
)
def test_bad_input_gives_one_clear_error_line(tmp_path, capsys, argv, fragment):
    paths = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "out": tmp_path / "out",
        "imgs": write_images(tmp_path / "imgs", 4),
    }
    paths["empty"].mkdir()
    paths["out"].mkdir()
    assert main([a.format(**paths) for a in argv]) == 2
    assert fragment in _one_error_line(capsys)


def test_presets_and_help(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "demo" in out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    for key in ("swav.num_prototypes", "train.batch_size", "aug.local_scale", "optim.trust_coefficient"):
        assert key in text


def test_python_dash_m_openseer_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "openseer", "presets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cifar10" in proc.stdout
