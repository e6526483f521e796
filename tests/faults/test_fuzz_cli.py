"""Fuzzed configuration and command lines: random keys, values and presets (on the command line and in YAML
files) and random arguments to every command give exit code 0, 1 or 2 and at most one error line, never a
traceback; an unknown key or preset names the valid choices."""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import openseer.cli.demo
import openseer.cli.pretrain
import openseer.compare
import openseer.demo
from openseer.cli import build_parser, main
from openseer.config import Config, ConfigError, field_help, list_presets, load_config
from tests.faults.common import fuzz_settings

FAST = fuzz_settings(40, fixture_scoped=True)
KEYS = [key for key, _, _ in field_help()]
PRESETS = sorted(list_presets())
SECTIONS = sorted({k.split(".", 1)[0] for k in KEYS if "." in k})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=15)
unknown_keys = st.builds(
    lambda s, w: f"{s}.{w}", st.sampled_from(SECTIONS), st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
).filter(lambda k: k not in KEYS)


def _one_line(error: ConfigError) -> str:
    text = str(error)
    assert text and "\n" not in text, text
    return text


@FAST
@given(st.one_of(st.none(), st.sampled_from(PRESETS)), st.sampled_from(KEYS), values)
def test_any_value_of_a_valid_key_is_accepted_or_one_line(preset, key, value):
    override = f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
    try:
        cfg = load_config(preset, [override])
    except ConfigError as e:
        assert key in _one_line(e) or "override" in str(e)
    else:
        assert isinstance(cfg, Config)


@FAST
@given(unknown_keys, st.integers())
def test_an_unknown_key_names_the_valid_ones(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    text = _one_line(info.value)
    assert f"unknown config key {key!r}" in text and "valid keys here:" in text


@FAST
@given(words.filter(lambda w: w not in PRESETS and "/" not in w and not w.endswith((".yaml", ".yml"))))
def test_an_unknown_preset_names_the_presets(name):
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            with pytest.raises(ConfigError) as info:
                load_config(name, [])
        finally:
            os.chdir(cwd)
    text = _one_line(info.value)
    assert "presets:" in text and all(p in text for p in PRESETS)


@FAST
@given(
    st.one_of(
        st.dictionaries(st.sampled_from([*SECTIONS, "method", "bogus"]), values, max_size=4),
        values,
        st.text(max_size=80),
    )
)
def test_random_yaml_files(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
        try:
            assert isinstance(load_config(str(path), []), Config)
        except ConfigError as e:
            _one_line(e)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        out += [s for s in action.option_strings]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _flags(sub)
    return sorted(set(out))


FLAGS = _flags(build_parser())
COMMANDS = [
    ["pretrain"],
    ["eval", "knn"],
    ["eval", "linear"],
    ["eval", "lowshot"],
    ["eval", "finetune"],
    ["embed"],
    ["report"],
    ["demo"],
    ["presets"],
    ["info"],
    ["shard"],
    ["launch"],
    ["launch", "pretrain"],
    ["export"],
    ["compare"],
    [],
]
tokens = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(
        [
            "demo",
            "cifar10",
            "nope",
            "-1",
            "0",
            "3",
            "1e9",
            ".",
            "",
            "a=b",
            "train.batch_size=0",
            "model.backbone=bogus",
            "x.yaml",
            "--",
            "-",
        ]
    ),
    words,
)


#: (module, name) of every function through which a command starts training: the fuzzed arguments must be
#: accepted or refused by the parser and config checks, never run a real pretraining.
HEAVY_WORK = [
    (openseer.cli.demo, "run_demo"),
    (openseer.cli.pretrain, "pretrain"),
    (openseer.demo, "pretrain"),
    (openseer.compare, "pretrain"),
]


class _WouldRun(Exception):
    """Raised by the stand-ins of the commands' heavy work: the arguments were accepted."""


@FAST
@given(st.sampled_from(COMMANDS), st.lists(tokens, max_size=8))
def test_random_arguments_to_every_command(monkeypatch, capsys, command, args):
    def would_run(*a, **k):
        raise _WouldRun

    for module, name in HEAVY_WORK:  # patched where the commands look them up (imported at module top)
        monkeypatch.setattr(module, name, would_run)
    monkeypatch.setattr(subprocess, "call", would_run)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            code = main([*command, *args])
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            code = e.code
        except _WouldRun:
            code = 0
        finally:
            os.chdir(cwd)
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (command, args, code, err[-2000:])
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("openseer: error:")]) <= 1
