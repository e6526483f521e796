"""``openseer compare``: which method for my data? Every method pretrained on the same images with the same
budget, then evaluated the same way, next to the random-init floor, in one table.

For each method, one after the other, ``OUT/<method>/`` is an ordinary run directory: pretraining uses the
method's short preset (``<method><suffix>``, e.g. ``barlowtwins-cifar10``; SwAV's is ``cifar10``) with
``data.path`` and the budget (``train.max_steps`` or ``train.epochs``) set for all alike, then ``eval all``
(:func:`openseer.eval.suite.run_suite`) writes ``OUT/<method>/eval/``. The random-init floor of each backbone
architecture (and initialisation: :func:`floor_name`) is evaluated once into ``OUT/random_init/``; every row
names the floor it is measured against.

A wall-clock budget (``minutes``) gives every method the same pretraining time instead of the same steps:
before any training, each method runs a short probe (:data:`PROBE_STEPS` optimizer steps in a scratch
directory, the first :data:`PROBE_WARMUP` of them untimed) and gets ``minutes x images/s / global batch``
steps, so that its schedule (warm-up, decay) spans exactly that many steps. The probes and the steps they give
are kept in ``OUT/budgets.json``: a rerun reuses them, so an interrupted run resumes with the same schedule.

Resumable: a method whose ``summary.json`` says ``completed`` is not pretrained again, an interrupted one
resumes from its checkpoint, and an evaluation whose ``summary.json`` is newer than the backbone is reused. The
results: ``OUT/compare.md`` (the table), ``OUT/compare.json`` (its numbers, images/s, losses, timings) and
``OUT/compare.html`` with the training curves side by side (``curves.png``; needs matplotlib).
"""

from __future__ import annotations

import html
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from openseer.checkpoint import read_backbone_spec
from openseer.config import Config, ConfigError, list_presets, load_config, resumable_keys, to_dict
from openseer.errors import TrainingError
from openseer.eval.pipeline import random_init_backbone
from openseer.eval.settings import FROM_RUN, EvalSettings
from openseer.eval.suite import run_suite
from openseer.io import atomic_write
from openseer.report.plots import pyplot, read_metrics
from openseer.run_state import config_differences, load_run_config
from openseer.train import pretrain
from openseer.train.budget import PROBE_STEPS, check_minutes, steps_for_minutes
from openseer.train.budget import probe_throughput as budget_probe

log = logging.getLogger("openseer")


def preset_for(method: str, suffix: str = "-cifar10") -> str:
    """The short preset of ``method``: ``<method><suffix>``, else the plain ``<suffix>`` preset when it trains
    that method (``cifar10`` is SwAV's). Raises ConfigError naming the file to add."""
    names = list_presets()
    for candidate in (f"{method}{suffix}", suffix.lstrip("-")):
        if candidate in names and load_config(candidate).method == method:
            return candidate
    raise ConfigError(
        f"no preset {method}{suffix!s} for method {method!r} (openseer/configs/{method}{suffix}.yaml); "
        f"use --preset-suffix, or add the preset; presets: {', '.join(names)}"
    )


def floor_name(arch: str, spec: dict[str, Any]) -> str:
    """The random-init floor a run is measured against: its architecture and every setting of its backbone spec
    that changes the initialisation (``regnety_004, zero_init_last=false``). Random features depend on them: a
    RegNet without zero-initialised residual branches scores about 10 points higher in kNN at 32 px."""
    extra = {k: v for k, v in sorted(spec.items()) if k not in ("timm_name", "exported")}
    return ", ".join([arch, *(f"{k}={json.dumps(v)}" for k, v in extra.items())])


def _run_config(method: str, suffix: str, data: str, steps: int | None, epochs: int | None, overrides) -> Config:
    budget = [f"train.max_steps={steps}"] if steps else []
    budget += [f"train.epochs={epochs}"] if epochs else []
    return load_config(preset_for(method, suffix), [f"data.path={json.dumps(data)}", *budget, *overrides])


def probe_throughput(cfg: Config, scratch: Path) -> dict[str, Any]:
    """Images/s of ``cfg``'s training step (:func:`openseer.train.budget.probe_throughput`, the probe behind
    ``pretrain --minutes`` too)."""
    return budget_probe(cfg, scratch, pretrain)


def _time_budgets(
    configs: dict[str, Config], out: Path, minutes: float, probe: Callable[[Config, Path], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per method, the probe and the steps for ``minutes`` of pretraining, from ``OUT/budgets.json`` or a fresh
    probe."""
    path = out / "budgets.json"
    budgets = _read_json(path) or {}
    for method, cfg in configs.items():
        kept = budgets.get(method)
        if kept and kept.get("minutes") == minutes:
            continue
        log.info("compare: probing %s's throughput (%d steps) for %g minutes", method, PROBE_STEPS, minutes)
        measured = probe(cfg, out / f".probe-{method}")
        steps = steps_for_minutes(minutes, measured["images_per_s"], measured["global_batch"])
        budgets[method] = dict(minutes=minutes, probe_steps=PROBE_STEPS, **measured, steps=steps)
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(budgets, indent=2)))
    return {method: budgets[method] for method in configs}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _images_per_s(run_dir: Path) -> float | None:
    """Median training throughput of the logged windows (the first window, with start-up, left out)."""
    rates = [r["images_per_s"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("images_per_s")]
    rates = rates[1:] if len(rates) > 1 else rates
    return statistics.median(rates) if rates else None


def _check_same_settings(run_dir: Path, cfg: Config) -> None:
    """A finished run is reused only if it was made with the settings asked for now."""
    diff = config_differences(to_dict(load_run_config(run_dir)), to_dict(cfg))
    # the budget and the data define the comparison; how a run was executed does not
    harmless = resumable_keys() - {"train.max_steps", "train.epochs", "data.path"}
    diff = [k for k in diff if k not in harmless and not k.startswith("parallel.")]
    if diff:
        raise ConfigError(
            f"{run_dir} holds a finished run with other settings ({', '.join(diff[:6])}); use another --out, "
            "or the same --steps/--epochs and overrides"
        )


def _evaluate(checkpoint: Path, out_dir: Path, train: str, test: str, eval_options: dict[str, Any]) -> dict:
    """``eval all`` without its floor, reused when its summary is newer than the backbone."""
    done = _read_json(out_dir / "summary.json")
    weights = checkpoint / "backbone.safetensors"
    if done and weights.is_file() and (out_dir / "summary.json").stat().st_mtime >= weights.stat().st_mtime:
        return done
    return run_suite(checkpoint, train, test, out_dir=out_dir, baseline=False, **eval_options)


def _check_budget(methods: Sequence[str], steps: int | None, epochs: int | None, minutes: float | None) -> None:
    """One clear ConfigError for a comparison that cannot run: no or repeated methods, not exactly one budget."""
    if not methods:
        raise ConfigError("compare needs at least one method (--methods swav,barlowtwins,...)")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--methods lists a method twice: {','.join(methods)}")
    if sum(bool(b) for b in (steps, epochs, minutes)) != 1:
        raise ConfigError("compare needs one budget: --steps N, --epochs N or --minutes M (the same for every method)")
    if minutes is not None:
        check_minutes(minutes)


def _pretrained(method: str, cfg: Config, run_dir: Path, preset: str, on_method) -> dict[str, Any]:
    """The summary of ``method``'s finished run in ``run_dir``: reused when it was made with ``cfg``'s
    settings, else pretrained (or resumed) now."""
    summary = _read_json(run_dir / "summary.json")
    if summary and summary.get("status") == "completed":
        _check_same_settings(run_dir, cfg)
        log.info("compare: %s already pretrained in %s, not rerun", method, run_dir)
        if on_method:
            on_method(method, "skip")
        return summary
    log.info("compare: pretraining %s (%s) into %s", method, preset, run_dir)
    if on_method:
        on_method(method, "pretrain")
    summary = pretrain(cfg, run_dir)
    if summary["status"] != "completed":
        raise TrainingError(f"compare: {method} was interrupted; run the same command to resume")
    return summary


def _result(preset: str, run_dir: Path, floor: str, summary: dict, budget: dict, evaluation: dict) -> dict:
    """One method's row of ``compare.json``."""
    return {
        "preset": preset,
        "run_dir": str(run_dir),
        "backbone": summary.get("backbone", "backbone"),
        "floor": floor,
        "steps": summary.get("steps"),
        "global_batch": summary.get("global_batch"),
        "pretrain_seconds": summary.get("seconds"),
        "images_per_s": _images_per_s(run_dir),
        "probe_images_per_s": budget.get("images_per_s"),
        "final_loss": summary.get("final_loss_mean"),
        "trivial_loss": summary.get("trivial_loss", summary.get("uniform_loss")),
        "eval": evaluation["rows"]["pretrained"],
    }


def compare(
    methods: Sequence[str],
    data: str,
    train: str,
    test: str,
    out: str | Path,
    steps: int | None = None,
    epochs: int | None = None,
    preset_suffix: str = "-cifar10",
    overrides: Sequence[str] = (),
    eval_options: dict[str, Any] | None = None,
    on_method: Callable[[str, str], None] | None = None,
    minutes: float | None = None,
    probe: Callable[[Config, Path], dict[str, Any]] = probe_throughput,
) -> dict[str, Any]:
    """Pretrain and evaluate every method of ``methods`` into ``out``; returns the comparison summary.

    ``steps`` (optimizer steps), ``epochs`` or ``minutes`` (pretraining wall time, turned into steps per
    method by a throughput ``probe``) is the budget every method gets; ``overrides`` (``a.b=value``) apply to
    every run, on top of its preset. ``eval_options`` go to :func:`run_suite` (ks, fractions, seeds, ...).
    ``on_method(method, what)`` is told ``"pretrain"``, ``"skip"`` or ``"eval"`` (for logs and tests).
    """
    _check_budget(methods, steps, epochs, minutes)
    out = Path(out)
    eval_options = dict(eval_options or {})
    settings = EvalSettings.pop_from(eval_options)
    if settings != FROM_RUN:  # evaluation settings given one by one travel as one EvalSettings
        eval_options["settings"] = settings
    configs = {m: _run_config(m, preset_suffix, data, steps, epochs, overrides) for m in methods}  # fail early
    out.mkdir(parents=True, exist_ok=True)
    budgets: dict[str, dict[str, Any]] = {}
    if minutes:  # every probe first, on the same machine state, then the runs
        budgets = _time_budgets(configs, out, minutes, probe)
        configs = {m: _run_config(m, preset_suffix, data, budgets[m]["steps"], None, overrides) for m in methods}
    results: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    for method, cfg in configs.items():
        run_dir = out / method
        summary = _pretrained(method, cfg, run_dir, preset_for(method, preset_suffix), on_method)
        if on_method:
            on_method(method, "eval")
        evaluation = _evaluate(run_dir, run_dir / "eval", train, test, eval_options)
        floor = floor_name(summary.get("backbone", "backbone"), read_backbone_spec(run_dir)[0])
        if floor not in floors:
            floor_dir = out / "random_init" / floor.replace(", ", "-").replace("=", "-")
            floor_ckpt = random_init_backbone(run_dir, floor_dir)
            floors[floor] = _evaluate(floor_ckpt, floor_dir / "eval", train, test, eval_options)
        preset = preset_for(method, preset_suffix)
        results[method] = _result(preset, run_dir, floor, summary, budgets.get(method, {}), evaluation)
    setup = dict(data=data, train=train, test=test, steps=steps, epochs=epochs, minutes=minutes)
    return _write_results(out, results, floors, setup)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table_lines(results: dict, floors: dict) -> tuple[list[str], list[str]]:
    """(columns, markdown lines) of the comparison: one row per method, then one per random-init floor; with
    more than one floor each method names the floor it is measured against."""
    header = next(iter(floors.values()))["header"]
    cols = ["method", "preset", "steps", "minutes", "images/s", "final loss (trivial)", *header]
    lines = ["| " + " | ".join(cols) + " |", "| --- " * len(cols) + "|"]
    for method, r in results.items():
        loss = f"{_fmt(r['final_loss'], '.3f')} ({_fmt(r['trivial_loss'], '.3g')})"
        name = f"{method} (vs random init {r['floor']})" if len(floors) > 1 else method
        seconds = r.get("pretrain_seconds")
        minutes = _fmt(seconds and seconds / 60, ".1f")
        cells = [name, r["preset"], str(r["steps"]), minutes, _fmt(r["images_per_s"], ".0f"), loss, *r["eval"]]
        lines.append("| " + " | ".join(cells) + " |")
    for arch, floor in floors.items():
        cells = [f"random init ({arch})", "-", "0", "-", "-", "-", *floor["rows"]["pretrained"]]
        lines.append("| " + " | ".join(cells) + " |")
    return cols, lines


def _write_results(out: Path, results: dict, floors: dict, setup: dict) -> dict[str, Any]:
    cols, lines = table_lines(results, floors)
    table = "\n".join(lines)
    summary = {
        **setup,
        "header": cols,
        "methods": results,
        "floors": {arch: floor["rows"]["pretrained"] for arch, floor in floors.items()},
        "table": table,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write(out / "compare.md", lambda tmp: Path(tmp).write_text(table + "\n"))
    atomic_write(out / "compare.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    figure = _plot_side_by_side(out, results)
    atomic_write(out / "compare.html", lambda tmp: Path(tmp).write_text(_html(cols, lines, figure, setup)))
    summary["html"] = str(out / "compare.html")
    return summary


def _plot_side_by_side(out: Path, results: dict) -> str | None:
    """One column per method: loss (with its trivial value) above, online kNN top-1 and images/s below."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=(3.6 * n + 0.6, 6), squeeze=False, constrained_layout=True)
    for j, (method, r) in enumerate(results.items()):
        rows = read_metrics(Path(r["run_dir"]) / "metrics.jsonl")
        steps = [row["step"] for row in rows]
        ax = axes[0, j]
        ax.plot(steps, [row.get("loss") if row.get("loss") is not None else float("nan") for row in rows])
        if r["trivial_loss"]:
            ax.axhline(r["trivial_loss"], ls="--", color="grey", lw=1, label="trivial (collapse)")
            ax.legend(fontsize=7)
        ax.set(title=f"{method}: loss", xlabel="step")
        ax = axes[1, j]
        knn = [(row["step"], 100 * row["monitor_knn_top1"]) for row in rows if row.get("monitor_knn_top1") is not None]
        if knn:
            ax.plot(*zip(*knn, strict=True), marker="o", color="tab:green")
            ax.set(title=f"{method}: online kNN top-1 (%)", xlabel="step")
        else:
            ax.plot(steps, [row.get("images_per_s") or float("nan") for row in rows], color="tab:purple")
            ax.set(title=f"{method}: images / s", xlabel="step")
        for a in axes[:, j]:
            a.grid(alpha=0.3)
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    return "curves.png"


def _html(cols: list[str], lines: list[str], figure: str | None, setup: dict) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in lines[2:]
    )
    fig = (
        f"<h2>Training curves</h2><img src='{esc(figure)}' alt='curves'>"
        if figure
        else ("<p>No curves: pip install matplotlib</p>")
    )
    if setup.get("minutes"):
        budget = f"{setup['minutes']:g} minutes (steps from a throughput probe)"
    else:
        budget = f"{setup['steps']} steps" if setup.get("steps") else f"{setup.get('epochs')} epochs"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>openseer compare</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
img{{max-width:100%;border:1px solid #eee}}</style></head><body>
<h1>openseer compare</h1><p>Pretrained on {esc(str(setup["data"]))} for {esc(budget)} each; evaluated on
{esc(str(setup["train"]))} / {esc(str(setup["test"]))} (top-1 %, random-init floor last).</p>
<table><tr>{head}</tr>{body}</table>{fig}</body></html>
"""
