"""``openseer launch [--nproc-per-node N | --slurm --nodes N --gpus-per-node G [--submit]] pretrain ...``: run
``pretrain`` on several processes, with torchrun here or through an sbatch script (`openseer.launch`)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from openseer import launch
from openseer.cli.common import Parents
from openseer.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser(
        "launch",
        help="run `pretrain` on several processes: torchrun here, or an sbatch script for SLURM",
        description=launch.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nproc-per-node", type=int, default=0, help="processes per node [GPUs per node, or 2 on CPU]")
    p.add_argument("--slurm", action="store_true", help="write an sbatch script instead of running here")
    p.add_argument("--nodes", type=int, default=1, help="SLURM nodes [1]")
    p.add_argument("--gpus-per-node", type=int, default=8, help="SLURM GPUs per node = processes per node [8]")
    p.add_argument("--cpus-per-task", type=int, default=0, help="SLURM CPUs per node task [unset]")
    p.add_argument("--time", default="72:00:00", help="SLURM time limit [72:00:00]")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node [29500]")
    p.add_argument("--script", help="where to write the sbatch script [RUN_DIR/launch.sbatch]")
    p.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    p.add_argument("pretrain_args", nargs=argparse.REMAINDER, metavar="pretrain ...", help="the pretrain command")
    p.set_defaults(run=run)


def _pretrain_command(args: argparse.Namespace) -> list[str]:
    rest = list(args.pretrain_args)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest or rest[0] != "pretrain":
        raise ConfigError("openseer launch runs a pretrain command: openseer launch [options] pretrain PRESET ...")
    if "--out" not in rest and not any(a.startswith("--out=") for a in rest):
        raise ConfigError("the pretrain command needs --out RUN_DIR (the run directory every process shares)")
    return rest


def run(args: argparse.Namespace) -> int:
    pretrain = _pretrain_command(args)
    if args.nodes < 1 or args.gpus_per_node < 1 or args.nproc_per_node < 0:
        raise ConfigError("--nodes, --gpus-per-node and --nproc-per-node must be positive")
    if args.slurm:
        script = Path(args.script) if args.script else launch.run_dir_of(pretrain) / "launch.sbatch"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(launch.sbatch_script(args, pretrain))
        print(f"wrote {script} ({args.nodes} nodes x {args.gpus_per_node} GPUs)")
        if not args.submit:
            print(f"submit with: sbatch {script}")
            return 0
        if shutil.which("sbatch") is None:
            raise ConfigError("sbatch is not on PATH (not a SLURM login node?); the script is written, submit it there")
        return subprocess.call(["sbatch", str(script)])
    cmd = launch.local_command(args.nproc_per_node or torch.cuda.device_count() or 2, pretrain)
    print("running:", shlex.join(cmd), file=sys.stderr)
    return subprocess.call(cmd)
