"""Shared machinery of the weight importers: safe reading, explicit key tables, checked loading.

Every foreign format (``vissl.py``, ``swav.py``, ``dino.py``, ``plain.py``) turns its file into an
:class:`Imported`: the backbone's weights under timm's key names and, where the file has them, the pretraining
heads under openseer's names (``head.mlp.*`` and ``prototypes.weight`` for SwAV; ``head.*`` in DINO's own
names for DINO). The renaming is a :class:`KeyTable`: ordered ``(regex, replacement)`` rules, every key must
match one rule (a key no rule knows is an error, never silently dropped), and rules that map to ``None`` drop
keys on purpose (e.g. a classifier the backbone does not have).

Loading into a module checks names and shapes first and fails on one line naming the first mismatch;
``strict=False`` loads what fits and reports the rest.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from openseer.errors import CheckpointError


class WeightsError(CheckpointError):
    """Weights that cannot be read or do not fit, reported as one line (the CLI exits with code 2)."""


@dataclass
class Imported:
    """Weights read from a SOURCE, already under openseer/timm key names."""

    source: str  # what the user gave
    format: str  # vissl, swav, dino, torchvision, timm, openseer
    backbone: dict[str, torch.Tensor]
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # method-level names, e.g. prototypes.weight
    spec: dict[str, Any] | None = None  # timm spec when the source says which architecture it is
    config: dict[str, Any] = field(default_factory=dict)  # the run's config (openseer sources)
    notes: list[str] = field(default_factory=list)  # things dropped on purpose, shown to the user


Rule = tuple[str, "str | Callable[[re.Match[str]], str] | None"]


class KeyTable:
    """An explicit, ordered renaming table: the first rule whose regex matches the key's start wins.

    A rule ``(pattern, replacement)`` rewrites the matched prefix with ``re.sub`` semantics (``\\1`` groups
    or a function of the match); ``replacement=None`` drops the key on purpose.
    """

    def __init__(self, name: str, rules: list[Rule]):
        self.name = name
        self.rules = [(re.compile(p), r) for p, r in rules]

    def rename(self, key: str) -> str | None:
        for pattern, repl in self.rules:
            m = pattern.match(key)
            if m is None:
                continue
            if repl is None:
                return None
            new = repl(m) if callable(repl) else m.expand(repl)
            return new + key[m.end() :]
        raise KeyError(key)

    def apply(self, state: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Rename every key; returns (renamed, dropped keys). A key no rule matches is a WeightsError."""
        out: dict[str, torch.Tensor] = {}
        dropped: list[str] = []
        for key, value in state.items():
            try:
                new = self.rename(key)
            except KeyError:
                raise WeightsError(
                    f"{where}: key {key!r} is not part of the {self.name} layout openseer knows "
                    f"(a different architecture or format?)"
                ) from None
            if new is None:
                dropped.append(key)
            elif new in out:
                raise WeightsError(f"{where}: keys map twice onto {new!r} ({self.name} table)")
            else:
                out[new] = value
        return out, dropped


def describe(obj: Any) -> str:
    """A short description of what a file held, for error messages."""
    if isinstance(obj, dict):
        keys = list(obj)[:4]
        return f"a dict with keys {keys}{' ...' if len(obj) > 4 else ''}"
    if torch.is_tensor(obj):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def read_file(path: str | Path, expected: str) -> Any:
    """Read a .safetensors file or a torch pickle with ``weights_only=True``; one-line errors.

    ``argparse.Namespace`` (DINO and SwAV store their command-line arguments in checkpoints) is allowed: it
    holds only data. Anything else that needs code to unpickle is refused.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path} does not exist (expected {expected})")
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a weights file (expected {expected})")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (zero bytes); expected {expected}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path}: not a readable safetensors file (expected {expected}): {_first(e)}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused, it is a pickle that needs code to load, not plain weights (expected {expected}; "
            f"weights_only=True found: {_first(e)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise WeightsError(
            f"{path}: corrupt or truncated, or not a torch file (expected {expected}): {_first(e)}"
        ) from None


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def tensors_only(state: Any, where: str, expected: str) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict, or a WeightsError saying what was found instead."""
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{where}: expected {expected}, found {describe(state)}")
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise WeightsError(f"{where}: expected {expected}, found non-tensor entries such as {bad[:3]}")
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` where every key has it (DDP's ``module.``); otherwise return ``state`` unchanged."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fold_bias_into_batchnorm(heads: dict[str, torch.Tensor], linear: str, bn: str) -> None:
    """Remove a Linear bias that feeds a BatchNorm, exactly: BN(Wx + b) == BN'(Wx) with running_mean - b.

    SwAV's and VISSL's projection heads keep that bias; openseer's does not (it is cancelled by the batch
    statistics in training). With the running mean shifted by ``b`` the eval-mode output is unchanged too.
    """
    bias = heads.pop(f"{linear}.bias", None)
    if bias is None or f"{bn}.running_mean" not in heads:
        if bias is not None:
            heads[f"{linear}.bias"] = bias
        return
    heads[f"{bn}.running_mean"] = heads[f"{bn}.running_mean"] - bias


def fit_report(
    module_state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(missing, unexpected, shape mismatches (key, file shape, model shape)) of ``weights`` vs a module."""
    missing = [k for k in module_state if k not in weights]
    unexpected = [k for k in weights if k not in module_state]
    mismatched = [
        (k, tuple(v.shape), tuple(module_state[k].shape))
        for k, v in weights.items()
        if k in module_state and tuple(v.shape) != tuple(module_state[k].shape)
    ]
    return missing, unexpected, mismatched


def load_checked(
    module: nn.Module,
    weights: dict[str, torch.Tensor],
    where: str,
    strict: bool = True,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Load ``weights`` into ``module`` after checking names and shapes; returns the keys left as they were.

    ``strict``: any missing, unexpected or mis-shaped key is a one-line WeightsError naming the first one.
    Otherwise what fits is loaded and the rest is printed through ``log``.
    """
    state = module.state_dict()
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked") or k in state}
    missing, unexpected, mismatched = fit_report(state, weights)
    missing = [k for k in missing if not k.endswith("num_batches_tracked") and not k.endswith("_extra_state")]
    if strict and mismatched:
        k, got, want = mismatched[0]
        raise WeightsError(
            f"{where}: shape mismatch at {k}: file {list(got)} vs model {list(want)} "
            f"({len(mismatched)} mismatched keys; a different architecture or width?)"
        )
    if strict and (missing or unexpected):
        raise WeightsError(
            f"{where}: does not fit: {len(missing)} missing keys (first {missing[:3]}), {len(unexpected)} "
            f"unexpected keys (first {unexpected[:3]}); pass strict=False (--init-strict false) to load the rest"
        )
    fitting = {k: v for k, v in weights.items() if k in state and tuple(v.shape) == tuple(state[k].shape)}
    if not strict and (missing or unexpected or mismatched):
        log(f"{where}: partial load, {len(fitting)} of {len(state)} tensors loaded")
        if missing:
            log(f"  missing (kept as initialised): {', '.join(missing)}")
        if unexpected:
            log(f"  unexpected (ignored): {', '.join(unexpected)}")
        for k, got, want in mismatched:
            log(f"  shape mismatch (kept as initialised): {k}: file {list(got)} vs model {list(want)}")
    with torch.no_grad():
        for k, v in fitting.items():
            state[k].copy_(v.to(state[k].dtype))
    return missing + [k for k, _, _ in mismatched]
