"""The evaluation registry: a plain dict from name to :class:`Evaluation`, as methods have one
(`openseer.methods.registry`; pycls ``builders.py`` style).

An evaluation module declares everything about itself once, in one :func:`register_evaluation` call at the
bottom of its file: the function that computes it, its ``openseer eval NAME`` flags, the line it prints, its
rows in ``openseer report`` and, optionally, its columns in ``openseer eval all`` (:class:`SuiteRole`). The
command line (`openseer.cli.eval`), the Python API (``openseer.evaluate(protocol=NAME)``), the suite
(`openseer.eval.suite`) and the report (`openseer.report.report.eval_rows`) read the registry and name no
evaluation themselves. :func:`load_evaluations` imports the built-in evaluations listed in ``BUILTIN``
(adding one = one file + one name there) and any plugin module named in the environment variable
``OPENSEER_EVALUATIONS`` (comma-separated module names) or in the ``openseer.evaluations`` entry-point group of
an installed package; a test or a user's own code may also call :func:`register_evaluation` directly.

What an evaluation's ``run`` receives depends on ``frozen``:

- ``frozen=True``: ``run(train: Features, test: Features, **options)``, the cached frozen features of a
  labelled pair (test labels numbered as train's; `openseer.eval.pipeline.frozen_pair`), or two files from
  ``openseer embed``. What the features were computed from (``pair_meta``) is merged into the result.
- ``frozen=False``: ``run(backbone, config, train: str, test: str, settings: EvalSettings, **options)``, a
  backbone of its own (it may train it) with the run's config and the labelled data; the checkpoint's name is
  added to the result.

``options`` are the keyword arguments of ``openseer.evaluate(..., protocol=NAME, **options)``; ``from_args``
turns the command's flags into the same keywords, so the command and the API run the same call.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openseer.errors import ConfigError
from openseer.plugins import import_plugins

# modules under openseer.eval that register a built-in evaluation, in the order of `eval all`'s columns
BUILTIN = ("knn", "linear", "lowshot", "finetune")
PLUGIN_ENV = "OPENSEER_EVALUATIONS"

#: One row of the report's evaluation table: (evaluation, setting, result).
Row = tuple[str, str, str]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """An evaluation or suite role without flags of its own."""


def _no_options(args: argparse.Namespace) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class SuiteRole:
    """An evaluation's part in ``openseer eval all`` (`openseer.eval.suite.run_suite`).

    The suite's parameters are a flat dict (``ks``, ``fractions``, ...) that several evaluations may read: a
    parameter is declared (default and flag) by one role and read by any.
    """

    #: (params, out_dir, candidate) -> this evaluation's ``run`` options for one backbone (candidate is
    #: "pretrained" or "random"); None skips it (e.g. fine-tuning when its fraction is 0).
    options: Callable[[dict[str, Any], Path, str], dict[str, Any] | None]
    #: params -> the titles of its columns in the suite's table.
    header: Callable[[dict[str, Any]], list[str]]
    #: (result, params) -> one cell per column of ``header``.
    cells: Callable[[dict[str, Any], dict[str, Any]], list[str]]
    #: the suite parameters it declares, with their defaults (keyword arguments of ``run_suite``).
    defaults: dict[str, Any] = field(default_factory=dict)
    #: the flags of those parameters on ``openseer eval all`` / ``openseer compare``.
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    #: those flags -> the parameters (check them here, before any slow work).
    from_args: Callable[[argparse.Namespace], dict[str, Any]] = _no_options


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: what it computes and how each front end shows it."""

    name: str  # `openseer eval NAME`, `openseer.evaluate(protocol=NAME)`, the "eval" field of its JSON
    help: str  # its line in `openseer eval --help`
    run: Callable[..., dict[str, Any]]  # computes the JSON-able result (module docstring: what it receives)
    describe: Callable[[dict[str, Any]], str]  # the short text `openseer eval NAME` prints from a result
    report_rows: Callable[[dict[str, Any]], list[Row]]  # a result's rows in `openseer report`
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments  # its own flags
    from_args: Callable[[argparse.Namespace], dict[str, Any]] = _no_options  # flags -> ``run`` options
    frozen: bool = True  # True: runs on frozen features of a labelled pair; False: on the backbone itself
    suite: SuiteRole | None = None  # its columns in `openseer eval all`, if it has any


EVALUATIONS: dict[str, Evaluation] = {}
_loaded = False


def register_evaluation(entry: Evaluation) -> Evaluation:
    """Add (or replace) an evaluation; returns the entry so a module can keep it as ``ENTRY``."""
    if entry.name == "all":
        raise ConfigError("'all' is `openseer eval all` (every evaluation); choose another evaluation name")
    EVALUATIONS[entry.name] = entry
    return entry


def load_evaluations() -> dict[str, Evaluation]:
    """Import the built-in and plugin evaluations once (each registers itself); returns :data:`EVALUATIONS`."""
    global _loaded
    if not _loaded:
        _loaded = True  # first: a module that reads the registry while importing does not recurse
        import_plugins([f"openseer.eval.{name}" for name in BUILTIN], PLUGIN_ENV, "openseer.evaluations")
    return EVALUATIONS


def get_evaluation(name: str) -> Evaluation:
    """The entry of a registered evaluation (a ConfigError names the known ones)."""
    evaluations = load_evaluations()
    if name not in evaluations:
        raise ConfigError(f"unknown protocol {name!r}; choose {', '.join(evaluations)} or all")
    return evaluations[name]


def suite_defaults() -> dict[str, Any]:
    """Every suite parameter with its default, from the roles of the registered evaluations."""
    params: dict[str, Any] = {}
    for entry in load_evaluations().values():
        if entry.suite is not None:
            params.update(entry.suite.defaults)
    return params


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every suite parameter (``openseer eval all``, ``openseer compare``)."""
    for entry in load_evaluations().values():
        if entry.suite is not None:
            entry.suite.add_arguments(parser)


def suite_params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The suite parameters given by the flags of :func:`add_suite_arguments`."""
    params: dict[str, Any] = {}
    for entry in load_evaluations().values():
        if entry.suite is not None:
            params.update(entry.suite.from_args(args))
    return params


def _numbers(text: str, name: str, kind: type, example: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{name} {text!r} must be comma-separated {what}, e.g. {example}") from None
    if not values:
        raise ConfigError(f"{name} is empty")
    return values


def floats(text: str, name: str) -> tuple[float, ...]:
    """``"0.01,0.1"`` -> (0.01, 0.1); a clear ConfigError naming the flag otherwise."""
    return _numbers(text, name, float, "0.01,0.1")


def ints(text: str, name: str) -> tuple[int, ...]:
    """``"10,20,200"`` -> (10, 20, 200), all positive; a clear ConfigError naming the flag otherwise."""
    values = _numbers(text, name, int, "10,20,200")
    if min(values) < 1:
        raise ConfigError(f"{name} {text!r} must hold positive integers")
    return values


def pct(value: float) -> str:
    """A fraction as a percentage with one decimal, the suite table's cells (``0.8123`` -> ``"81.2"``)."""
    return f"{100 * value:.1f}"


def mean_std(value: dict[str, float], digits: int = 1) -> str:
    """``{"mean": .., "std": ..}`` fractions as ``"81.2 ± 0.3"`` percent."""
    return f"{100 * value['mean']:.{digits}f} ± {100 * value['std']:.{digits}f}"
