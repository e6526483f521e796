#!/usr/bin/env bash
# One short GPU check (well under 10 minutes on one H200): images/s and peak memory of SwAV training steps of
# SEER's RegNetY-128GF and RegNetY-256GF at SEER's crops (2 x 224 + 4 x 96), bf16 autocast, channels_last,
# activation checkpointing on every block, LARS, 16 images per GPU (SEER: 8192 over 512 GPUs).
#
#   bash benchmarks/gpu_check.sh            # from the repository root; writes $OUT/gpu_check.json
#   STEPS=5 BATCH=16 PRESETS="seer-128gf seer-256gf" bash benchmarks/gpu_check.sh
#   DEVICE=cpu PRESETS=demo STEPS=1 WARMUP=0 BATCH=2 bash benchmarks/gpu_check.sh   # the script itself, on a CPU
#                                                                                    # (tests/test_benchmarks.py)
#
# Compare with SEER's own throughput: 8,704 images per 6.1 s on 512 V100s = ~2.8 images/s per GPU (256GF).
# Needs only torch, timm, pyyaml, safetensors (no data: random crops); runs from the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
export STEPS="${STEPS:-5}" WARMUP="${WARMUP:-2}" BATCH="${BATCH:-16}"
export PRESETS="${PRESETS:-seer-128gf seer-256gf}" DEVICE="${DEVICE:-cuda}"
export RESULT="${RESULT:-${OUT:-benchmarks}/gpu_check.json}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout 540 "${PYTHON:-python3}" - <<'EOF'
import json, os, time

import torch

from openseer.config import load_config
from openseer.methods import METHODS
from openseer.models.backbone import build_backbone
from openseer.parallel import prepare_model
from openseer.config import run_info
from openseer.methods import StepContext
from openseer.train import build_optimizer

dev = torch.device(os.environ["DEVICE"])
cuda = dev.type == "cuda"
assert torch.cuda.is_available() or not cuda, "no GPU visible"
sync = torch.cuda.synchronize if cuda else (lambda: None)
name = torch.cuda.get_device_name() if cuda else "cpu"
steps, warmup, batch = int(os.environ["STEPS"]), int(os.environ["WARMUP"]), int(os.environ["BATCH"])
print(f"torch {torch.__version__}, {name}, batch {batch}/GPU, {steps} timed steps")
results = []
for preset in os.environ["PRESETS"].split():
    cfg = load_config(preset, [f"train.batch_size={batch}", "parallel.activation_checkpointing=true"])
    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ctx = StepContext(0, 0, run_info(cfg))
    method = METHODS["swav"].build(cfg, build_backbone(cfg.model), ctx.info).to(dev)
    method = method.to(memory_format=torch.channels_last)
    model = prepare_model(method, cfg.parallel, dev, cfg.train.precision)  # 1 process: checkpointing only
    opt, _ = build_optimizer(cfg, method)
    for g in opt.param_groups:
        g["lr"] = 0.01
    a = cfg.aug
    sizes = [a.global_size] * a.global_crops + [a.local_size] * a.local_crops
    crops = [torch.randn(batch, 3, s, s, device=dev).to(memory_format=torch.channels_last) for s in sizes]
    times, losses = [], []
    for i in range(warmup + steps):
        sync()
        t = time.perf_counter()
        method.before_step(ctx)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(crops, ctx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t)
        losses.append(float(loss))
    step_s = sorted(times)[len(times) // 2]
    row = {
        "preset": preset,
        "params_M": sum(p.numel() for p in method.parameters()) / 1e6,
        "batch_per_gpu": batch,
        "crops": f"{a.global_crops}x{a.global_size}+{a.local_crops}x{a.local_size}",
        "median_step_s": step_s,
        "images_per_s": batch / step_s,
        "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses_finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
        "seer_v100_images_per_s": 2.8,
    }
    print(json.dumps(row))
    results.append(row)
    del method, model, opt, crops
    if cuda:
        torch.cuda.empty_cache()
with open(os.environ["RESULT"], "w") as f:
    json.dump({"torch": torch.__version__, "gpu": name, "rows": results}, f, indent=2)
print("wrote", os.environ["RESULT"])
EOF
