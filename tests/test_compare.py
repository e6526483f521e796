"""`openseer compare`: methods pretrained one after the other on the same data and budget, each evaluated next
to the random-init floor; a finished method is not pretrained again."""

import json

import pytest

from openseer.cli import build_parser
from openseer.compare import compare, floor_name, preset_for, table_lines
from openseer.config import ConfigError
from tests.helpers import write_images

METHODS = ["swav", "barlowtwins"]
TINY = [
    "aug.global_size=24",
    "aug.local_crops=0",
    "model.backbone=regnetx_002",
    "model.channels_last=false",
    "swav.hidden_dims=[32]",
    "swav.output_dim=16",
    "swav.num_prototypes=10",
    "barlowtwins.projector_dims=[32,32]",
    "train.batch_size=8",
    "train.log_every=1",
    "optim.warmup_epochs=0.5",
    "data.num_workers=0",
]
EVAL = dict(image_size=16, crop_pct=1.0, num_workers=0, ks=(3,), fractions=(0.5,), seeds=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    unlabelled = write_images(root / "unlabelled", 16, size=24)
    train = write_images(root / "train", 24, size=16, classes=3)
    test = write_images(root / "test", 9, size=16, classes=3, seed=1)
    return root, str(unlabelled), str(train), str(test)


def test_compare_writes_one_table_and_skips_finished_methods(images):
    root, data, train, test = images
    out, calls = root / "out", []

    def run() -> dict:
        return compare(
            METHODS,
            data,
            train,
            test,
            out,
            steps=2,
            overrides=TINY,
            eval_options=EVAL,
            on_method=lambda m, what: calls.append((m, what)),
        )

    summary = run()
    assert calls == [(m, what) for m in METHODS for what in ("pretrain", "eval")]
    table = (out / "compare.md").read_text()
    rows = table.splitlines()
    assert rows[0].startswith("| method | preset | steps | images/s | final loss (trivial) | kNN k=3 | linear")
    assert [r.split("|")[1].strip() for r in rows[2:]] == [*METHODS, "random init (regnetx_002)"]
    saved = json.loads((out / "compare.json").read_text())
    for m in METHODS:
        r = saved["methods"][m]
        assert r["steps"] == 2 and r["images_per_s"] > 0 and r["preset"] == preset_for(m)
        assert r["floor"] == "regnetx_002"  # the floor of its own backbone spec (both presets: timm's init)
        assert (out / m / "eval" / "summary.json").is_file()
    assert summary["floors"]["regnetx_002"] == saved["floors"]["regnetx_002"]
    assert "<table>" in (out / "compare.html").read_text()

    # again: nothing is pretrained or evaluated twice, the table is the same
    stamp = {m: (out / m / "eval" / "summary.json").stat().st_mtime for m in METHODS}
    calls.clear()
    again = run()
    assert calls == [(m, what) for m in METHODS for what in ("skip", "eval")]
    assert {m: (out / m / "eval" / "summary.json").stat().st_mtime for m in METHODS} == stamp
    assert again["table"] == summary["table"]

    # a finished run is not silently reused with another budget
    with pytest.raises(ConfigError, match="finished run with other settings"):
        compare(METHODS, data, train, test, out, steps=3, overrides=TINY, eval_options=EVAL)


def test_bad_requests_are_one_line_errors(images):
    root, data, train, test = images
    with pytest.raises(ConfigError, match="--steps N or --epochs N"):
        compare(["swav"], data, train, test, root / "x")
    with pytest.raises(ConfigError, match="no preset"):
        compare(["swav"], data, train, test, root / "x", steps=1, preset_suffix="-nowhere")
    with pytest.raises(ConfigError, match="twice"):
        compare(["swav", "swav"], data, train, test, root / "x", steps=1)


@pytest.mark.parametrize("given", ["cifar10-regnet", "-cifar10-regnet"])
def test_preset_suffix_is_accepted_with_or_without_its_dash(given):
    base = ["compare", "--methods", "dino", "--data", "d", "--train", "t", "--test", "v", "--steps", "1", "--out", "o"]
    args = build_parser().parse_args([*base, f"--preset-suffix={given}"])
    assert args.preset_suffix == "-cifar10-regnet"
    if not given.startswith("-"):  # the plain form also works as a separate word
        assert build_parser().parse_args([*base, "--preset-suffix", given]).preset_suffix == "-cifar10-regnet"
    assert preset_for("dino", args.preset_suffix) == "dino-cifar10-regnet"


def test_each_initialisation_gets_its_own_floor_and_rows_name_theirs():
    # random features depend on the initialisation (zero-initialised residual branches or not): a method is
    # measured against the floor of its own backbone spec, not the first method's
    assert floor_name("regnety_004", {"timm_name": "regnety_004", "exported": "backbone"}) == "regnety_004"
    spec = {"timm_name": "regnety_004", "zero_init_last": False, "exported": "teacher.backbone"}
    assert floor_name("regnety_004", spec) == "regnety_004, zero_init_last=false"
    row = {"header": ["kNN k=20"], "rows": {"pretrained": ["20.0"]}}
    floors = {"regnety_004": row, "regnety_004, zero_init_last=false": {**row, "rows": {"pretrained": ["32.0"]}}}
    result = dict(preset="p", steps=1, images_per_s=1.0, final_loss=1.0, trivial_loss=2.0, eval=["25.0"])
    results = {"swav": {**result, "floor": "regnety_004"}, "dino": {**result, "floor": list(floors)[1]}}
    names = [r.split("|")[1].strip() for r in table_lines(results, floors)[1][2:]]
    assert names == [
        "swav (vs random init regnety_004)",
        "dino (vs random init regnety_004, zero_init_last=false)",
        "random init (regnety_004)",
        "random init (regnety_004, zero_init_last=false)",
    ]
