"""Balanced sampling on a long-tailed pool (issue 24): pretrain the same preset for the same steps on the whole
pool, a random subset of N images and the ``openseer curate`` subset of N images; evaluate each on balanced
CIFAR-10.

    PYTHONPATH=. python benchmarks/curate_longtail.py --work runs/longtail --steps 1500 \\
        data.augment=fast train.batch_size=128

**The pool** (``WORK/pool/``, a flat folder of JPEGs named ``000000.jpg``...; ``WORK/manifest.json``): the
CIFAR-10 classes in a seeded order (``--seed 0``: deer, frog, bird, horse, cat, dog, truck, airplane, ship,
automobile); the class of rank r keeps ``round(--per-class-max x --imbalance^(-r/9))`` train images (5000, 2997,
1797, 1077, 646, 387, 232, 139, 83, 50: 12,408 pictures, imbalance factor 100), drawn at random. Duplicates are
planted where a crawl has them, in the head: ``--dup-share`` (20%) of the images of the ``--dup-classes`` (3)
largest classes get 1-3 near copies (uniform), each of a different kind: byte-identical, JPEG re-encoded at
quality 30, a 28 px crop resized back to 32, a horizontal flip (at seed 0: 1,958 originals get 3,936 copies, a
pool of 16,344 images).
All images of the pool are shuffled before naming, so names and order say nothing of class or copies. The
manifest holds the counts per class, the copies planted per kind and, per file, its class and original.

**The steps** (each resumable: rerun the same command after an interruption; a finished step is not redone):

1. **model**: the backbone that curates: ``--model SOURCE``, else the preset pretrained on the whole pool for
   ``--curate-model-steps`` (default: ``--steps``, and then the whole-pool run of step 3 *is* that model);
2. **subsets** of N images (``--target``; default: half the distinct pictures, 6,204): ``WORK/curate/curated.txt``
   from ``openseer.curate`` (exact and near dedup at ``--dedup-threshold``, curate's default 0.90, then
   hierarchical k-means and balanced sampling; no ``eval_sets``: leakage removal would act on the curated arm
   only, and the pool comes from CIFAR-10 train, not test) and ``WORK/random-N-seedS.txt``, N pool images drawn
   with ``--seed``. A weak model's embeddings chain unrelated images into one duplicate component (BENCHMARKS.md
   "Curation"; a 5-step model here kept 3 of 490 images at 0.90, 325 at 0.99): when fewer than N images survive
   dedup the script stops there, naming the count; rerun with a higher ``--dedup-threshold`` (the pool, the
   model and the embeddings are reused). ``longtail.json`` holds curate's stage counts (ideal after dedup: the
   12,408 originals);
3. **pretraining** of ``--preset`` (vicreg-cifar10) plus the overrides on each of whole / random / curated into
   ``WORK/run-<arm>/``, all for exactly ``--steps`` optimizer steps with the same schedule: ``train.max_steps``
   (as ``openseer compare --steps`` sets it), ``train.epochs`` raised to ``ceil(steps / steps per epoch)`` so the
   subsets' smaller epochs do not end the runs early, and the warm-up fixed in steps for all arms at the preset's
   ``optim.warmup_epochs`` of the whole pool (0.25 x 127 = 32 steps at batch 128), i.e. each arm gets
   ``optim.warmup_epochs = 32 / its steps per epoch``; ``derived.json`` of every run is checked for it;
4. **evaluation** on balanced CIFAR-10 (train: the 50,000 train images with labels, test: the 10,000 test
   images; ``--train-per-class`` / ``--test-per-class`` take seeded balanced subsets instead, for smoke runs):
   ``openseer.evaluate`` kNN (k=20), linear (the grid, chosen on a validation split of train), low-shot 1% and
   10% (linear, mean over ``--seeds`` subsets); and the per-class accuracy of that linear probe: the linear
   evaluation returns top-1 only, so the chosen (lr, wd) head is refit here exactly as ``linear_probe`` refits
   it (same standardisation, epochs, batch and seed: its top-1 matches, stored as ``refit_top1``) on the
   features of ``openseer.embed`` (the same feature cache) and scored per class. "tail" is the mean over the
   ``--tail-classes`` (3) smallest classes of the pool (airplane, ship, automobile at seed 0). Kept per arm in
   ``WORK/run-<arm>/longtail_eval.json`` (reused while newer than the run's backbone).

Prints a markdown table (also ``WORK/longtail.md``) and writes ``WORK/longtail.json``: per arm the images, the
duplicates left (images minus distinct originals among them), the pool's largest-class / smallest-class image
ratio within the subset, the tail classes' images, kNN, linear, 1%, 10%, tail accuracy; per-class counts and
accuracies; the curation summary's stage counts; per run the wall time and median step time (first step
left out; ``WORK/run-<arm>/longtail_steps.json``) and per evaluation its seconds.

Cost on the full setting (2 CPU cores, vicreg-cifar10, data.augment=fast, batch 128). Pretraining dominates:
3 x 1500 steps. A step took 0.80-1.14 s (median over 9 steps of each arm) in the smoke run below, on this
machine while two other runs held its cores (load 3-4); on the idle machine it is about 0.63 s (203 images/s,
BENCHMARKS.md "About 20 CPU minutes per method"). So 3 x 16 = 48 minutes idle (60-85 at the loaded rate);
curation embeds 16,344 pool images (about a minute) and clusters ~12-16k vectors (under a minute); each arm's
evaluation extracts 60,000 features once (about 1.5 minutes, shared by kNN, linear, low-shot and the refit, which
themselves take seconds to a minute): in all about 55-60 CPU minutes idle, up to 1.5 hours on a busy machine. A
separate curation model (``--curate-model-steps`` other than ``--steps``) adds its steps at the same rate. Smoke
run (490-image pool, 4 runs of 5-10 steps, 300/200 evaluation images; 58 s wall time on the busy machine):

    PYTHONPATH=. python benchmarks/curate_longtail.py --work /tmp/longtail_smoke --per-class-max 150 --steps 10 \
        --curate-model-steps 5 --train-per-class 30 --test-per-class 20 --dedup-threshold 0.99 \
        data.augment=fast train.batch_size=128
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

import openseer
from openseer.config import Config, ConfigError, global_batch_size, load_config, resumable_keys, to_dict
from openseer.curate.options import DEFAULT_DEDUP_THRESHOLD
from openseer.data import open_source
from openseer.errors import TrainingError
from openseer.eval.knn import align_labels
from openseer.eval.linear import head_logits, standardiser, train_linear_heads
from openseer.io import atomic_write_json, atomic_write_text
from openseer.run_state import config_differences, load_run_config
from openseer.train import pretrain as run_pretrain

CIFAR = Path("/work/shared/data/cifar10")
ARMS = ("whole", "random", "curated")
log = logging.getLogger("curate_longtail")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _decoded(fn):
    return lambda data: fn(Image.open(io.BytesIO(data)))


#: The near copies planted in the head classes (input: the original's JPEG bytes).
COPY_KINDS = {
    "exact": lambda data: data,
    "jpeg_q30": _decoded(lambda im: jpeg(im, 30)),
    "crop_28": _decoded(lambda im: jpeg(im.crop((2, 2, 30, 30)).resize(im.size, Image.BICUBIC))),
    "flip": _decoded(lambda im: jpeg(ImageOps.mirror(im))),
}


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def class_counts(per_class_max: int, imbalance: float, classes: int = 10) -> list[int]:
    """Images of the class of each rank: ``round(per_class_max * imbalance^(-r / (classes - 1)))``."""
    return [round(per_class_max * imbalance ** (-r / (classes - 1))) for r in range(classes)]


def tar_classes(tar: Path) -> dict[str, list[tarfile.TarInfo]]:
    """The members of an ImageFolder tar, per class (the first path part), sorted by name."""
    out: dict[str, list[tarfile.TarInfo]] = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            if m.isfile() and "/" in m.name:
                out.setdefault(m.name.split("/", 1)[0], []).append(m)
    return {c: sorted(ms, key=lambda m: m.name) for c, ms in sorted(out.items())}


def build_pool(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``WORK/pool/`` and ``WORK/manifest.json`` (module docstring); reused when the manifest has the same
    parameters."""
    params = {
        "source": str(args.cifar / "cifar10-train.tar"),
        "per_class_max": args.per_class_max,
        "imbalance": args.imbalance,
        "dup_classes": args.dup_classes,
        "dup_share": args.dup_share,
        "seed": args.seed,
    }
    pool, manifest_path = work / "pool", work / "manifest.json"
    manifest = read_json(manifest_path)
    if manifest is not None and pool.is_dir():
        if manifest["params"] != params:
            raise ConfigError(f"{work} holds a pool built with {manifest['params']}; use another --work")
        return manifest
    members = tar_classes(Path(params["source"]))
    classes = list(members)
    rng = np.random.default_rng(args.seed)
    order = [classes[i] for i in rng.permutation(len(classes))]
    counts = class_counts(args.per_class_max, args.imbalance, len(classes))
    items: list[dict[str, Any]] = []  # {data, class, source, origin (index of the original), kind}
    with tarfile.open(params["source"]) as t:
        for rank, (name, count) in enumerate(zip(order, counts, strict=True)):
            picks = sorted(rng.choice(len(members[name]), count, replace=False))
            originals = []
            for i in picks:
                m = members[name][i]
                originals.append(len(items))
                data = t.extractfile(m).read()
                items.append({"data": data, "class": name, "source": m.name, "kind": "original", "origin": len(items)})
            if rank >= args.dup_classes:
                continue
            for j in sorted(rng.choice(count, round(args.dup_share * count), replace=False)):
                orig = items[originals[j]]
                for kind in rng.choice(list(COPY_KINDS), int(rng.integers(1, 4)), replace=False):
                    data = COPY_KINDS[str(kind)](orig["data"])
                    items.append({**orig, "data": data, "kind": str(kind), "origin": originals[j]})
    names = [f"{i:06d}.jpg" for i in rng.permutation(len(items))]
    tmp = work / "pool.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item, fname in zip(items, names, strict=True):
        (tmp / fname).write_bytes(item["data"])
    shutil.rmtree(pool, ignore_errors=True)
    tmp.rename(pool)
    files = {
        fname: {"class": it["class"], "kind": it["kind"], "origin": names[it["origin"]], "source": it["source"]}
        for it, fname in zip(items, names, strict=True)
    }
    per_class = {
        c: {
            "originals": sum(f["class"] == c and f["kind"] == "original" for f in files.values()),
            "copies": sum(f["class"] == c and f["kind"] != "original" for f in files.values()),
        }
        for c in order
    }
    kinds = [f["kind"] for f in files.values() if f["kind"] != "original"]
    manifest = {
        "params": params,
        "classes_by_size": order,
        "per_class": per_class,
        "originals": sum(v["originals"] for v in per_class.values()),
        "copies": len(kinds),
        "images": len(files),
        "copies_by_kind": {k: kinds.count(k) for k in COPY_KINDS},
        "originals_with_copies": len({f["origin"] for f in files.values() if f["kind"] != "original"}),
        "files": files,
    }
    atomic_write_json(manifest_path, manifest, indent=None)
    return manifest


def balanced_eval_set(work: Path, tar: Path, per_class: int, seed: int) -> Path:
    """``per_class`` seeded images of every class of ``tar`` as an ImageFolder under ``WORK/eval/`` (written once)."""
    out = work / "eval" / f"{tar.stem}-{per_class}-per-class"
    if (out / ".done").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    with tarfile.open(tar) as t:
        for c, ms in tar_classes(tar).items():
            (out / c).mkdir(parents=True)
            for i in sorted(rng.choice(len(ms), min(per_class, len(ms)), replace=False)):
                (out / ms[i].name).write_bytes(t.extractfile(ms[i]).read())
    (out / ".done").write_text("")
    return out


def subset_stats(names: list[str], manifest: dict[str, Any], tail: list[str]) -> dict[str, Any]:
    """Images, duplicates left (images minus distinct originals), per-class counts (pool order), head/tail."""
    files = manifest["files"]
    order = manifest["classes_by_size"]
    counts = {c: 0 for c in order}
    for n in names:
        counts[files[n]["class"]] += 1
    head, last = counts[order[0]], counts[order[-1]]
    return {
        "images": len(names),
        "duplicates_left": len(names) - len({files[n]["origin"] for n in names}),
        "planted_copies": sum(files[n]["kind"] != "original" for n in names),
        "per_class": counts,
        "head_tail_ratio": head / last if last else None,
        "tail_images": sum(counts[c] for c in tail),
    }


def list_names(path: Path, pool: Path) -> list[str]:
    """Pool names (relative to ``pool``) of a file list of absolute paths."""
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return [os.path.relpath(ln, pool) for ln in lines]


def arm_config(args: argparse.Namespace, data: Path, steps: int, warmup_steps: int) -> Config:
    """The preset plus the overrides on ``data`` for exactly ``steps`` steps with ``warmup_steps`` of warm-up."""
    base = load_config(args.preset, args.overrides)
    per_epoch = len(open_source(data)) // global_batch_size(base)
    if per_epoch < 1:
        raise ConfigError(f"{data} holds fewer images than one batch; lower train.batch_size")
    budget = [
        f"data.path={json.dumps(str(data))}",
        f"train.max_steps={steps}",
        f"train.epochs={math.ceil(steps / per_epoch)}",
        f"optim.warmup_epochs={warmup_steps / per_epoch!r}",
    ]
    return load_config(args.preset, [*args.overrides, *budget])


def pretrained(name: str, cfg: Config, run_dir: Path, steps: int, warmup_steps: int) -> dict[str, Any]:
    """The summary of the finished run in ``run_dir`` (made with ``cfg`` on the same data), else pretrain or
    resume it now."""
    data = data_fingerprint(Path(cfg.data.path))
    marker = run_dir / "longtail_data.txt"
    if marker.is_file() and marker.read_text() != data:
        raise ConfigError(f"{run_dir} was trained on another {cfg.data.path} (rewritten since); use another --work")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, data)
    summary = read_json(run_dir / "summary.json")
    if summary and summary.get("status") == "completed":
        diff = config_differences(to_dict(load_run_config(run_dir)), to_dict(cfg))
        harmless = resumable_keys() - {"train.max_steps", "train.epochs", "data.path", "optim.warmup_epochs"}
        diff = [k for k in diff if k not in harmless and not k.startswith("parallel.")]
        if diff:
            raise ConfigError(f"{run_dir} holds a finished run with other settings ({', '.join(diff[:6])})")
        log.info("%s: already pretrained in %s", name, run_dir)
    else:
        log.info("%s: pretraining %d steps into %s", name, steps, run_dir)
        ends = [time.perf_counter()]
        summary = run_pretrain(cfg, run_dir, resume=True, on_step=lambda step, loss: ends.append(time.perf_counter()))
        if summary["status"] != "completed":
            raise TrainingError(f"{name}: run ended {summary['status']!r}; run the same command to resume")
        took = np.diff(ends)[1:]  # the first step (start-up, warm-up of the loader) left out
        timing = {"steps_timed": len(took), "step_s_median": float(np.median(took)) if len(took) else None}
        atomic_write_json(run_dir / "longtail_steps.json", timing)
    derived = read_json(run_dir / "derived.json") or {}
    got = (derived.get("total_steps"), derived.get("warmup_steps"))
    if got != (steps, warmup_steps):
        raise TrainingError(f"{run_dir}: schedule of {got} (steps, warm-up), expected {(steps, warmup_steps)}")
    return summary


def pretrain_info(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Steps, batch, wall time, final loss and the median step time (``longtail_steps.json``) of a run."""
    info = {k: summary.get(k) for k in ("steps", "global_batch", "seconds", "final_loss_mean")}
    return info | (read_json(run_dir / "longtail_steps.json") or {})


def curated_list(work: Path, model: str, target: int, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """``WORK/curate/curated.txt`` of ``openseer.curate`` (reused when made with the same model and options)."""
    out = work / "curate"
    options = {"target": target, "dedup_threshold": args.dedup_threshold, "seed": args.seed}
    summary = read_json(out / "summary.json")
    if (
        summary
        and summary.get("model") == model
        and all(summary["options"].get(k) == v for k, v in options.items())
        and (out / "curated.txt").is_file()
    ):
        return out / "curated.txt", summary
    log.info("curate: %s with %s, %s", work / "pool", model, options)
    try:
        summary = openseer.curate(work / "pool", model, out, progress=False, **options)
    except ConfigError as e:
        if "larger than the" not in str(e):
            raise
        raise ConfigError(
            f"{e}. Deduplication at --dedup-threshold {args.dedup_threshold} chains unrelated images under this "
            "model (BENCHMARKS.md, 'Curation'); rerun with a higher --dedup-threshold (the embeddings are reused)"
        ) from None
    return out / "curated.txt", summary


def data_fingerprint(data: Path) -> str:
    """What a run's data was: a file list's SHA-256 (a list may be rewritten under the same name), or the path."""
    return hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else str(data)


def random_list(work: Path, manifest: dict[str, Any], target: int, seed: int) -> Path:
    path = work / f"random-{target}-seed{seed}.txt"
    if not path.is_file():
        names = sorted(manifest["files"])
        picks = np.random.default_rng([seed, target]).choice(len(names), target, replace=False)
        pool = (work / "pool").resolve()
        atomic_write_text(path, "".join(f"{pool / names[i]}\n" for i in sorted(picks)))
    return path


def per_class_linear(run_dir: Path, train: str, test: str, linear: dict[str, Any]) -> dict[str, Any]:
    """Per-class test accuracy of the linear evaluation's chosen head, refit as ``linear_probe`` does."""
    train_f = openseer.embed(run_dir, train)
    test_f = align_labels(train_f, openseer.embed(run_dir, test))
    x, y = train_f.features.float(), train_f.labels.long()
    mean, std = standardiser(x)
    lr, wd = linear["best"]["lr"], linear["best"]["wd"]
    classes = len(train_f.classes)
    weight, bias = train_linear_heads((x - mean) / std, y, classes, [lr], [wd], linear["epochs"], linear["batch_size"])
    pred = head_logits((test_f.features.float() - mean) / std, weight, bias)[0].argmax(dim=1)
    labels = test_f.labels.long()
    acc = {
        c: float((pred[labels == i] == i).float().mean()) if (labels == i).any() else None
        for i, c in enumerate(train_f.classes)
    }
    return {"per_class": acc, "refit_top1": float((pred == labels).float().mean())}


def evaluate_arm(run_dir: Path, train: str, test: str, seeds: int) -> dict[str, Any]:
    """kNN, linear, low-shot and per-class linear of one run (reused while newer than its backbone)."""
    path = run_dir / "longtail_eval.json"
    setup = {"train": train, "test": test, "seeds": seeds}
    done = read_json(path)
    weights = run_dir / "backbone.safetensors"
    if done and done.get("setup") == setup and path.stat().st_mtime >= weights.stat().st_mtime:
        return done
    started = time.perf_counter()
    knn = openseer.evaluate(run_dir, train, test, "knn", ks=(20,))
    linear = openseer.evaluate(run_dir, train, test, "linear")
    low = openseer.evaluate(run_dir, train, test, "lowshot", fractions=(0.01, 0.1), seeds=seeds, ks=(20,))
    per_class = per_class_linear(run_dir, train, test, linear)
    if abs(per_class["refit_top1"] - linear["top1"]) > 1e-6:
        log.warning("%s: refit top-1 %.4f != linear top-1 %.4f", run_dir, per_class["refit_top1"], linear["top1"])
    result = {
        "setup": setup,
        "knn_top1": knn["top1"]["20"],
        "linear_top1": linear["top1"],
        "linear_best": linear["best"],
        "lowshot_1pct_linear": low["results"]["0.01"]["linear_top1"],
        "lowshot_10pct_linear": low["results"]["0.1"]["linear_top1"],
        "lowshot_1pct_knn": low["results"]["0.01"]["knn_top1"]["20"],
        "lowshot_10pct_knn": low["results"]["0.1"]["knn_top1"]["20"],
        **per_class,
        "num_train": knn["num_train"],
        "num_test": knn["num_test"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(path, result)
    return result


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(rows: dict[str, dict[str, Any]], order: list[str], tail: list[str]) -> str:
    head = [
        "arm",
        "images",
        "duplicates left",
        f"{order[0]}/{order[-1]} images",
        f"tail-{len(tail)} images",
        "kNN k=20",
        "linear",
        "1% linear",
        "10% linear",
        f"tail-{len(tail)} linear ({', '.join(tail)})",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label, r in rows.items():
        s, e = r["subset"], r["eval"]
        ratio = f"{s['per_class'][order[0]]}/{s['per_class'][order[-1]]}"
        tail_acc = [e["per_class"][c] for c in tail]
        cells = [
            label,
            str(s["images"]),
            str(s["duplicates_left"]),
            ratio,
            str(s["tail_images"]),
            pct(e["knn_top1"]),
            pct(e["linear_top1"]),
            pct(e["lowshot_1pct_linear"]["mean"]),
            pct(e["lowshot_10pct_linear"]["mean"]),
            pct(float(np.mean(tail_acc))) + " (" + " / ".join(pct(a) for a in tail_acc) + ")",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per-class linear top-1 (%), classes from the largest to the smallest in the pool:", ""]
    lines += ["| arm | " + " | ".join(order) + " |", "|" + " --- |" * (len(order) + 1)]
    for label, r in rows.items():
        pc = r["eval"]["per_class"]
        lines.append(
            f"| {label} | " + " | ".join(f"{pct(pc[c])} ({r['subset']['per_class'][c]})" for c in order) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="work directory: pool, subsets, runs, results (resumable)")
    ap.add_argument("--preset", default="vicreg-cifar10")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps of every arm [1500]")
    ap.add_argument("--model", help="backbone SOURCE that curates (default: the preset pretrained on the pool)")
    ap.add_argument("--curate-model-steps", type=int, help="steps of that model [--steps: the whole-pool run]")
    ap.add_argument("--target", type=int, default=0, help="N, images of both subsets [0: half the originals]")
    ap.add_argument("--dedup-threshold", type=float, default=DEFAULT_DEDUP_THRESHOLD, help="curate's [%(default)s]")
    ap.add_argument("--per-class-max", type=int, default=5000, help="images of the largest class [5000]")
    ap.add_argument("--imbalance", type=float, default=100.0, help="largest / smallest class [100]")
    ap.add_argument("--dup-classes", type=int, default=3, help="largest classes that get copies [3]")
    ap.add_argument("--dup-share", type=float, default=0.2, help="share of their images copied 1-3 times [0.2]")
    ap.add_argument("--tail-classes", type=int, default=3, help="smallest classes scored per class [3]")
    ap.add_argument("--seeds", type=int, default=3, help="low-shot subsets per fraction [3]")
    ap.add_argument("--train-per-class", type=int, default=0, help="eval train images per class [0: all 5000]")
    ap.add_argument("--test-per-class", type=int, default=0, help="eval test images per class [0: all 1000]")
    ap.add_argument("--seed", type=int, default=0, help="class order, pool draw, copies, random subset, curate")
    ap.add_argument("--cifar", type=Path, default=CIFAR, help="folder of cifar10-{train,test}.tar")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.augment=fast")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    manifest = build_pool(work, args)
    order = manifest["classes_by_size"]
    tail = order[-args.tail_classes :]
    pool = work / "pool"
    log.info("pool: %d images (%d originals, %d copies)", manifest["images"], manifest["originals"], manifest["copies"])
    base = load_config(args.preset, args.overrides)
    pool_per_epoch = manifest["images"] // global_batch_size(base)

    def warmup(steps: int) -> int:  # the preset's warm-up on the whole pool, in steps, for every arm
        return min(round(base.optim.warmup_epochs * pool_per_epoch), steps)

    target = args.target or manifest["originals"] // 2
    train_set, test_set = args.cifar / "cifar10-train.tar", args.cifar / "cifar10-test.tar"
    if args.train_per_class:
        train_set = balanced_eval_set(work, train_set, args.train_per_class, args.seed)
    if args.test_per_class:
        test_set = balanced_eval_set(work, test_set, args.test_per_class, args.seed)

    summaries: dict[str, dict[str, Any]] = {}
    model_steps = args.curate_model_steps or args.steps
    if args.model:
        model = args.model
    else:
        name = "whole" if model_steps == args.steps else "model"
        run_dir = work / f"run-{name}"
        cfg = arm_config(args, pool, model_steps, warmup(model_steps))
        summaries[name] = pretrained(name, cfg, run_dir, model_steps, warmup(model_steps))
        model = str(run_dir)
    curated, curation = curated_list(work, model, target, args)
    data = {"whole": pool, "random": random_list(work, manifest, target, args.seed), "curated": curated}

    rows: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        run_dir = work / f"run-{arm}"
        if arm not in summaries:
            cfg = arm_config(args, data[arm], args.steps, warmup(args.steps))
            summaries[arm] = pretrained(arm, cfg, run_dir, args.steps, warmup(args.steps))
        names = sorted(manifest["files"]) if arm == "whole" else list_names(data[arm], pool)
        log.info("%s: evaluating on %s / %s", arm, train_set, test_set)
        label = arm if arm == "whole" else f"{arm} {target}"
        rows[label] = {
            "run_dir": str(run_dir),
            "data": str(data[arm]),
            "subset": subset_stats(names, manifest, tail),
            "pretrain": pretrain_info(summaries[arm], run_dir),
            "eval": evaluate_arm(run_dir, str(train_set), str(test_set), args.seeds),
        }
    text = table(rows, order, tail)
    result = {
        "command": vars(args) | {"cifar": str(args.cifar), "work": str(work)},
        "pool": {k: v for k, v in manifest.items() if k != "files"},
        "target": target,
        "tail_classes": tail,
        "warmup_steps": warmup(args.steps),
        "curation_model": model,
        "curation": {k: curation.get(k) for k in ("counts", "options", "clusters", "seconds")},
        "rows": rows,
    }
    if "model" in summaries:
        result["curation_model_pretrain"] = pretrain_info(summaries["model"], work / "run-model")
    atomic_write_json(work / "longtail.json", result)
    atomic_write_text(work / "longtail.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
