"""Learning checks: SwAV and DINO must leave their trivial starts and beat random-init features on real images."""

import json
import math
import os
from pathlib import Path

import pytest

from openseer.config import load_config
from openseer.data import open_source, subset
from openseer.eval.pipeline import knn_from_checkpoint, random_init_backbone
from openseer.train import pretrain
from tests.helpers import TINY_OVERRIDES, write_images


def _cifar_dir() -> Path:
    """$OPENSEER_CIFAR10, else ../shared/data/cifar10 beside the checkout, else the workplace's /work/shared."""
    candidates = [
        os.environ.get("OPENSEER_CIFAR10", ""),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10",
        "/work/shared/data/cifar10",
    ]
    for c in candidates:
        if c and (Path(c) / "cifar10-train.tar").is_file():
            return Path(c)
    return Path(candidates[1])


CIFAR = _cifar_dir()


@pytest.mark.slow  # 75 steps: a learning check, ~30 s on 2 cores
def test_loss_falls_clearly_below_uniform_on_structured_images(tmp_path):
    """Images whose class shows in every crop (a dominant colour): codes become predictable quickly."""
    data = write_images(tmp_path / "imgs", 96, classes=6)
    cfg = load_config(
        "demo",
        [
            *TINY_OVERRIDES,
            f"data.path={data}",
            "train.batch_size=32",
            "train.epochs=25",
            "swav.num_prototypes=12",
            "swav.freeze_prototypes_steps=5",
            "aug.color_jitter=0.2",
            "aug.grayscale_prob=0",
        ],
    )
    summary = pretrain(cfg, tmp_path / "run")
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ln_k = math.log(12)
    assert summary["uniform_loss"] == pytest.approx(ln_k)
    assert sum(losses[-10:]) / 10 < 0.85 * ln_k, (losses[:5], losses[-5:])


def _write_subset(tar: Path, out: Path, per_class: int) -> Path:
    src = open_source(str(tar), labelled=True)
    chosen = [i for c in range(len(src.classes)) for i in [j for j in range(len(src)) if src.label(j) == c][:per_class]]
    view = subset(src, chosen)
    for i in range(len(view)):
        p = out / view.name(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(view.read(i))
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    not (CIFAR / "cifar10-train.tar").is_file(),
    reason=f"CIFAR-10 tars not found in {CIFAR} (see its README); this check needs real images",
)
def test_short_pretraining_beats_random_init_on_cifar10(tmp_path):
    train = _write_subset(CIFAR / "cifar10-train.tar", tmp_path / "train", 250)  # 2,500 images
    test = _write_subset(CIFAR / "cifar10-test.tar", tmp_path / "test", 100)  # 1,000 images
    cfg = load_config(
        "cifar10", [f"data.path={train}", "train.batch_size=64", "train.max_steps=300", "data.num_workers=0"]
    )
    summary = pretrain(cfg, tmp_path / "run")
    assert summary["final_loss_mean"] < 0.85 * summary["uniform_loss"]  # left the uniform-code start
    trained = max(knn_from_checkpoint(str(tmp_path / "run"), str(train), str(test), ks=(20,))["top1"].values())
    floor = random_init_backbone(tmp_path / "run", tmp_path / "eval")  # seeded with cfg.train.seed
    random = max(knn_from_checkpoint(floor, str(train), str(test), ks=(20,))["top1"].values())
    print(f"CIFAR-10 kNN top-1 (k=20): pretrained {trained:.3f}, random init {random:.3f}")
    # measured here: 0.235 vs 0.187 (same subset, seed and steps)
    assert trained > random + 0.03


@pytest.mark.slow
@pytest.mark.skipif(
    not (CIFAR / "cifar10-train.tar").is_file(),
    reason=f"CIFAR-10 tars not found in {CIFAR} (see its README); this check needs real images",
)
def test_short_dino_pretraining_leaves_collapse_and_beats_random_init_on_cifar10(tmp_path):
    """DINO (dino-cifar10-regnet) on 2,500 CIFAR-10 images: the teacher's outputs stay between DINO's two
    collapses (uniform: entropy ln K; one-hot: entropy 0, with KL(teacher || student) -> 0 for both), and the
    exported teacher beats random-init features on kNN."""
    train = _write_subset(CIFAR / "cifar10-train.tar", tmp_path / "train", 250)  # 2,500 images
    test = _write_subset(CIFAR / "cifar10-test.tar", tmp_path / "test", 100)  # 1,000 images
    cfg = load_config(
        "dino-cifar10-regnet",
        [f"data.path={train}", "train.batch_size=64", "train.max_steps=300", "data.num_workers=0"],
    )
    summary = pretrain(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ln_k = math.log(cfg.dino.out_dim)
    assert summary["uniform_loss"] == pytest.approx(ln_k)
    entropy = sum(r["teacher_entropy"] for r in rows[-5:]) / 5
    kl = sum(r["kl"] for r in rows[-5:]) / 5
    print(f"DINO last rows: teacher entropy {entropy:.3f} (ln K = {ln_k:.3f}), KL {kl:.3f}")
    assert 0.05 * ln_k < entropy < 0.9 * ln_k and kl > 0.05, (entropy, kl)
    trained = max(knn_from_checkpoint(str(tmp_path / "run"), str(train), str(test), ks=(20,))["top1"].values())
    floor = random_init_backbone(tmp_path / "run", tmp_path / "eval")  # seeded with cfg.train.seed
    random = max(knn_from_checkpoint(floor, str(train), str(test), ks=(20,))["top1"].values())
    print(f"CIFAR-10 kNN top-1 (k=20), DINO: pretrained {trained:.3f}, random init {random:.3f}")
    # measured here: 0.202 vs 0.187 (DINO leaves the floor slowly: on all 50,000 images for 2 epochs it reaches
    # 0.254 vs 0.204, BENCHMARKS.md); before the preset's short-run head settings it ended at 0.188 vs 0.32
    assert trained > random + 0.01
