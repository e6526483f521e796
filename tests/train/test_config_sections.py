"""Method sections come from the registry; configs written before a field existed still resume."""

from __future__ import annotations

import pytest

from openseer.config import ConfigError, config_from_dict, field_help, load_config, to_dict
from openseer.run_state import resume_blockers


def test_method_sections_come_from_the_registry():
    cfg = load_config("demo", ["swav.num_prototypes=7"])
    assert cfg.swav.num_prototypes == 7 and cfg.method_config() is cfg.swav
    assert list(to_dict(cfg))[:5] == ["method", "data", "aug", "model", "swav"]  # the layout of older dumps
    assert config_from_dict(to_dict(cfg)) == cfg
    assert any(key == "swav.num_prototypes" for key, _, _ in field_help())
    with pytest.raises(ConfigError, match="unknown config key 'swav.protos'"):
        load_config("demo", ["swav.protos=3"])
    with pytest.raises(ConfigError, match=r"method='nope' is unknown; methods: (\w+, )*swav\b"):
        load_config("demo", ["method=nope"])


def test_a_checkpoint_from_before_new_optim_fields_still_resumes():
    cfg = load_config("demo")
    old = to_dict(cfg)
    del old["optim"]["weight_decay_end"], old["optim"]["exclude_bias_and_norm"]
    assert resume_blockers({"config": old, "world_size": 1}, cfg) == []
    changed = load_config("demo", ["optim.exclude_bias_and_norm=false"])
    assert resume_blockers({"config": old, "world_size": 1}, changed) == ["optim.exclude_bias_and_norm"]
