"""Start a pretraining run on several processes with torchrun, here or through SLURM.

    openseer launch --nproc-per-node 2 pretrain demo --data imgs --out runs/x        # torchrun on this machine
    openseer launch --slurm --nodes 4 --gpus-per-node 8 --time 72:00:00 \\
        pretrain seer-32gf --data /data/shards --out /shared/runs/s32 [--submit]

Locally it runs ``python -m torch.distributed.run --standalone`` (torchrun) with N processes (gloo on CPU, nccl
on GPUs). With ``--slurm`` it writes an sbatch script into the run directory (``RUN_DIR/launch.sbatch``): one
torchrun per node, a c10d rendezvous on the first node, SIGTERM 5 minutes before the time limit (openseer
checkpoints at the next step boundary) and ``--requeue`` (the same ``--out`` resumes). ``--submit`` hands it to
``sbatch``; without it the script is only written, to read or edit first. The command itself is
`openseer.cli.launch`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from openseer.errors import ConfigError


def run_dir_of(pretrain: list[str]) -> Path:
    """The ``--out RUN_DIR`` of a pretrain command line."""
    for i, a in enumerate(pretrain):
        if a.startswith("--out="):
            return Path(a.split("=", 1)[1])
        if a == "--out" and i + 1 < len(pretrain):
            return Path(pretrain[i + 1])
    raise ConfigError("the pretrain command needs --out RUN_DIR")


def local_command(nproc: int, pretrain: list[str]) -> list[str]:
    """The torchrun command line for one machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "openseer.cli",
        *pretrain,
    ]


def sbatch_script(args: argparse.Namespace, pretrain: list[str]) -> str:
    """An sbatch script running ``pretrain`` with one torchrun per node."""
    out = run_dir_of(pretrain)
    lines = [
        "#!/bin/bash",
        "# written by `openseer launch --slurm`; submit with: sbatch THIS_FILE",
        f"#SBATCH --job-name=openseer-{out.name or 'run'}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --time={args.time}",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --requeue",
        f"#SBATCH --output={out.resolve()}/slurm-%j.out",
    ]
    if args.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={args.cpus_per_task}")
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=$SLURM_NNODES",
        f"--nproc_per_node={args.gpus_per_node}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=$HEAD:{args.port}",
        "--rdzv_id=$SLURM_JOB_ID",
        "-m",
        "openseer.cli",
    ]
    # $-variables must reach the shell unquoted; everything the user typed is quoted
    quoted = " ".join(a if a.startswith("--") and "$" in a else shlex.quote(a) for a in torchrun)
    lines += [
        "set -euo pipefail",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
        f"srun {quoted} \\",
        "    " + shlex.join(pretrain),
        "",
    ]
    return "\n".join(lines)
