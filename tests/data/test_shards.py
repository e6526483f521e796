"""Shard naming (lists, globs, braces, URLs), the packing tool, safe reading of malformed tars, file lists."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from openseer.cli import main
from openseer.data.images import DataError
from openseer.data.lists import open_file_list, open_source
from openseer.data.pack import parse_size, write_shards
from openseer.data.shards import (
    ShardSet,
    ShardStats,
    expand_shards,
    is_shard_spec,
    iter_shard,
    verify_shards,
)
from tests.helpers import png_bytes, write_tar


def png(seed: int, size: int = 12) -> bytes:
    return png_bytes(seed, size)


def labelled_folder(root: Path, n: int = 12, classes: int = 3) -> Path:
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png(i))
    return root


# ---- the packing tool ------------------------------------------------------------------------------------


def test_pack_round_trip_counts_bytes_labels_and_manifest(tmp_path):
    data = labelled_folder(tmp_path / "imgs", n=12)
    (tmp_path / "imgs/class0/broken.png").write_bytes(b"")  # counted, not written
    manifest = write_shards(data, tmp_path / "sh", max_count=5, progress=False)
    assert manifest["total"] == 12 and manifest["skipped"] == {"empty": 1} and manifest["source_images"] == 13
    assert [s["count"] for s in manifest["shards"]] == [5, 5, 2]
    assert manifest["classes"] == ["class0", "class1", "class2"]
    assert manifest["pattern"] == "shard-{000000..000002}.tar"
    on_disk = json.loads((tmp_path / "sh/manifest.json").read_text())
    assert on_disk == manifest and verify_shards(str(tmp_path / "sh"))["ok"]
    source = open_source(data, labelled=True)
    by_path = {source.name(i): (source.read(i), source.label(i)) for i in range(len(source))}
    seen = {}
    for shard in sorted((tmp_path / "sh").glob("*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar}
        for name, payload in files.items():
            if name.endswith(".png"):
                key = name[: -len(".png")]
                seen[files[key + ".path"].decode()] = (payload, int(files[key + ".cls"]))
    assert seen == {k: v for k, v in by_path.items() if not k.endswith("broken.png")}  # same bytes, labels
    # the shards as a labelled evaluation source, by folder, brace pattern and glob
    for spec in (tmp_path / "sh", f"{tmp_path}/sh/shard-{{000000..000002}}.tar", f"{tmp_path}/sh/*.tar"):
        src = open_source(str(spec), labelled=True)
        assert len(src) == 12 and src.classes == manifest["classes"]
        assert sorted(src.label(i) for i in range(12)) == sorted(v[1] for v in seen.values())


def test_pack_limits_resize_and_refuses_a_used_folder(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(big / "a.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(big / "b.png")
    m = write_shards(big, tmp_path / "out", max_size="40KB", resize_longer=100, progress=False)
    assert m["resized"] == 1 and m["total"] == 2 and m["classes"] == []
    sizes = sorted(Image.open(io.BytesIO(r.data)).size for r in iter_shard(str(tmp_path / "out/shard-000000.tar")))
    assert sizes == [(40, 30), (100, 67)]
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(big, tmp_path / "out", progress=False)
    assert parse_size("1GB") == 10**9 and parse_size("2MiB") == 2 << 20
    with pytest.raises(DataError):
        parse_size("lots")


def test_shard_command(tmp_path, capsys):
    data = labelled_folder(tmp_path / "imgs", n=6, classes=2)
    assert main(["shard", "--data", str(data), "--out", str(tmp_path / "sh"), "--max-count", "4"]) == 0
    assert "6 images in 2 shards" in capsys.readouterr().out
    assert main(["shard", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


# ---- naming shard sets -----------------------------------------------------------------------------------


def test_brace_glob_list_and_folder_specs(tmp_path):
    for i in range(4):
        write_tar(tmp_path / f"train-{i:06d}.tar", [(f"k{i}.png", png(i))])
    names = [str(tmp_path / f"train-{i:06d}.tar") for i in range(4)]
    assert expand_shards(f"{tmp_path}/train-{{000000..000003}}.tar") == names
    assert expand_shards(f"{tmp_path}/train-{{000001,000003}}.tar") == [names[1], names[3]]
    assert expand_shards(f"{tmp_path}/train-*.tar") == names
    assert expand_shards(f"{names[2]}::{names[0]}::{names[2]}") == [names[2], names[0]]  # order kept, deduped
    assert expand_shards(names[:2]) == names[:2]
    assert is_shard_spec(f"{tmp_path}/*.tar") and is_shard_spec("s3://bucket/a-{0..9}.tar")
    assert not is_shard_spec(names[0]) and not is_shard_spec(tmp_path)
    with pytest.raises(DataError, match="no tar shards match"):
        expand_shards(f"{tmp_path}/nothing-*.tar")
    shards = ShardSet(f"{tmp_path}/train-*.tar")  # no manifest: counted by a scan
    assert shards.counts.tolist() == [1, 1, 1, 1] and shards.offsets.tolist() == [0, 1, 2, 3, 4]


def test_fsspec_memory_filesystem_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    data = labelled_folder(tmp_path / "imgs", n=8, classes=2)
    write_shards(data, tmp_path / "sh", max_count=3, progress=False)
    fs = fsspec.filesystem("memory")
    for f in (tmp_path / "sh").iterdir():
        fs.pipe(f"/bucket/sh/{f.name}", f.read_bytes())
    shards = ShardSet("memory://bucket/sh/shard-{000000..000002}.tar")
    assert shards.counts.tolist() == [3, 3, 2] and shards.classes == ["class0", "class1"]  # from the manifest
    assert len(expand_shards("memory://bucket/sh/*.tar")) == 3
    src = open_source("memory://bucket/sh/*.tar", labelled=True)
    assert len(src) == 8 and set(src.label(i) for i in range(8)) == {0, 1}
    stats = ShardStats()
    assert list(iter_shard("memory://bucket/sh/missing.tar", stats)) == []
    assert stats.counts == {"shard_unreadable": 1}


# ---- malformed tars --------------------------------------------------------------------------------------


def test_malformed_tars_never_write_and_never_raise(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("../escape.png", png(0)), ("/abs/x.png", png(1)), ("ok/0.png", png(2))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            link = tarfile.TarInfo(f"link{kind.decode()}.png")
            link.type, link.linkname = kind, "/etc/passwd"
            tar.addfile(link)
        dup = tarfile.TarInfo("ok/0.png")
        dup.size = 3
        tar.addfile(dup, io.BytesIO(b"abc"))
        info = tarfile.TarInfo("ok/1.png")
        info.size = len(png(3))
        tar.addfile(info, io.BytesIO(png(3)))
    stats = ShardStats()
    records = list(iter_shard(str(path), stats))
    assert [r.key for r in records] == ["ok/0", "ok/1"] and records[0].data == png(2)
    assert stats.counts == {"unsafe_member": 2, "duplicate_member": 1}
    # truncated in the middle of a member: the samples before it are kept, the rest counted
    raw = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2 + 100])
    stats = ShardStats()
    assert len(list(iter_shard(str(cut), stats))) <= 1 and stats.counts.get("shard_truncated") == 1
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"\x00not a tar" * 100)
    stats = ShardStats()
    assert list(iter_shard(str(garbage), stats)) == [] and sum(stats.counts.values()) >= 1
    assert not (tmp_path / "escape.png").exists() and list(work.iterdir()) == []


# ---- file lists ------------------------------------------------------------------------------------------


def test_file_lists_with_and_without_labels(tmp_path):
    data = labelled_folder(tmp_path / "imgs", n=6, classes=2)
    names = sorted(p.relative_to(tmp_path) for p in data.rglob("*.png"))
    (tmp_path / "plain.txt").write_text("# comment\n\n" + "".join(f"{n}\n" for n in names))
    (tmp_path / "lab.tsv").write_text("".join(f"{n}\t{'dog' if i % 2 else 'cat'}\n" for i, n in enumerate(names)))
    plain = open_source(tmp_path / "plain.txt")
    assert len(plain) == 6 and plain.read(0) == (tmp_path / names[0]).read_bytes() and plain.label(0) == -1
    by_folder = open_file_list(str(tmp_path / "plain.txt"), labelled=True)
    assert by_folder.classes == ["class0", "class1"]
    lab = open_source(tmp_path / "lab.tsv", labelled=True)
    assert lab.classes == ["cat", "dog"] and [lab.label(i) for i in range(3)] == [0, 1, 0]
    (tmp_path / "bad.txt").write_text("not an image path\n")
    with pytest.raises(DataError, match="not a tar archive or a file list"):
        open_source(tmp_path / "bad.txt")
    m = write_shards(tmp_path / "lab.tsv", tmp_path / "sh", progress=False)
    assert m["classes"] == ["cat", "dog"] and m["total"] == 6
