"""Do the label-free health signals predict accuracy? Spearman's rho per signal (issue 23 item 4, BENCHMARKS.md).

For every run directory given and every checkpoint it kept (``checkpoints/*.pt`` and ``last.pt``, one per
step), the backbone is loaded and

- step 0 is the run's random initialisation (as `openseer compare`'s floor) unless ``--no-init``;
- the health signals are computed exactly as a run logs them (:class:`openseer.train.health.HealthMonitor` on
  the run's own pool probe: RankMe, alpha-ReQ, std of the l2-normalised features), and
- the method-output signals (RankMe, alpha-ReQ, std of the method's output embedding: `Method.head_embed`) are
  read from the run's ``metrics.jsonl`` where it logged a health check at that step (rows without them, e.g.
  step 0 or runs from before the output signals existed, are left out of those signals' rho only);
- its accuracy on labelled images: kNN (k=20, T=0.07, the ``openseer eval knn`` vote) and a grid-searched linear
  probe (:func:`openseer.eval.linear.linear_probe`) on fixed seeded subsets of ``--train`` / ``--test``.

Then Spearman's rho between each signal and each accuracy: over all checkpoints (methods and budgets mixed),
within each group (a method: its budgets and variants), and across groups at each group's last step. A run's
group is its method unless ``--group-by`` names a config key (e.g. ``vicreg.sim_coeff`` for a sweep inside
one method). Prints a markdown table and writes ``--out`` (JSON rows + rhos) after each run; runs already in an
existing ``--out`` are not measured again (resume, or add runs as they finish; delete the file to re-measure). Run:

    PYTHONPATH=. .venv/bin/python benchmarks/health_correlation.py --runs 'runs/views-*/*' \
        --train $D/cifar10-train.tar --test $D/cifar10-test.tar --out runs/health_correlation.json
"""

from __future__ import annotations

import argparse
import glob
import json
import random
from pathlib import Path

import torch
import yaml

from openseer.data import LabelledDataset, eval_transform, open_source, subset
from openseer.eval.knn import knn_classify
from openseer.eval.linear import linear_probe
from openseer.eval.pipeline import random_init_backbone
from openseer.ops.collapse import alpha_req, embedding_std, rankme
from openseer.train.health import HealthMonitor
from openseer.weights.sources import backbone_from_source

BACKBONE_SIGNALS = ("rankme", "alpha_req", "feature_std")
#: the method-output signals are read from the run's own metrics.jsonl at the checkpoint's step (where the run
#: logged a health check there: runs from before `Method.head_embed` have none, and step 0 never has them)
HEAD_SIGNALS = ("head_rankme", "head_alpha_req", "head_std")
SIGNALS = BACKBONE_SIGNALS + HEAD_SIGNALS
ACCURACIES = ("knn", "linear")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks (ties share their mean rank)."""

    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t, stable=True)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(t):  # ties: their mean rank
            same = t == value
            r[same] = r[same].mean()
        return r

    if len(x) < 3:
        return float("nan")
    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    denom = (a.norm() * b.norm()).item()
    return float((a @ b).item() / denom) if denom > 0 else float("nan")


def labelled_tensors(path: str, count: int, size: int, mean, std, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    source = open_source(path, labelled=True)
    chosen = sorted(random.Random(seed).sample(range(len(source)), min(count, len(source))))
    ds = LabelledDataset(subset(source, chosen), eval_transform(size, 1.0, mean, std), size)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _, ok in items if ok]), torch.tensor([y for _, y, ok in items if ok])


@torch.no_grad()
def features(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    backbone.eval()
    return torch.cat([backbone(images[i : i + batch]).float() for i in range(0, len(images), batch)])


def checkpoints(run: Path, with_init: bool) -> dict[int, Path]:
    """One checkpoint file per step the run kept; step 0: its random initialisation (the compare floor)."""
    found: dict[int, Path] = {}
    if with_init:
        found[0] = random_init_backbone(run / "checkpoints" / "last.pt", run / "health_correlation_init")
    for path in sorted((run / "checkpoints").glob("*.pt")):
        step = int(torch.load(path, map_location="cpu", weights_only=True).get("step", -1))
        if step >= 0:
            found.setdefault(step, path)
    return found


def group_of(cfg: dict, key: str | None) -> str:
    if not key:
        return cfg["method"]
    value: object = cfg
    for part in key.split("."):
        value = value[part]  # type: ignore[index]
    return f"{cfg['method']} {key}={value}"


def logged_head_signals(run: Path) -> dict[int, dict[str, float]]:
    """step -> the method-output health signals the run logged at that step."""
    out: dict[int, dict[str, float]] = {}
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        if "health_head_rankme" in row:
            out[int(row["step"])] = {s: float(row[f"health_{s}"]) for s in HEAD_SIGNALS if f"health_{s}" in row}
    return out


def measure_run(run: Path, args, labelled) -> list[dict]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    aug = cfg["aug"]
    probe = HealthMonitor(
        cfg["data"]["path"], 0, aug["global_size"], 1.0, aug["mean"], aug["std"], every=1, log_every=1
    )
    (xtr, ytr), (xte, yte) = labelled
    rows, logged = [], logged_head_signals(run)
    for step, path in sorted(checkpoints(run, args.with_init).items()):
        if args.steps and step not in args.steps:
            continue
        backbone, _ = backbone_from_source(str(path))
        f = probe.features(backbone)
        ftr, fte = features(backbone, xtr), features(backbone, xte)
        knn = knn_classify(ftr, ytr, fte, yte, ks=(20,))[20]
        linear = linear_probe(ftr, ytr, fte, yte, epochs=args.linear_epochs)["top1"]
        row = {"run": str(run), "group": group_of(cfg, args.group_by), "step": step}
        row.update(rankme=rankme(f), alpha_req=alpha_req(f), feature_std=float(embedding_std(f)))
        row.update(logged.get(step, {}))
        row.update(knn=100 * float(knn), linear=100 * float(linear))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def rho_table(rows: list[dict]) -> dict[str, dict[str, float]]:
    """rho per (scope, signal, accuracy): all rows, each group, each group's last step."""
    scopes: dict[str, list[dict]] = {"all checkpoints": rows}
    for g in sorted({r["group"] for r in rows}):
        scopes[f"within {g}"] = [r for r in rows if r["group"] == g]
    last = {}
    for r in rows:
        if r["step"] >= last.get(r["run"], {"step": -1})["step"]:
            last[r["run"]] = r
    scopes["last step of each run"] = list(last.values())
    return {
        name: {
            f"{s}~{a}": spearman([r[s] for r in sel if s in r], [r[a] for r in sel if s in r])
            for s in SIGNALS
            for a in ACCURACIES
        }
        | {"n": len(sel), "n_head": sum("head_rankme" in r for r in sel)}
        for name, sel in scopes.items()
    }


def markdown(table: dict[str, dict[str, float]]) -> str:
    cols = [f"{s}~{a}" for s in SIGNALS for a in ACCURACIES]
    lines = ["| scope | n (with head) | " + " | ".join(cols) + " |", "| --- " * (len(cols) + 2) + "|"]
    for name, rho in table.items():
        n = f"{rho['n']} ({rho['n_head']})"
        lines.append(f"| {name} | {n} | " + " | ".join(f"{rho[c]:+.2f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="run directories or globs")
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--linear-epochs", type=int, default=30)
    ap.add_argument(
        "--steps",
        type=lambda s: {int(x) for x in s.split(",")},
        default=None,
        help="only these checkpoint steps, e.g. 300,900,1500 [all kept]",
    )
    ap.add_argument("--no-init", dest="with_init", action="store_false", help="leave out step 0 (random init)")
    ap.add_argument("--group-by", default=None, help="config key whose value splits a method into groups")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    runs = sorted({Path(p) for pattern in args.runs for p in glob.glob(pattern) if (Path(p) / "config.yaml").exists()})
    if not runs:
        raise SystemExit(f"no run directories match {args.runs}")
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    size, mean, std = cfg["aug"]["global_size"], cfg["aug"]["mean"], cfg["aug"]["std"]
    labelled = (
        labelled_tensors(args.train, args.train_images, size, mean, std, seed=0),
        labelled_tensors(args.test, args.test_images, size, mean, std, seed=1),
    )
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []  # resumable: measured runs are kept
    done = {r["run"] for r in rows}
    for run in runs:
        if str(run) not in done:
            rows += measure_run(run, args, labelled)
            out.write_text(json.dumps({"rows": rows, "rho": rho_table(rows)}, indent=1))
    table = rho_table(rows)
    out.write_text(json.dumps({"rows": rows, "rho": table}, indent=1))
    print(markdown(table))


if __name__ == "__main__":
    main()
