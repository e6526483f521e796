"""Tar members in file lists (``ARCHIVE::MEMBER``): the syntax, reading members through a per-process index with
the same pixels as the tar itself, counted skips for missing members, one error line for a missing archive."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from openseer.cli import main
from openseer.data import PretrainDataset
from openseer.data.images import BadImage, DataError, load_rgb
from openseer.data.lists import ListSource, open_file_list, open_source
from openseer.data.pack import write_shards
from openseer.data.tars import TarIndex, file_entry, member_entry, split_entry
from tests.helpers import TINY_OVERRIDES, png_bytes, write_tar

MEMBERS = [("cat/0.png", 0), ("./cat/1.png", 1), ("dog/2.png", 2), ("dog/x/3.png", 3), ("notes.txt", -1)]


def pool_tar(path: Path, compressed: bool = False) -> Path:
    """A tar of 4 PNGs in two class folders (one named with a ``./`` prefix) and a text file."""
    members = [(name, png_bytes(seed, 12) if seed >= 0 else b"text") for name, seed in MEMBERS]
    write_tar(path, members)
    if compressed:
        path.write_bytes(gzip.compress(path.read_bytes()))
    return path


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def direct_names(source) -> list[str]:
    return [source.name(i) for i in range(len(source))]


def pixels(source, i: int) -> np.ndarray:
    return np.asarray(load_rgb(source.read(i)))


def test_entry_syntax_parses_and_round_trips():
    assert split_entry("/d/pool.tar::cat/0.png") == ("/d/pool.tar", "cat/0.png")
    assert split_entry("rel/a.TAR.GZ::x::y.jpg") == ("rel/a.TAR.GZ", "x::y.jpg")  # the first '::' after a tar name
    assert split_entry("/d/a::b/c.tar::m.jpg") == ("/d/a::b/c.tar", "m.jpg")
    assert split_entry("s3://bucket/shard-000001.tar::000000042.jpg") == (
        "s3://bucket/shard-000001.tar",
        "000000042.jpg",
    )
    for plain in ["/d/cat/0.png", "a::b.jpg", "::x.jpg", "pool.tar"]:
        assert split_entry(plain) is None and file_entry(plain) == plain
    assert split_entry(member_entry("/d/p.tgz", "a/b.png")) == ("/d/p.tgz", "a/b.png")
    with pytest.raises(DataError, match="rename the archive"):
        member_entry("/d/pool.bin", "a.png")  # would not parse back
    with pytest.raises(DataError, match="reads as ARCHIVE::MEMBER"):
        file_entry("/d/odd.tar::name.png")


@pytest.mark.parametrize("compressed", [False, True])
def test_member_list_reads_the_same_pixels_as_the_tar(tmp_path, compressed, monkeypatch):
    archive = pool_tar(tmp_path / ("pool.tar.gz" if compressed else "pool.tar"), compressed)
    direct = open_source(archive)
    assert direct_names(direct) == ["cat/0.png", "cat/1.png", "dog/2.png", "dog/x/3.png"]
    # what curate writes: absolute ARCHIVE::MEMBER lines; by hand: relative archive paths and './' spellings
    write_list(tmp_path / "abs.txt", [direct.entry(i) for i in range(len(direct))])
    sub = tmp_path / "lists"
    sub.mkdir()
    rel = [f"../{archive.name}::{name}" for name in ["./cat/0.png", "cat/1.png", "dog//2.png", "dog/x/3.png"]]
    write_list(sub / "rel.txt", rel)
    built = []
    monkeypatch.setattr("openseer.data.lists.TarIndex", lambda *a: built.append(a) or TarIndex(*a))
    for listed in [open_source(tmp_path / "abs.txt"), open_source(sub / "rel.txt")]:
        assert isinstance(listed, ListSource) and len(listed) == len(direct) and listed.archives == [str(archive)]
        for i in range(len(direct)):
            assert listed.read(i) == direct.read(i)
            np.testing.assert_array_equal(pixels(listed, i), pixels(direct, i))
            assert listed.entry(i) == direct.entry(i)  # the archive resolved, the member normalised
        worker = pickle.loads(pickle.dumps(listed))  # a DataLoader worker builds its own index
        assert worker.read(3) == direct.read(3)
    # each list indexed the archive once for its 8 reads (one pass over its headers), its unpickled copy once more
    assert [(path, wanted) for path, wanted in built] == [(str(archive), set(direct_names(direct)))] * 4


class _Bytes(torch.utils.data.Dataset):
    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, bytes]:
        return os.getpid(), self.source.read(i)


def test_dataloader_workers_read_members_with_their_own_index(tmp_path):
    archive = pool_tar(tmp_path / "pool.tar")
    direct = open_source(archive)
    src = open_source(write_list(tmp_path / "l.txt", [direct.entry(i) for i in range(4)] * 4))
    assert src.read(0) == direct.read(0) and src._indexes[0].is_open  # the main process's open file
    loader = torch.utils.data.DataLoader(_Bytes(src), batch_size=None, num_workers=2)
    got = list(loader)
    assert [data for _, data in got] == [direct.read(i % 4) for i in range(16)]
    assert len({pid for pid, _ in got} - {os.getpid()}) == 2  # read in the workers, each with its own index


def test_members_and_files_mix_labels_and_open_archives(tmp_path):
    a = pool_tar(tmp_path / "a.tar")
    b = write_tar(tmp_path / "b.tar", [("top.png", png_bytes(7, 12)), ("bird/4.png", png_bytes(8, 12))])
    (tmp_path / "files/bird").mkdir(parents=True)
    (tmp_path / "files/bird/5.png").write_bytes(png_bytes(9, 12))
    lines = ["a.tar::cat/0.png", "b.tar::bird/4.png", "files/bird/5.png", "a.tar::dog/x/3.png", "b.tar::top.png"]
    src = open_file_list(str(write_list(tmp_path / "mixed.txt", lines)), labelled=True)
    # the class of a member is its parent folder inside the archive (the archive's name at its root)
    assert src.classes == ["b.tar", "bird", "cat", "x"] and [src.label(i) for i in range(5)] == [2, 1, 1, 3, 0]
    assert src.read(2) == (tmp_path / "files/bird/5.png").read_bytes()
    assert src.entry(2) == str(tmp_path / "files/bird/5.png") and src.entry(1) == f"{b}::bird/4.png"
    src.MAX_OPEN = 1  # at most one archive file open: the other is closed, its index kept
    expected = {0: png_bytes(0, 12), 1: png_bytes(8, 12), 3: png_bytes(3, 12), 4: png_bytes(7, 12)}
    for i in [0, 1, 3, 4, 0, 2]:
        assert src.read(i) == (expected[i] if i in expected else src.read(2))
        assert sum(index.is_open for index in src._indexes.values()) == 1
    assert sorted(index.path for index in src._indexes.values()) == [str(a), str(b)]


def test_missing_member_is_a_counted_skip(tmp_path):
    archive = pool_tar(tmp_path / "pool.tar")
    lines = [f"{archive}::cat/0.png", f"{archive}::cat/gone.png", f"{archive}::notes.png", f"{archive}::../x.png"]
    src = open_source(write_list(tmp_path / "list.txt", lines))
    for i in (1, 2, 3):
        with pytest.raises(BadImage) as e:
            src.read(i)
        assert e.value.reason == "missing"
    data = PretrainDataset(src, lambda img: [np.asarray(img)])
    _, used, skipped, _ = data[1]
    assert used == 0 and skipped == [(lines[1], "missing"), (lines[2], "missing"), (lines[3], "missing")]


def test_truncated_archive_skips_the_members_after_the_damage(tmp_path):
    archive = pool_tar(tmp_path / "pool.tar")
    raw = archive.read_bytes()
    cut = raw.index(b"dog/x/3.png")  # the header of the last image: it and what follows are cut off
    archive.write_bytes(raw[:cut])
    src = open_source(write_list(tmp_path / "l.txt", [f"{archive}::cat/0.png", f"{archive}::dog/x/3.png"]))
    assert src.read(0) == png_bytes(0, 12)
    with pytest.raises(BadImage) as e:
        src.read(1)
    assert e.value.reason == "truncated"


def test_missing_archive_is_one_clear_error(tmp_path, capsys):
    pool_tar(tmp_path / "pool.tar")
    listed = write_list(tmp_path / "list.txt", ["# curated", "pool.tar::cat/0.png", "gone.tar::cat/1.png"])
    with pytest.raises(DataError, match=r"list.txt:3: archive .*gone.tar cannot be read"):
        open_source(listed)
    argv = ["pretrain", "demo", *TINY_OVERRIDES, "--data", str(listed), "--out", str(tmp_path / "run")]
    assert main([*argv, "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("openseer: error:") and "gone.tar" in err


def test_shard_images_are_named_shard_member(tmp_path):
    folder = tmp_path / "imgs"
    for i in range(5):
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{i % 2}/{i}.PNG").write_bytes(png_bytes(i, 12))
    write_shards(folder, tmp_path / "shards", max_count=2, progress=False)
    with tarfile.open(tmp_path / "shards/shard-000000.tar") as t:  # an upper-case extension, as other tools write
        members = [(m.name, t.extractfile(m).read()) for m in t]
    (tmp_path / "other").mkdir()
    write_tar(tmp_path / "other/up-000000.tar", [(n.replace(".png", ".PNG"), d) for n, d in members])
    for spec in [str(tmp_path / "shards/*.tar"), str(tmp_path / "other/up-000000.tar::")]:
        shards = open_source(spec)
        entries = [shards.entry(i) for i in range(len(shards))]
        assert all(split_entry(e) is not None for e in entries)
        listed = open_source(write_list(tmp_path / "s.txt", entries))
        assert [listed.read(i) for i in range(len(listed))] == [shards.read(i) for i in range(len(shards))]
    assert entries[0] == f"{tmp_path / 'other/up-000000.tar'}::000000000.PNG"


def test_archives_at_fsspec_urls(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fsspec.filesystem("memory").pipe("/tars/pool.tar", pool_tar(tmp_path / "pool.tar").read_bytes())
    lines = ["memory://tars/pool.tar::dog/x/3.png", "memory://tars/pool.tar::cat/gone.png"]
    src = open_source(write_list(tmp_path / "urls.txt", lines))
    assert src.archives == ["memory://tars/pool.tar"] and src.read(0) == png_bytes(3, 12) and src.entry(0) == lines[0]
    with pytest.raises(BadImage, match="missing"):
        src.read(1)
    with pytest.raises(DataError, match="urls.txt:1: archive memory://tars/nope.tar cannot be read"):
        open_source(write_list(tmp_path / "urls.txt", ["memory://tars/nope.tar::a.png"]))


def test_compressed_index_keeps_only_wanted_members(tmp_path):
    archive = pool_tar(tmp_path / "p.tar.gz", compressed=True)
    index = TarIndex(str(archive), {"dog/2.png"})
    assert len(index) == 1 and index.read("./dog/2.png") == png_bytes(2, 12) and not index.is_open
    with pytest.raises(BadImage, match="holds no image member"):
        index.read("cat/0.png")  # in the archive, but not wanted: not kept
