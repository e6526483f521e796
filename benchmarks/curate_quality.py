"""Near-duplicate and leakage detection of ``openseer curate`` on CIFAR-10 with planted copies (BENCHMARKS.md).

The pool: ``--originals`` CIFAR-10 train images, plus for ``--per-kind`` of them one copy of each kind (JPEG
quality 15, down-scaled to 20 px, centre crop of 85%, colour shift, horizontal flip, byte-identical), plus
``--leaks`` CIFAR-10 test images (half byte-identical, half transformed by a rotating kind); the evaluation set
is the first ``--test`` test images (holding the leaked ones). Reports, per kind and threshold: recall (the copy
ends in its original's component), precision of the removals, and the same for exact hashing alone; leakage
recall and false removals. Run:

    PYTHONPATH=. python benchmarks/curate_quality.py --model RUN_DIR --work /tmp/curate_q
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from openseer.curate.embed import embed_source, embedding_key
from openseer.curate.graph import UnionFind, edges_above, knn
from openseer.curate.leakage import leakage_pairs
from openseer.curate.workflow import exact_groups, load_model
from openseer.data import open_source
from openseer.eval.features import feature_extractor
from openseer.eval.settings import EvalSettings

CIFAR = Path("/work/shared/data/cifar10")


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


KINDS = {
    "jpeg_q15": lambda im: jpeg(im, 15),
    "resized_20px": lambda im: jpeg(im.resize((20, 20), Image.BICUBIC)),
    "crop_85": lambda im: jpeg(im.crop((2, 2, 29, 29))),
    "colour_shift": lambda im: jpeg(ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.6)),
    "flip": lambda im: jpeg(ImageOps.mirror(im)),
}


def members(tar: Path, n: int) -> list[tuple[str, bytes]]:
    out = []
    with tarfile.open(tar) as t:
        files = [m for m in t.getmembers() if m.isfile()]
        rng = np.random.default_rng(0)
        for m in sorted(rng.choice(len(files), n, replace=False)):
            out.append((files[m].name, t.extractfile(files[m]).read()))
    return out


def build(work: Path, originals: int, per_kind: int, leaks: int, test: int) -> dict:
    pool, evalset = work / "pool", work / "test"
    truth = {"copies": {}, "leaks": {}}
    train = members(CIFAR / "cifar10-train.tar", originals)
    for i, (_, data) in enumerate(train):
        (pool / f"orig/{i:05d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (pool / f"orig/{i:05d}.jpg").write_bytes(data)
    kinds = {**KINDS, "exact": None}
    for k, (kind, fn) in enumerate(kinds.items()):
        (pool / kind).mkdir(parents=True, exist_ok=True)
        for j in range(per_kind):
            src = k * per_kind + j
            data = train[src][1]
            (pool / f"{kind}/{src:05d}.jpg").write_bytes(data if fn is None else fn(Image.open(io.BytesIO(data))))
            truth["copies"][f"{kind}/{src:05d}.jpg"] = (kind, f"orig/{src:05d}.jpg")
    tests = members(CIFAR / "cifar10-test.tar", test)
    evalset.mkdir(parents=True, exist_ok=True)
    (pool / "leak").mkdir(parents=True, exist_ok=True)
    for i, (_, data) in enumerate(tests):
        (evalset / f"{i:05d}.jpg").write_bytes(data)
        if i < leaks:
            kind = "exact" if i % 2 == 0 else list(KINDS)[(i // 2) % len(KINDS)]
            out = data if kind == "exact" else KINDS[kind](Image.open(io.BytesIO(data)))
            (pool / f"leak/{i:05d}.jpg").write_bytes(out)
            truth["leaks"][f"leak/{i:05d}.jpg"] = (kind, f"{i:05d}.jpg")
    return truth


def scores(names, components, truth, removed) -> dict:
    """Per kind: recall (copy joined to its original); precision of the removed images."""
    at = {n: i for i, n in enumerate(names)}
    out = {}
    for kind in [*KINDS, "exact"]:
        pairs = [(at[c], at[o]) for c, (k, o) in truth["copies"].items() if k == kind]
        out[kind] = round(float(np.mean([components[a] == components[b] for a, b in pairs])), 3)
    planted = {at[c] for c in truth["copies"]} | {at[o] for _, o in truth["copies"].values()}
    wrong = [i for i in np.flatnonzero(removed) if i not in planted]
    out["precision"] = round(1 - len(wrong) / max(1, int(removed.sum())), 3)
    out["removed"] = int(removed.sum())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--work", default="/tmp/curate_q")
    p.add_argument("--originals", type=int, default=4000)
    p.add_argument("--per-kind", type=int, default=100)
    p.add_argument("--leaks", type=int, default=100)
    p.add_argument("--test", type=int, default=2000)
    p.add_argument("--thresholds", default="0.8,0.85,0.9,0.93,0.95,0.97")
    args = p.parse_args()
    work = Path(args.work)
    truth = build(work, args.originals, args.per_kind, args.leaks, args.test)
    backbone, config = load_model(args.model)
    run = EvalSettings(image_size=32, batch_size=256, num_workers=0, device="cpu").resolve(config)
    ex = feature_extractor(backbone)
    result = {"model": args.model, "sizes": vars(args)}
    embs = {}
    for name in ("pool", "test"):
        src = open_source(work / name)
        t0 = time.perf_counter()
        embs[name] = embed_source(src, ex, run, work / f"emb-{name}", embedding_key(args.model, src, run, "pooled"))
        result[f"embed_{name}_images_per_s"] = round(len(src) / (time.perf_counter() - t0), 1)
    pool, test = embs["pool"], embs["test"]
    valid = np.flatnonzero(pool.ok)
    sims, idx = knn(pool.vectors[valid], pool.vectors[valid], 17)
    exact = exact_groups(pool.digests, valid)
    uf = UnionFind(len(pool))
    for g in exact:
        uf.union_edges((g[0], o) for o in g[1:])
    hashed = uf.labels()
    result["exact_hash_only"] = scores(pool.names, hashed, truth, hashed != np.arange(len(hashed)))
    for t in map(float, args.thresholds.split(",")):
        uf2 = UnionFind(len(pool))
        uf2.parent[:] = hashed
        a, b, _ = edges_above(sims, idx, t)
        uf2.union_edges(zip(valid[a], valid[b], strict=True))
        comp = uf2.labels()
        row = scores(pool.names, comp, truth, comp != np.arange(len(comp)))
        ok = np.flatnonzero(test.ok)
        pairs = leakage_pairs(pool.vectors[valid], pool.digests[valid], valid, test.vectors[ok], test.digests[ok], t)
        found = {pool.names[a] for a, _, _ in pairs}
        per = {}
        for kind in [*KINDS, "exact"]:
            planted = [n for n, (k, _) in truth["leaks"].items() if k == kind]
            per[kind] = f"{sum(n in found for n in planted)}/{len(planted)}"
        row["leak_recall"] = per
        row["leak_false_removals"] = len([n for n in found if n not in truth["leaks"]])
        result[f"threshold_{t}"] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
