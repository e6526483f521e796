"""``openseer launch``: start a pretraining run on several processes with torchrun, here or through SLURM.

    openseer launch --nproc-per-node 2 pretrain demo --data imgs --out runs/x        # torchrun on this machine
    openseer launch --slurm --nodes 4 --gpus-per-node 8 --time 72:00:00 \\
        pretrain seer-32gf --data /data/shards --out /shared/runs/s32 [--submit]

Locally it runs ``python -m torch.distributed.run --standalone`` (torchrun) with N processes (gloo on CPU, nccl
on GPUs). With ``--slurm`` it writes an sbatch script into the run directory (``RUN_DIR/launch.sbatch``): one
torchrun per node, a c10d rendezvous on the first node, SIGTERM 5 minutes before the time limit (openseer
checkpoints at the next step boundary) and ``--requeue`` (the same ``--out`` resumes). ``--submit`` hands it to
``sbatch``; without it the script is only written, to read or edit first.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from openseer.config import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    la = sub.add_parser(
        "launch",
        help="run `pretrain` on several processes: torchrun here, or an sbatch script for SLURM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    la.add_argument("--nproc-per-node", type=int, default=0, help="processes per node [GPUs per node, or 2 on CPU]")
    la.add_argument("--slurm", action="store_true", help="write an sbatch script instead of running here")
    la.add_argument("--nodes", type=int, default=1, help="SLURM nodes [1]")
    la.add_argument("--gpus-per-node", type=int, default=8, help="SLURM GPUs per node = processes per node [8]")
    la.add_argument("--cpus-per-task", type=int, default=0, help="SLURM CPUs per node task [unset]")
    la.add_argument("--time", default="72:00:00", help="SLURM time limit [72:00:00]")
    la.add_argument("--partition", help="SLURM partition")
    la.add_argument("--account", help="SLURM account")
    la.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node [29500]")
    la.add_argument("--script", help="where to write the sbatch script [RUN_DIR/launch.sbatch]")
    la.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    la.add_argument("pretrain_args", nargs=argparse.REMAINDER, metavar="pretrain ...", help="the pretrain command")


def _pretrain_command(args: argparse.Namespace) -> list[str]:
    rest = list(args.pretrain_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or rest[0] != "pretrain":
        raise ConfigError("openseer launch runs a pretrain command: openseer launch [options] pretrain PRESET ...")
    if "--out" not in rest and not any(a.startswith("--out=") for a in rest):
        raise ConfigError("the pretrain command needs --out RUN_DIR (the run directory every process shares)")
    return rest


def _out_dir(pretrain: list[str]) -> Path:
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
    out = _out_dir(pretrain)
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


def run(args: argparse.Namespace) -> int:
    pretrain = _pretrain_command(args)
    if args.nodes < 1 or args.gpus_per_node < 1 or args.nproc_per_node < 0:
        raise ConfigError("--nodes, --gpus-per-node and --nproc-per-node must be positive")
    if args.slurm:
        script = Path(args.script) if args.script else _out_dir(pretrain) / "launch.sbatch"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(sbatch_script(args, pretrain))
        print(f"wrote {script} ({args.nodes} nodes x {args.gpus_per_node} GPUs)")
        if not args.submit:
            print(f"submit with: sbatch {script}")
            return 0
        if shutil.which("sbatch") is None:
            raise ConfigError("sbatch is not on PATH (not a SLURM login node?); the script is written, submit it there")
        return subprocess.call(["sbatch", str(script)])
    nproc = args.nproc_per_node
    if not nproc:
        import torch

        nproc = torch.cuda.device_count() or 2
    cmd = local_command(nproc, pretrain)
    print("running:", shlex.join(cmd), file=sys.stderr)
    return subprocess.call(cmd)
