"""`openseer compare`: methods pretrained one after the other on the same data and budget, each evaluated next
to the random-init floor; a finished method is not pretrained again."""

import json

import pytest

from openseer.cli import build_parser
from openseer.compare import compare, floor_name, preset_for, probe_throughput, table_lines
from openseer.config import ConfigError, load_config
from openseer.train import pretrain
from openseer.train.budget import PROBE_STEPS, PROBE_WARMUP, steps_for_minutes
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
    header = "| method | preset | steps | minutes | images/s | final loss (trivial) | kNN k=3 | linear"
    assert rows[0].startswith(header)
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
    with pytest.raises(ConfigError, match="--steps N, --epochs N or --minutes M"):
        compare(["swav"], data, train, test, root / "x")
    with pytest.raises(ConfigError, match="one budget"):
        compare(["swav"], data, train, test, root / "x", steps=2, minutes=1.0)
    for minutes in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--minutes must be a positive number"):
            compare(["swav"], data, train, test, root / "x", minutes=minutes)
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


def test_minutes_is_a_third_budget_exclusive_of_the_others(capsys):
    base = ["compare", "--methods", "swav", "--data", "d", "--train", "t", "--test", "v", "--out", "o"]
    args = build_parser().parse_args([*base, "--minutes", "2.5"])
    assert args.minutes == 2.5 and args.steps is None and args.epochs is None
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--minutes", "2", "--steps", "10"])
    assert "not allowed with argument" in capsys.readouterr().err


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


def test_a_time_budget_gives_each_method_the_steps_its_probed_throughput_allows(images):
    # the probe is replaced by fixed throughputs: Barlow Twins "twice as fast" gets twice the steps
    root, data, train, test = images
    out, probed = root / "timed", []
    speed = {"swav": 0.4, "barlowtwins": 0.8}  # images/s at a global batch of 8: 3 and 6 steps in 1 minute

    def probe(cfg, scratch):
        probed.append(cfg.method)
        assert cfg.train.max_steps == 0 and scratch.parent == out  # the method's own config, unbudgeted
        return dict(images_per_s=speed[cfg.method], global_batch=8)

    def run(minutes: float) -> dict:
        return compare(METHODS, data, train, test, out, minutes=minutes, overrides=TINY, eval_options=EVAL, probe=probe)

    summary = run(1.0)
    assert probed == METHODS  # every probe before any run
    budgets = json.loads((out / "budgets.json").read_text())
    for method, steps in (("swav", 3), ("barlowtwins", 6)):
        assert budgets[method]["steps"] == steps == steps_for_minutes(1.0, speed[method], 8)
        assert summary["methods"][method]["steps"] == steps  # the run was trained for them
        assert summary["methods"][method]["probe_images_per_s"] == speed[method]
        assert json.loads((out / method / "summary.json").read_text())["steps"] == steps
    assert "1 minutes (steps from a throughput probe)" in (out / "compare.html").read_text()

    probed.clear()  # a rerun reuses the probes (and so the schedules) instead of measuring again
    assert run(1.0)["table"] == summary["table"] and probed == []
    with pytest.raises(ConfigError, match="finished run with other settings"):  # another budget, other steps
        run(2.0)


def test_steps_for_minutes():
    assert steps_for_minutes(10, 128.0, 128) == 600  # one step per second for 10 minutes
    assert steps_for_minutes(0.5, 64.0, 256) == 7  # whole steps only
    assert steps_for_minutes(0.001, 1.0, 256) == 1  # at least one


def test_the_throughput_probe_times_real_steps_and_leaves_nothing_behind(images, monkeypatch):
    root, data, _, _ = images
    cfg = load_config(preset_for("barlowtwins"), [f"data.path={json.dumps(data)}", *TINY])
    seen = {}

    def spy(probe_cfg, scratch, **kw):  # the real loop, watched
        seen["max_steps"], seen["scratch"] = probe_cfg.train.max_steps, scratch
        summary = pretrain(probe_cfg, scratch, **kw)
        seen["steps"], seen["seconds"] = summary["steps"], summary["seconds"]
        return summary

    monkeypatch.setattr("openseer.compare.pretrain", spy)
    measured = probe_throughput(cfg, root / ".probe-barlowtwins")
    assert seen["max_steps"] == seen["steps"] == PROBE_STEPS and cfg.train.max_steps == 0  # cfg untouched
    assert measured["global_batch"] == 8
    # the timed steps are a part of the run (start-up and the first steps left out): their images/s is at
    # least that of those steps spread over the whole run's wall time
    assert measured["images_per_s"] >= (PROBE_STEPS - PROBE_WARMUP) * 8 / seen["seconds"]
    assert not seen["scratch"].exists()
