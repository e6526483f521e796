"""Config that states things once: presets that inherit (``base:``), keys that moved (old names keep loading
with a note), and which keys a resumed run may change (declared on the fields)."""

import logging

import pytest
import yaml

from openseer.config import (
    RENAMED_KEYS,
    ConfigError,
    config_from_dict,
    list_presets,
    load_config,
    read_preset,
    resumable_keys,
    to_dict,
)
from openseer.models.backbone import backbone_spec


def _write(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_preset_inherits_its_base_and_overrides_key_by_key(tmp_path):
    _write(tmp_path / "base.yaml", {"train": {"epochs": 7, "batch_size": 16}, "swav": {"hidden_dims": [32]}})
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "train": {"batch_size": 8}})
    grandchild = _write(tmp_path / "grand.yaml", {"base": str(child), "swav": {"hidden_dims": [16, 16]}})
    cfg = load_config(str(grandchild), ["train.epochs=9"])
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.swav.hidden_dims) == (9, 8, [16, 16])
    assert load_config(str(child)).train.epochs == 7  # the base's value where the child says nothing
    # a built-in preset as base: identical to it except for the stated difference
    tiny = _write(tmp_path / "tiny.yaml", {"base": "cifar10", "train": {"epochs": 1}})
    expected = to_dict(load_config("cifar10", ["train.epochs=1"]))
    assert to_dict(load_config(str(tiny))) == expected


def test_bad_bases_are_clear_errors(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="inherit in a circle: a -> b -> a"):
        load_config(str(tmp_path / "a.yaml"))
    _write(tmp_path / "c.yaml", {"base": "cifar"})
    with pytest.raises(ConfigError, match="unknown preset 'cifar'.*did you mean 'cifar10'"):
        load_config(str(tmp_path / "c.yaml"))
    _write(tmp_path / "d.yaml", {"base": 3})
    with pytest.raises(ConfigError, match="base must name a preset"):
        load_config(str(tmp_path / "d.yaml"))


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_builtin_preset_resolves_to_what_its_chain_states(name):
    """Whatever a preset inherits, the resolved config holds every value its files state."""

    def leaves(d, prefix=""):
        for key, value in d.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    def set_fields(value):  # a list of view recipes resolves with every unset field as null
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return [{k: x for k, x in v.items() if x is not None} for v in value]
        return value

    stated = dict(leaves(read_preset(name)))
    assert "base" not in stated
    resolved = dict(leaves(to_dict(load_config(name))))
    assert {k: set_fields(resolved[k]) for k in stated} == stated


def test_old_regnet_and_recompute_keys_still_load_with_a_note(tmp_path, caplog):
    new = [
        "model.regnet.depth=6",
        "model.regnet.w0=8",
        "model.regnet.wa=10.0",
        "model.regnet.wm=1.8",
        "model.regnet.group_size=8",
        "parallel.recompute_every=2",
    ]
    old = [k.replace("regnet.", "regnet_").replace("recompute_every", "checkpoint_every") for k in new]
    with caplog.at_level(logging.WARNING, logger="openseer"):
        cfg = load_config("demo", old)
    assert to_dict(cfg) == to_dict(load_config("demo", new))
    assert "'model.regnet_depth' is now 'model.regnet.depth'" in caplog.text
    assert "'parallel.checkpoint_every' is now 'parallel.recompute_every'" in caplog.text
    assert backbone_spec(cfg.model)["regnet_cfg"] == {
        "depth": 6,
        "w0": 8,
        "wa": 10.0,
        "wm": 1.8,
        "group_size": 8,
        "se_ratio": 0.25,
    }
    # an old run directory's config.yaml (flat keys) and an old YAML preset
    old_dict = to_dict(load_config("demo"))
    old_dict["model"] = {k: v for k, v in old_dict["model"].items() if k != "regnet"}
    old_dict["model"].update(regnet_depth=6, regnet_w0=8, regnet_wa=10.0, regnet_wm=1.8, regnet_group_size=8)
    old_dict["parallel"]["checkpoint_every"] = old_dict["parallel"].pop("recompute_every")
    assert to_dict(config_from_dict(old_dict)).keys() == to_dict(cfg).keys()
    assert config_from_dict(old_dict).model.regnet.w0 == 8
    yaml_file = _write(
        tmp_path / "old.yaml",
        {"model": {"regnet_depth": 6, "regnet_w0": 8, "regnet_wa": 10.0, "regnet_wm": 1.8, "regnet_group_size": 8}},
    )
    assert load_config(str(yaml_file)).model.regnet.group_size == 8
    assert set(RENAMED_KEYS) >= {"model.regnet_depth", "parallel.checkpoint_every"}


def test_resumable_keys_are_declared_on_the_fields():
    """The list run_state.py used to keep by hand (with the weights keys), plus every parallel.* field."""
    hand_kept = {
        "train.max_steps",
        "train.epochs",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.max_nonfinite_steps",
        "data.num_workers",
        "data.path",
        "train.device",
        "monitor.train",
        "monitor.test",
        "monitor.every",
        "monitor.k",
        "monitor.max_train",
        "monitor.max_test",
        # where metrics are mirrored, and the starting weights (applied once, at step 0; never on resume)
        "log.tensorboard",
        "log.wandb",
        "model.init",
        "model.init_strict",
        # head layouts of checkpoints written before the heads matched their references (set to load them)
        "byol.output_bias",
        "mocov3.predictor_bn",
        # label-free health signals (issue 23): what is logged and watched, not what is learnt
        "train.health_every",
        "train.health_images",
        "train.stop_on_collapse",
        "train.keep_best_label_free",
    }
    parallel = {f"parallel.{k}" for k in to_dict(load_config())["parallel"]}
    assert resumable_keys() == hand_kept | parallel
