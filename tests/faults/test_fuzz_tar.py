"""Fuzzed tar archives: random member names (absolute, '..', unicode, newlines), links, devices and random
bytes. Nothing is read or written outside the data, every name handed out is a safe relative path, unsafe
members are counted, and a broken archive is a DataError or a counted truncation, never a crash."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from openseer.data import DataError, open_source
from openseer.data.shards import ShardStats, iter_shard
from tests.faults.common import fuzz_settings

FAST = fuzz_settings(30)

PARTS = ["a", "b", "img.jpg", "x.png", "..", "", "ünï ✓.jpg", "new\nline.png", "sp ace.webp", "c.gif", "d"]
KINDS = [tarfile.REGTYPE] * 4 + [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
TARGETS = ["/etc/passwd", "../../../etc/shadow", "a/img.jpg", "x.png", "/"]

names = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "/", "./"]),
    st.lists(st.sampled_from(PARTS), min_size=1, max_size=4),
)
members = st.lists(
    st.tuples(names, st.sampled_from(KINDS), st.binary(max_size=300), st.sampled_from(TARGETS)), max_size=12
)


def _unsafe(name: str) -> bool:
    return name.startswith("/") or ".." in name.split("/")


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if not p.is_symlink()}


def _build(path: Path, entries) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, target in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.linkname = target
                tar.addfile(info)


@FAST
@given(members)
def test_random_members_are_read_safely_and_counted(entries):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cwd").mkdir()
        archive = root / "data" / "x.tar"
        archive.parent.mkdir()
        _build(archive, entries)
        before, cwd = _snapshot(root), os.getcwd()
        os.chdir(root / "cwd")  # where a careless extraction would write
        try:
            try:
                source = open_source(archive)
            except DataError as e:
                assert "no images found" in str(e)
                source = None
            shard = list(iter_shard(str(archive), ShardStats()))
        finally:
            os.chdir(cwd)
        assert _snapshot(root) == before  # nothing written anywhere
        regular = {_normal(n): d for n, k, d, _ in entries if k == tarfile.REGTYPE and not _unsafe(n)}
        with tarfile.open(archive) as tar:  # names as Python's tarfile reads them (pax paths lose a trailing '/')
            unsafe = [m.name for m in tar.getmembers() if _unsafe(m.name) and not m.isdir()]
        if source is not None:
            for i in range(len(source)):
                name = source.name(i)
                assert not _unsafe(name) and name in regular  # only regular members inside the archive
                assert source.read(i) == regular[name] or any(  # the last member of that name wins
                    _normal(n) == name and source.read(i) == d for n, k, d, _ in entries if k == tarfile.REGTYPE
                )
            assert sorted(n for n, r in source.skipped if r == "unsafe_member") == sorted(unsafe)
        for record in shard:
            assert not _unsafe(record.key)


@FAST
@given(st.binary(max_size=3000), st.sampled_from([".tar", ".tar.gz", ".tgz", ".tar.xz"]))
def test_random_bytes_as_an_archive(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"random{suffix}"
        path.write_bytes(data)
        try:
            source = open_source(path)
        except DataError:
            return
        for i in range(len(source)):
            source.read(i)


@fuzz_settings(25)
@given(st.integers(0, 10_000), st.sampled_from(["", ".gz", ".xz", ".bz2"]))
def test_a_tar_cut_anywhere_keeps_the_members_before_the_cut(cut_at, compression):
    import bz2
    import gzip
    import lzma

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "x.tar"
        data = [np.random.default_rng(k).bytes(700) for k in range(6)]
        _build(plain, [(f"{k}.jpg", tarfile.REGTYPE, d, "") for k, d in enumerate(data)])
        raw = {"": bytes, ".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}[compression](
            plain.read_bytes()
        )
        cut = Path(tmp) / f"cut.tar{compression}"
        cut.write_bytes(raw[: cut_at % (len(raw) + 1)])
        try:
            source = open_source(cut)
        except DataError as e:
            assert "truncated" in str(e) or "no images" in str(e)
            return
        n = len(source)
        assert [source.read(i) for i in range(n)] == data[:n]  # a prefix of the members, intact
        reasons = [r for _, r in source.skipped]
        assert reasons in ([], ["tar_truncated"])  # [] when only the padding after the end marker was cut
        assert n == 6 or reasons == ["tar_truncated"]
        if cut_at % (len(raw) + 1) == len(raw):
            assert n == 6 and reasons == []
