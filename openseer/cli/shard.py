"""``openseer shard --data IMAGES --out DIR [--max-size 1GB --max-count N --resize-longer 512]``: pack images
into WebDataset tar shards with a manifest, for streaming (`openseer.data.pack.write_shards`)."""

from __future__ import annotations

import argparse

from openseer.cli.common import Parents, flags
from openseer.data.pack import write_shards


def add_parser(sub: argparse._SubParsersAction, parents: Parents) -> None:
    p = sub.add_parser("shard", help="pack images into tar shards (WebDataset format) with a manifest, for streaming")
    p.add_argument("--data", required=True, help="folder of images, a tar of images or a file list (.txt)")
    p.add_argument("--out", required=True, help="empty output folder for the shards and manifest.json")
    p.add_argument("--max-size", default="1GB", help="bytes per shard at most, e.g. 500MB, 1GB [1GB]")
    p.add_argument("--max-count", type=int, default=100_000, help="images per shard at most [100000]")
    p.add_argument(
        "--resize-longer", type=int, default=0, help="shrink images whose longer side exceeds this [0: keep]"
    )
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of shrunk images [90]")
    p.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar [shard]")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", dest="labelled", action="store_true", default=None, help="require labels")
    labels.add_argument("--no-labels", dest="labelled", action="store_false", help="store no labels")
    p.add_argument("--no-verify", action="store_true", help="skip re-reading the shards after writing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    options = flags(args, "max_size", "max_count", "resize_longer", "quality", "labelled", "prefix")
    m = write_shards(args.data, args.out, verify=not args.no_verify, **options)
    skipped = ", ".join(f"{n} {r}" for r, n in m["skipped"].items()) or "none"
    print(
        f"{m['total']} images in {len(m['shards'])} shards ({m['bytes'] / 1e6:.1f} MB, "
        f"{len(m['classes'])} classes) in {args.out}; skipped: {skipped}; pattern {m['pattern']}"
    )
    return 0
