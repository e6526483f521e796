"""Peak tensor memory per process of a SwAV step: 1 process, activation checkpointing, DDP and FSDP2 (gloo).

    PYTHONPATH=. python benchmarks/memory.py [--backbone regnety_016 --size 64 --batch 8 --world 2]

For every variant one warm-up step runs, then one step under ``torch.profiler`` with ``profile_memory=True``:
*state* is the bytes of this process's parameters and optimizer state before the step (FSDP2: its shards);
*peak* is state plus the highest allocation level reached during the step (gradients, activations,
gathered FSDP units, temporaries), from the profiler's "Total Allocated" counter of the CPU allocator.
The batch is per process, so the activations are the same in every variant; what changes is the state
(1/N under FSDP2) and the activations kept for backward (activation checkpointing). Prints a Markdown table
and writes benchmarks/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MiB = 2**20


def _local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def measure(args: argparse.Namespace, strategy: str, checkpointing: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from openseer import dist
    from openseer.config import load_config, run_info
    from openseer.methods import METHODS, StepContext
    from openseer.models.backbone import build_backbone
    from openseer.parallel import prepare_model
    from openseer.train import build_optimizer

    cfg = load_config(
        None,
        [
            f"model.backbone={args.backbone}",
            "model.channels_last=false",
            "train.precision=fp32",
            f"train.batch_size={args.batch}",
            f"parallel.strategy={strategy}",
            f"parallel.activation_checkpointing={str(checkpointing).lower()}",
            "parallel.sync_batchnorm=true",
            "swav.freeze_prototypes_steps=0",
        ],
    )
    torch.manual_seed(0)
    info = run_info(cfg, dist.world_size())
    ctx = StepContext(0, 0, info)
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), info)
    model = prepare_model(method, cfg.parallel, torch.device("cpu"), "fp32")
    opt, _ = build_optimizer(cfg, method)
    for g in opt.param_groups:
        g["lr"] = 0.01
    g = torch.Generator().manual_seed(dist.rank())
    crops = [torch.randn(args.batch, 3, args.size, args.size, generator=g) for _ in range(2)]
    crops += [torch.randn(args.batch, 3, args.size // 2, args.size // 2, generator=g) for _ in range(2)]

    def step() -> None:
        method.before_step(ctx)
        model(crops, ctx).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    params = sum(_local_bytes(p) for p in method.parameters())
    optim = sum(_local_bytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    rise = max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)
    n_params = sum(p.numel() for p in method.parameters())
    return {
        "variant": f"{strategy if dist.world_size() > 1 else 'single'} x{dist.world_size()}"
        + (" + AC" if checkpointing else ""),
        "params_total": n_params,
        "state_mib": (params + optim) / MiB,
        "peak_mib": (params + optim + rise) / MiB,
    }


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch.distributed as tdist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    rows = [measure(args, s, c) for s, c in (("ddp", False), ("fsdp", False), ("fsdp", True))]
    torch.save(rows, f"{out}.{rank}")
    tdist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="regnety_016")
    p.add_argument("--size", type=int, default=64, help="global crop side; 2 global + 2 local (half) crops")
    p.add_argument("--batch", type=int, default=8, help="images per process")
    p.add_argument("--world", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // args.world))
    rows = [measure(args, "ddp", False), measure(args, "ddp", True)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows"
        mp.spawn(_worker, args=(args.world, port, args, out), nprocs=args.world, join=True)
        per_rank = [torch.load(f"{out}.{r}") for r in range(args.world)]
    for i in range(len(per_rank[0])):
        row = dict(per_rank[0][i])
        row["state_mib"] = max(r[i]["state_mib"] for r in per_rank)
        row["peak_mib"] = max(r[i]["peak_mib"] for r in per_rank)
        rows.append(row)
    base = rows[0]
    print(f"{args.backbone}, {args.batch} images/process, crops 2 x {args.size} + 2 x {args.size // 2}, fp32")
    print("| variant | params+optimizer MiB/process | ratio | peak MiB/process | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['state_mib']:.1f} | {r['state_mib'] / base['state_mib']:.2f} | "
            f"{r['peak_mib']:.1f} | {r['peak_mib'] / base['peak_mib']:.2f} |"
        )
    result = {"args": vars(args), "rows": rows}
    Path(__file__).with_name("memory.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
