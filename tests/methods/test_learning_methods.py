"""Short real-data learning checks for Barlow Twins, VICReg and DeepCluster-v2 (slow, CIFAR-10 subset): each
leaves its collapse value behind and its features beat random-init features on kNN."""

import json

import pytest

from openseer.config import load_config
from openseer.eval.pipeline import knn_from_checkpoint, random_init_backbone
from openseer.train import pretrain
from tests.test_learning import CIFAR, _write_subset

# per method: overrides of its -cifar10 preset (2,000 images, batch 64: 31 steps per epoch)
RUNS = {
    "barlowtwins": ["train.max_steps=200", "barlowtwins.projector_dims=[512,512,512]"],
    "vicreg": ["train.max_steps=120", "vicreg.projector_dims=[512,512,512]"],
    # the first epoch fills the memory bank; 5 more epochs train on k-means targets (with 3 the loss was still at
    # 3.08 of ln K 3.40)
    "deepclusterv2": ["train.epochs=6", "deepclusterv2.num_prototypes=[30,30,30]", "aug.local_crops=2"],
}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    return _write_subset(CIFAR / "cifar10-train.tar", root / "train", 200), _write_subset(
        CIFAR / "cifar10-test.tar", root / "test", 100
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not (CIFAR / "cifar10-train.tar").is_file(),
    reason=f"CIFAR-10 tars not found in {CIFAR} (see its README); this check needs real images",
)
@pytest.mark.parametrize(
    "method",
    [
        "barlowtwins",  # measured here: kNN 0.226 vs 0.178 random init (200 steps; 120 gave 0.195 once a warm-up's
        # lr-0 first step builds LARS momentum, as the reference's optimizer does)
        "vicreg",  # measured here: kNN 0.250 vs 0.178
        "deepclusterv2",  # measured here: loss 3.01 (limit 3.06), kNN 0.209 vs 0.178
    ],
)
def test_short_pretraining_leaves_collapse_and_beats_random_init(method, cifar, tmp_path):
    train, test = cifar
    cfg = load_config(
        f"{method}-cifar10", [f"data.path={train}", "train.batch_size=64", "data.num_workers=0", *RUNS[method]]
    )
    summary = pretrain(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trivial = summary.get("trivial_loss", summary["uniform_loss"])
    tail = sum(r["loss"] for r in rows[-5:]) / 5
    assert tail < 0.9 * trivial, (method, tail, trivial)  # not at the collapsed / untrained value
    if method == "vicreg":
        assert rows[-1]["embedding_std"] > 0.1  # not collapsed to a point
    if method == "deepclusterv2":
        assert rows[-1]["known_targets"] > 0.9  # every image of the epoch has a cluster
    trained = max(knn_from_checkpoint(str(tmp_path / "run"), str(train), str(test), ks=(20,))["top1"].values())
    floor = random_init_backbone(tmp_path / "run", tmp_path / "eval")  # seeded with cfg.train.seed
    random = max(knn_from_checkpoint(floor, str(train), str(test), ks=(20,))["top1"].values())
    print(f"{method}: CIFAR-10 kNN top-1 (k=20) pretrained {trained:.3f}, random init {random:.3f}")
    assert trained > random + 0.02
