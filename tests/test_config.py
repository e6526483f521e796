import pytest
import yaml

from openseer.config import (
    Config,
    ConfigError,
    config_from_dict,
    derive,
    dump_yaml,
    field_help,
    list_presets,
    load_config,
    parse_override,
)


def test_defaults_are_swav_recipe():
    cfg = load_config()
    assert (cfg.aug.global_crops, cfg.aug.global_size, cfg.aug.local_crops, cfg.aug.local_size) == (
        2,
        224,
        6,
        96,
    )
    assert cfg.aug.global_scale == (0.14, 1.0) and cfg.aug.local_scale == (0.05, 0.14)
    assert cfg.swav.num_prototypes == 3000 and cfg.swav.epsilon == 0.05 and cfg.swav.temperature == 0.1
    assert cfg.optim.trust_coefficient == 0.001


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_loads_and_round_trips(name):
    cfg = load_config(name)
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert list_presets()[name], "each preset starts with a one-line description comment"


def test_overrides_are_typed():
    cfg = load_config(
        "cifar10",
        [
            "train.batch_size=32",
            "optim.base_lr=1",
            "aug.global_scale=[0.3, 1]",
            "model.channels_last=true",
            "swav.hidden_dims=[256, 256]",
        ],
    )
    assert cfg.train.batch_size == 32
    assert cfg.optim.base_lr == 1.0 and isinstance(cfg.optim.base_lr, float)
    assert cfg.aug.global_scale == (0.3, 1.0)
    assert cfg.model.channels_last is True
    assert cfg.swav.hidden_dims == [256, 256]


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("train.batchsize=3", "unknown config key 'train.batchsize' (did you mean 'batch_size'?)"),
        ("trian.epochs=3", "did you mean 'train'"),
        ("train.batch_size=abc", "expected an integer"),
        ("train.batch_size=1.5", "expected an integer"),
        ("model.channels_last=1", "expected true or false"),
        ("train.precision=fp8", "expected one of 'fp32', 'bf16', 'fp16'"),
        ("aug.global_scale=[0.5]", "needs 2 values"),
        ("aug.flip_prob=2", "must be a probability"),
        ("swav.crops_for_assign=[0, 5]", "must index global crops"),
        ("train.batch_size", "must look like section.key=value"),
        ("train=3", "is a section"),
    ],
)
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_and_missing_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'cifar'.*did you mean 'cifar10'"):
        load_config("cifar")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(bad))
    py = tmp_path / "evil.yaml"
    py.write_text("train: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(py))


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  epochs: 7\nswav:\n  num_prototypes: 50\n")
    cfg = load_config(str(p))
    assert cfg.train.epochs == 7 and cfg.swav.num_prototypes == 50


def test_derive_scales_lr_and_lays_out_schedule():
    cfg = load_config(None, ["train.batch_size=64", "optim.base_lr=0.3", "train.epochs=10", "optim.warmup_epochs=1"])
    d = derive(cfg, dataset_size=1000, world_size=2)
    assert d.global_batch == 128 and d.steps_per_epoch == 7 and d.total_steps == 70 and d.warmup_steps == 7
    assert d.peak_lr == pytest.approx(0.3 * 128 / 256)
    cfg.train.max_steps = 20
    d = derive(cfg, 1000, 2)
    assert d.total_steps == 20 and d.epochs == 3
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        derive(cfg, 100, 2)


def test_field_help_documents_every_field():
    rows = field_help()
    keys = {k for k, _, _ in rows}
    assert {"train.batch_size", "swav.num_prototypes", "aug.local_scale", "optim.base_lr"} <= keys
    assert all(text for _, _, text in rows), [k for k, _, t in rows if not t]


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=") == ("a.b", "")
    assert Config().swav is not None
