"""SOURCE strings: where pretrained weights come from, resolved into timm-named tensors.

A SOURCE is one of

==============================================  ==============================================================
``timm:NAME[.TAG]``                             timm's pretrained weights, through ``timm.create_model(
                                                pretrained=True)`` and the Hugging Face cache
                                                (``timm:regnety_320.seer``, ``timm:vit_small_patch16_224.dino``)
``timm:NAME[.TAG]@FILE``                        the same architecture with a local weights file (timm's
                                                ``pretrained_cfg_overlay=dict(file=FILE)``), for offline machines
``RUN_DIR``                                     an openseer run directory (or its ``backbone.safetensors`` /
                                                ``checkpoints/last.pt``)
``FILE`` or ``FORMAT:FILE``                     a checkpoint file; the format is recognised from its contents
                                                or given: ``vissl:``, ``swav:``, ``dino:``, ``torchvision:``,
                                                ``plain:`` (timm state dict), ``openseer:``
==============================================  ==============================================================

Everything is read with ``torch.load(weights_only=True)`` (or safetensors), renamed through the explicit key
table of its format (``openseer/weights/{vissl,swav,dino,plain}.py``) and checked name by name and shape by
shape against the model it goes into.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from openseer.config import list_presets, load_config
from openseer.io import BACKBONE_SPEC
from openseer.models.backbone import backbone_spec, create_backbone_from_spec
from openseer.weights import dino, plain, swav, vissl
from openseer.weights.mapping import Imported, WeightsError, describe, fit_report, load_checked, read_file

log = logging.getLogger("openseer")

FORMATS = ("vissl", "swav", "dino", "torchvision", "plain", "openseer")
ANY_EXPECTED = "a timm:NAME tag, an openseer run directory, or a VISSL / SwAV / DINO / torchvision / timm checkpoint"


def read_source(source: str | Path, with_heads: bool = True, checkpoint_key: str = "teacher") -> Imported:
    """Read a SOURCE (see module docstring) into timm-named backbone weights (+ heads where present)."""
    text = str(source)
    if text.startswith("timm:"):
        return timm_weights(text)
    fmt, _, rest = text.partition(":")
    if fmt in FORMATS and rest and not Path(text).exists():
        return _read_file(Path(rest), fmt, with_heads, checkpoint_key)
    return _read_file(Path(text), "auto", with_heads, checkpoint_key)


def _read_file(path: Path, fmt: str, with_heads: bool, checkpoint_key: str) -> Imported:
    if path.is_dir():
        return plain.convert_openseer_dir(path, with_heads)
    if path.suffix == ".safetensors" and fmt in ("auto", "openseer"):
        return plain.convert_openseer_safetensors(path)
    expected = {
        "vissl": vissl.EXPECTED,
        "swav": swav.EXPECTED,
        "dino": dino.EXPECTED,
        "openseer": "an openseer checkpoint",
    }.get(fmt, ANY_EXPECTED if fmt == "auto" else plain.EXPECTED)
    obj = read_file(path, expected)
    where = str(path)
    if fmt == "auto":
        fmt = sniff(obj)
        if fmt is None:
            raise WeightsError(f"{where}: expected {ANY_EXPECTED}, found {describe(obj)}")
    if fmt == "vissl":
        return vissl.convert(obj, where)
    if fmt == "swav":
        return swav.convert(obj, where)
    if fmt == "dino":
        return dino.convert(obj, where, checkpoint_key)
    if fmt == "openseer":
        if not plain.is_openseer_checkpoint(obj):
            raise WeightsError(
                f"{where}: expected an openseer checkpoint (model + backbone_spec), found {describe(obj)}"
            )
        return plain.convert_openseer_checkpoint(obj, where)
    return plain.convert(obj, where, "torchvision" if fmt == "torchvision" else "auto")


def sniff(obj: Any) -> str | None:
    """The format of a loaded checkpoint, from its structure; None if it holds no recognisable weights."""
    if vissl.matches(obj):
        return "vissl"
    if dino.matches(obj):
        return "dino"
    if plain.is_openseer_checkpoint(obj):
        return "openseer"
    if swav.matches(obj):
        return "swav"
    if isinstance(obj, dict):
        inner = obj.get("state_dict", obj.get("model", obj))
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            return "plain"
    return None


def source_path(source: str | Path) -> Path | None:
    """The file or folder a SOURCE names (its ``FORMAT:`` prefix removed); None for a ``timm:`` tag."""
    text = str(source)
    if text.startswith("timm:"):
        return None
    fmt, _, rest = text.partition(":")
    if fmt in FORMATS and rest and not Path(text).exists():
        return Path(rest)
    return Path(text)


def is_openseer_path(source: str | Path) -> bool:
    """A run directory or an exported ``backbone.safetensors`` (with its spec beside): openseer's own layout."""
    text = str(source)
    if text.startswith("timm:") or text.partition(":")[0] in FORMATS and not Path(text).exists():
        return False
    path = Path(text)
    return path.is_dir() or (path.suffix == ".safetensors" and path.with_name(BACKBONE_SPEC).is_file())


def backbone_and_config(source: str | Path, strict: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode, run config or {}) of any SOURCE: what evaluation needs."""
    backbone, imported = backbone_from_source(source, strict=strict, log=log.info)
    return backbone, imported.config


# ---- timm ---------------------------------------------------------------------------------------------------
def timm_weights(source: str) -> Imported:
    """``timm:NAME[.TAG][@FILE]`` through timm's own ``create_model(pretrained=True)`` and hub cache."""
    ref, _, file = source[len("timm:") :].partition("@")
    arch = ref.split(".")[0]
    if not arch or arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8] if arch else []
        raise WeightsError(f"{source}: {arch!r} is not a timm model (similar: {', '.join(close) or 'none'})")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if file:
        if not Path(file).is_file():
            raise WeightsError(f"{source}: weights file {file} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
    try:
        model = timm.create_model(ref, pretrained=True, **kwargs)
    except RuntimeError as e:  # e.g. the file's tensors do not fit the architecture
        raise WeightsError(f"{source}: timm could not load these weights into {arch}: {_first(e)}") from None
    except (OSError, ValueError, KeyError, AssertionError) as e:
        raise WeightsError(
            f"{source}: cannot get timm's pretrained weights for {ref!r} (no network and not in the Hugging Face "
            f"cache?): {_first(e)}; download once where there is network (the cache is HF_HUB_CACHE) or pass a "
            f"local file as timm:{ref}@/path/to/weights"
        ) from None
    return Imported(
        source=source, format="timm", backbone=model.state_dict(), spec={"timm_name": arch}, notes=[f"timm {ref}"]
    )


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:240] if text else type(e).__name__


# ---- which architecture holds these weights ---------------------------------------------------------------
def _meta_model(spec: dict[str, Any]) -> nn.Module:
    with torch.device("meta"):
        return create_backbone_from_spec(spec)


def _candidates(weights: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    if "stem.conv.weight" in weights and "s1.b1.conv1.conv.weight" in weights:
        family = "regnety_*" if any(".se." in k for k in weights) else "regnetx_*"
        specs = [{"timm_name": n} for n in timm.list_models(family)]
        return specs + _preset_regnets()
    if "layer1.0.conv1.weight" in weights:
        return [{"timm_name": n} for n in timm.list_models(["resnet[0-9]*", "wide_resnet*", "resnext*"])]
    if "patch_embed.proj.weight" in weights and "pos_embed" in weights:
        dim, patch = weights["patch_embed.proj.weight"].shape[0], weights["patch_embed.proj.weight"].shape[-1]
        size = {192: "tiny", 384: "small", 768: "base", 1024: "large"}.get(dim, "?")
        side = int((weights["pos_embed"].shape[1] - 1) ** 0.5) * patch  # image side of the position grid
        names = sorted(timm.list_models(f"vit_{size}_patch{patch}_*"), key=lambda n: f"_{side}" not in n)
        return [{"timm_name": n} for n in names]
    return []


def _preset_regnets() -> list[dict[str, Any]]:
    """The SEER sizes of openseer's presets (RegNetCfg specs that timm has no name for)."""
    specs = []
    for name in list_presets():
        spec = backbone_spec(load_config(name).model)
        if "regnet_cfg" in spec and spec not in specs:
            specs.append({"regnet_cfg": spec["regnet_cfg"]})
    return specs


def infer_spec(imported: Imported) -> dict[str, Any]:
    """The timm spec whose state dict has exactly these names and shapes (classifier aside).

    Raises a WeightsError naming the closest candidate and the keys that differ when none fits (e.g. the
    released SEER RG-256GF weights, which timm's regnety_2560 does not match).
    """
    if imported.spec is not None:
        return imported.spec
    weights = imported.backbone
    best: tuple[int, dict[str, Any], list[str]] | None = None
    for spec in _candidates(weights):
        try:
            model = _meta_model(spec)
        except Exception:  # noqa: BLE001 - a candidate timm cannot build on this install
            continue
        missing, unexpected, mismatched = fit_report(model.state_dict(), drop_classifier(weights, model)[0])
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
        if not (missing or unexpected or mismatched):
            return spec
        diff = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        diff += [f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in mismatched]
        if best is None or len(diff) < best[0]:
            best = (len(diff), spec, diff)
    if best is None:
        raise WeightsError(
            f"{imported.source}: cannot tell which timm architecture these {imported.format} weights belong to "
            f"(keys like {list(weights)[:3]}); give the architecture (model.backbone) explicitly"
        )
    _, spec, diff = best
    raise WeightsError(
        f"{imported.source}: no timm architecture matches these {imported.format} weights; closest is {spec} "
        f"with {len(diff)} differing keys, first: {'; '.join(diff[:3])}"
    )


def drop_classifier(weights: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove the classifier keys (timm's ``pretrained_cfg['classifier']``) that a headless model lacks."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    state = model.state_dict()
    dropped = [k for k in weights if k not in state and any(k.startswith(f"{n}.") for n in names)]
    return {k: v for k, v in weights.items() if k not in dropped}, dropped


# ---- building and initialising ------------------------------------------------------------------------------
def backbone_from_source(
    source: str | Path, spec: dict[str, Any] | None = None, strict: bool = True, log: Callable[[str], None] = print
) -> tuple[nn.Module, Imported]:
    """A timm backbone (eval mode, CPU) holding the weights of ``source``; its spec is inferred if not given."""
    imported = read_source(source, with_heads=False)
    spec = spec or infer_spec(imported)
    imported.spec = spec
    backbone = create_backbone_from_spec(spec)
    load_into_backbone(backbone, imported, strict, log)
    return backbone.eval(), imported


def load_into_backbone(
    backbone: nn.Module, imported: Imported, strict: bool = True, log: Callable[[str], None] = print
) -> list[str]:
    weights, dropped = drop_classifier(imported.backbone, backbone)
    if dropped:
        imported.notes.append(f"ignored the classifier {dropped}")
    where = f"{imported.source} ({imported.format} backbone)"
    return load_checked(backbone, weights, where, strict, log)


def init_method_from(
    method: nn.Module, source: str | Path, strict: bool = True, log: Callable[[str], None] = print
) -> Imported:
    """Initialise a freshly built method from SOURCE before training: every backbone tower the method declares
    (``Method.towers``: the online backbone and its EMA copies, e.g. BYOL's target, DINO's teacher), and the
    heads that the source holds (SwAV projection head + prototypes from VISSL/SwAV/openseer files; DINO's head
    and centre), copied into each head tower of that name and its EMA copies.

    Call it after the method is built and before the optimizer (and DDP/FSDP wrapping). With ``strict`` any
    key that does not fit is an error; otherwise what fits is loaded and the rest is printed through ``log``.
    A source without heads (timm, torchvision) leaves the heads as initialised, and says so.
    """
    imported = read_source(source, with_heads=True)
    for path, backbone in _backbones(method):
        load_into_backbone(backbone, imported, strict, log)
        log(f"init: {path} <- {imported.source} ({imported.format}, {len(imported.backbone)} tensors)")
    head_weights = _head_targets(imported.heads, method)
    if imported.heads and head_weights:
        _load_heads(method, head_weights, f"{imported.source} ({imported.format} heads)", strict, log)
        log(f"init: heads <- {imported.source}: {', '.join(sorted({k.split('.')[0] for k in head_weights}))}")
    elif imported.heads and strict:
        raise WeightsError(
            f"{imported.source}: holds {imported.format} heads ({list(imported.heads)[:3]}) that this method has "
            f"no place for; pass strict=False (--init-strict false) to take the backbone alone"
        )
    else:
        held = "unused" if imported.heads else "no"
        log(f"init: heads stay randomly initialised ({imported.source} holds {held} heads)")
    for note in imported.notes:
        log(f"init: {note}")
    return imported


def _backbones(method: Any) -> list[tuple[str, nn.Module]]:
    """The backbones to initialise: every backbone tower ``method`` (a :class:`openseer.methods.base.Method`)
    declares, EMA copies included."""
    found = [(tower.path, module) for tower, module in method.tower_modules("backbone")]
    if not found:
        raise WeightsError(f"{type(method).__name__} declares no backbone tower to initialise")
    return found


_PARAM_ALIASES = {  # torch.nn.utils.weight_norm (DINO's file) -> torch.nn.utils.parametrizations.weight_norm
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}


def _head_targets(heads: dict[str, torch.Tensor], method: Any) -> dict[str, torch.Tensor]:
    """Head tensors under the method's own keys: a source key ``<tower>.<rest>`` goes to the declared head
    tower of that path and to every EMA copy of it (DINO: ``head.*`` -> ``head.*`` and ``teacher.head.*``)."""
    method_state = method.state_dict()
    copies: dict[str, list[str]] = {}
    for tower, _ in method.tower_modules("head"):
        copies.setdefault(tower.ema_of or tower.path, []).append(tower.path)
    out = {}
    for key, value in heads.items():
        names = [key] + [key.replace(a, b) for a, b in _PARAM_ALIASES.items() if a in key]
        for name in names:
            if name in method_state:  # the same key (a head, DINO's centre)
                out[name] = value
            for online, paths in copies.items():
                if name.startswith(online + "."):
                    rest = name[len(online) :]
                    out.update({p + rest: value for p in paths if p + rest in method_state})
    return out


def _load_heads(
    method: Any, weights: dict[str, torch.Tensor], where: str, strict: bool, log: Callable[[str], None]
) -> None:
    state = {k: v for k, v in method.state_dict().items() if k.split(".")[0] in {w.split(".")[0] for w in weights}}
    backbones = tuple(path + "." for path, _ in _backbones(method))
    state = {k: v for k, v in state.items() if not k.startswith(backbones)}
    holder = _StateHolder(state)
    load_checked(holder, weights, where, strict, log)


class _StateHolder(nn.Module):
    """Presents a subset of a module's state dict (tensors shared with the module) to :func:`load_checked`."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self._subset = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._subset
