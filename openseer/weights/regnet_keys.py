"""The one table of RegNet parameter names: timm's and those of every other layout openseer reads or writes.

A RegNet (Radosavovic et al. 2020) is a stem (conv + BN) and stages of blocks; every block holds the same parts:
an optional shortcut (conv + BN), a 1x1 conv + BN, a grouped 3x3 conv + BN, an optional squeeze-excitation (two
1x1 convs) and a last 1x1 conv + BN. The layouts name them differently:

* timm (``timm/models/regnet.py``): ``stem.conv``, block ``b`` (1-based) of stage ``s`` is ``s{s}.b{b}``;
* torchvision (ported from ClassyVision, ``torchvision/models/regnet.py``): ``stem.{0,1}``,
  ``trunk_output.block{s}.block{s}-{b-1}`` with ``proj.{0,1}``, ``f.a.{0,1}``, ``f.b.{0,1}``, ``f.se.fc{1,2}``,
  ``f.c.{0,1}``;
* VISSL / SEER (ClassyVision AnyNet, ``vissl/models/trunks/regnet.py``): ``_feature_blocks.conv1.stem.{0,1}``,
  ``_feature_blocks.res{s+1}.block{s}-{b-1}`` (the FSDP ``regnet_v2`` trunk adds ``block{s}-part{p}.``) with
  ``proj``/``bn``, ``f.a.{0,1}``, ``f.b.{0,1}``, ``f.se.excitation.{0,2}``, ``f.c``/``f.final_bn``;
* detectron2 (pycls names, ``detectron2/modeling/backbone/regnet.py``): ``stem.{conv,bn}``, ``s{s}.b{b}`` with
  ``proj``/``bn``, ``f.a``/``f.a_bn``, ``f.b``/``f.b_bn``, ``f.se.f_ex.{0,2}``, ``f.c``/``f.c_bn``.

:data:`BLOCK_PARTS` lists each part once in every layout; importing (layout -> timm) and exporting (timm -> layout)
both build their :class:`~openseer.weights.mapping.KeyTable` from it, so the two directions cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from openseer.weights.mapping import KeyTable, Rule

#: Inside one block: timm's name of each part -> its name in each layout.
BLOCK_PARTS: dict[str, dict[str, str]] = {
    "downsample.conv": {"torchvision": "proj.0", "vissl": "proj", "detectron2": "proj"},
    "downsample.bn": {"torchvision": "proj.1", "vissl": "bn", "detectron2": "bn"},
    "conv1.conv": {"torchvision": "f.a.0", "vissl": "f.a.0", "detectron2": "f.a"},
    "conv1.bn": {"torchvision": "f.a.1", "vissl": "f.a.1", "detectron2": "f.a_bn"},
    "conv2.conv": {"torchvision": "f.b.0", "vissl": "f.b.0", "detectron2": "f.b"},
    "conv2.bn": {"torchvision": "f.b.1", "vissl": "f.b.1", "detectron2": "f.b_bn"},
    "se.fc1": {"torchvision": "f.se.fc1", "vissl": "f.se.excitation.0", "detectron2": "f.se.f_ex.0"},
    "se.fc2": {"torchvision": "f.se.fc2", "vissl": "f.se.excitation.2", "detectron2": "f.se.f_ex.2"},
    "conv3.conv": {"torchvision": "f.c.0", "vissl": "f.c", "detectron2": "f.c"},
    "conv3.bn": {"torchvision": "f.c.1", "vissl": "f.final_bn", "detectron2": "f.c_bn"},
}

#: The stem: timm's name -> its name in each layout.
STEM_PARTS: dict[str, dict[str, str]] = {
    "stem.conv": {"torchvision": "stem.0", "vissl": "_feature_blocks.conv1.stem.0", "detectron2": "stem.conv"},
    "stem.bn": {"torchvision": "stem.1", "vissl": "_feature_blocks.conv1.stem.1", "detectron2": "stem.bn"},
}

_TIMM_BLOCK = r"s(\d+)\.b(\d+)\."


@dataclass(frozen=True)
class BlockNaming:
    """How a layout names a block: ``pattern`` matches its prefix (group 1: stage, group 2: block number as
    written), ``first`` is the number of a stage's first block (0 or 1), ``prefix(s, n)`` writes the prefix of
    block ``n`` (as written) of stage ``s``."""

    pattern: str
    first: int
    prefix: Callable[[int, int], str]


BLOCKS: dict[str, BlockNaming] = {
    "torchvision": BlockNaming(
        r"trunk_output\.block(\d+)\.block\d+-(\d+)\.", 0, lambda s, n: f"trunk_output.block{s}.block{s}-{n}."
    ),
    "vissl": BlockNaming(
        r"_feature_blocks\.res\d+\.(?:block\d+-part\d+\.)?block(\d+)-(\d+)\.",
        0,
        lambda s, n: f"_feature_blocks.res{s + 1}.block{s}-{n}.",
    ),
    "detectron2": BlockNaming(_TIMM_BLOCK, 1, lambda s, n: f"s{s}.b{n}."),
}


def _to_timm(part: str, first: int) -> Callable[[re.Match[str]], str]:
    return lambda m: f"s{int(m.group(1))}.b{int(m.group(2)) - first + 1}.{part}."


def _from_timm(part: str, naming: BlockNaming) -> Callable[[re.Match[str]], str]:
    return lambda m: naming.prefix(int(m.group(1)), int(m.group(2)) - 1 + naming.first) + part + "."


def import_table(layout: str, name: str, extra: list[Rule] | None = None) -> KeyTable:
    """``layout``'s RegNet names -> timm's (``extra`` rules after them, e.g. dropping a classifier)."""
    naming = BLOCKS[layout]
    rules: list[Rule] = [(re.escape(names[layout]) + r"\.", timm + ".") for timm, names in STEM_PARTS.items()]
    rules += [
        (naming.pattern + re.escape(names[layout]) + r"\.", _to_timm(timm, naming.first))
        for timm, names in BLOCK_PARTS.items()
    ]
    return KeyTable(name, rules + (extra or []))


def export_table(layout: str, name: str) -> KeyTable:
    """timm's RegNet names -> ``layout``'s: the inverse of :func:`import_table` (the same rows, read backwards)."""
    naming = BLOCKS[layout]
    rules: list[Rule] = [(re.escape(timm) + r"\.", names[layout] + ".") for timm, names in STEM_PARTS.items()]
    rules += [
        (_TIMM_BLOCK + re.escape(timm) + r"\.", _from_timm(names[layout], naming))
        for timm, names in BLOCK_PARTS.items()
    ]
    return KeyTable(name, rules)
