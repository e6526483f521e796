"""`openseer launch`: torchrun on this machine (2 gloo processes, for real) and the SLURM sbatch script."""

from __future__ import annotations

import json
import subprocess

import pytest

from openseer.cli import main
from tests.helpers import TINY_OVERRIDES, write_images


def test_sbatch_script_quotes_user_arguments_and_keeps_slurm_variables(tmp_path, capsys):
    out = tmp_path / "runs" / "s32"
    code = main(
        [
            "launch",
            "--slurm",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--partition",
            "gpu",
            "--time",
            "12:00:00",
            "pretrain",
            "seer-32gf",
            "--data",
            "/data/my images",
            "--out",
            str(out),
            "optim.base_lr=4.8",
        ]
    )
    assert code == 0
    script = (out / "launch.sbatch").read_text()
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=12:00:00",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --requeue",
    ):
        assert line in script.splitlines()
    assert "--nnodes=$SLURM_NNODES" in script and "--rdzv_endpoint=$HEAD:29500" in script
    assert "--nproc_per_node=8" in script
    assert f"pretrain seer-32gf --data '/data/my images' --out {out} optim.base_lr=4.8" in script
    assert subprocess.run(["bash", "-n", str(out / "launch.sbatch")]).returncode == 0  # valid shell
    assert "sbatch" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["launch", "--slurm", "eval", "knn"], "runs a pretrain command"),
        (["launch", "pretrain", "demo", "--data", "x"], "needs --out"),
    ],
)
def test_launch_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.dist
def test_local_launch_runs_two_gloo_processes_and_reports_what_every_process_skipped(tmp_path):
    from PIL import Image

    data = write_images(tmp_path / "imgs", 4)
    bad = {"a.jpg", "b.png", "c.jpg", "d.png"}
    for name in bad:  # half the images are unreadable: both processes meet some
        (data / name).write_bytes(b"not an image")
    Image.new("CMYK", (24, 24), (10, 200, 30, 0)).save(data / "cmyk.jpg")
    run = tmp_path / "run"
    code = main(
        [
            "launch",
            "--nproc-per-node",
            "2",
            "pretrain",
            "demo",
            "--data",
            str(data),
            "--out",
            str(run),
            "--max-steps",
            "2",
            *TINY_OVERRIDES,
            "train.batch_size=4",
        ]
    )
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["global_batch"] == 8  # 2 processes x 4
    assert set(summary["skipped"]) == bad and summary["skipped_by_reason"] == {"unreadable": 4}
    assert summary["conversions"]["cmyk"] >= 2  # drawn once per epoch (2 epochs of 9 images)
    assert (run / "backbone.safetensors").is_file()
