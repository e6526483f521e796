"""Image sources: folder listing, ImageFolder labels, tar archives (safe, in memory), subsets, errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from openseer.data.images import DataError, load_rgb
from openseer.data.lists import open_source
from openseer.data.sources import subset

CIFAR_TEST = Path("/work/shared/data/cifar10/cifar10-test.tar")
CIFAR_README = CIFAR_TEST.parent / "README.md"


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


# ---- folders ---------------------------------------------------------------------------------------------


def test_folder_listing_is_recursive_sorted_filtered(tmp_path):
    for name in ["z.jpeg", "a/x.JPG", "a/b/y.png", "c/d/e/f.webp", "notes.txt", "a/b/readme.md", "g.TIFF"]:
        write(tmp_path / name, name.encode())
    for hidden in [".hidden/q.jpg", "a/.h.jpg", "._mac.jpg"]:
        write(tmp_path / hidden)
    src = open_source(tmp_path)
    names = [src.name(i) for i in range(len(src))]
    assert names == ["a/b/y.png", "a/x.JPG", "c/d/e/f.webp", "g.TIFF", "z.jpeg"]
    assert src.read(1) == b"a/x.JPG"
    assert src.classes == [] and {src.label(i) for i in range(len(src))} == {-1}
    assert src.root == str(tmp_path)


def test_folder_symlinks_followed_without_looping(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write(root / "a/1.png")
    write(outside / "2.png", b"outside")
    os.symlink(root / "a", root / "a/loop")  # a loop back to its own folder
    os.symlink(outside, root / "linked")
    src = open_source(root)
    assert [src.name(i) for i in range(len(src))] == ["a/1.png", "linked/2.png"]
    assert src.read(1) == b"outside"


def test_labelled_folder(tmp_path):
    for name in ["dog/1.png", "cat/2.jpg", "cat/sub/3.jpg", "bird/notes.txt"]:
        write(tmp_path / name)
    (tmp_path / "empty").mkdir()
    src = open_source(tmp_path, labelled=True)
    assert src.classes == ["cat", "dog"]  # folders without images are not classes
    assert [(src.name(i), src.label(i)) for i in range(len(src))] == [
        ("cat/2.jpg", 0),
        ("cat/sub/3.jpg", 0),
        ("dog/1.png", 1),
    ]


def test_labelled_layout_errors(tmp_path):
    write(tmp_path / "one/1.png")
    with pytest.raises(DataError, match="at least 2 class folders"):
        open_source(tmp_path, labelled=True)
    write(tmp_path / "loose.png")
    write(tmp_path / "two/2.png")
    with pytest.raises(DataError, match="directly in the root.*loose.png"):
        open_source(tmp_path, labelled=True)
    assert len(open_source(tmp_path)) == 3  # fine when unlabelled


def test_missing_empty_and_non_tar_paths(tmp_path):
    with pytest.raises(DataError, match=r"data path .*nope does not exist"):
        open_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no images found under .*empty \(looked for \.jpg, \.jpeg, \.png"):
        open_source(tmp_path / "empty")
    write(tmp_path / "docs/readme.txt")
    with pytest.raises(DataError, match="1 other file.*readme.txt"):
        open_source(tmp_path / "docs")
    with pytest.raises(DataError, match="not a tar archive"):
        open_source(tmp_path / "docs/readme.txt")


# ---- tar archives ----------------------------------------------------------------------------------------


def test_tar_skips_unsafe_members_and_writes_nothing(tmp_path, monkeypatch):
    archive = tmp_path / "data.tar"
    with tarfile.open(archive, "w") as tar:
        add_member(tar, "dog/b.jpg", b"B")
        add_member(tar, "./cat/a.jpg", b"A")
        add_member(tar, "../evil.jpg", b"evil")
        add_member(tar, "cat/../../evil2.jpg", b"evil")
        add_member(tar, "/abs/evil.jpg", b"evil")
        add_member(tar, "cat/link.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        add_member(tar, "cat/hard.jpg", kind=tarfile.LNKTYPE, link="dog/b.jpg")
        add_member(tar, "cat/dev.jpg", kind=tarfile.CHRTYPE)
        add_member(tar, "cat", kind=tarfile.DIRTYPE)
        add_member(tar, "cat/._a.jpg", b"appledouble")
        add_member(tar, "notes.txt", b"text")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = all_files(tmp_path)
    src = open_source(archive, labelled=True)
    assert all_files(tmp_path) == before
    assert not (tmp_path.parent / "evil.jpg").exists() and not Path("/abs").exists()
    assert [src.name(i) for i in range(len(src))] == ["cat/a.jpg", "dog/b.jpg"]
    assert [src.read(i) for i in range(len(src))] == [b"A", b"B"]
    assert src.classes == ["cat", "dog"] and [src.label(0), src.label(1)] == [0, 1]


def test_tar_matches_folder_and_gzip(tmp_path):
    folder = tmp_path / "images"
    for i, name in enumerate(["b/2.png", "a/1.jpg", "a/3.JPEG", "c/9.bmp"]):
        write(folder / name, bytes([i]) * (100 + i))
    plain, packed = tmp_path / "images.tar", tmp_path / "images.tgz"
    with tarfile.open(plain, "w") as tar:
        tar.add(folder, arcname=".")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    ref = open_source(folder, labelled=True)
    for path in (plain, packed):
        src = open_source(path, labelled=True)
        assert src.classes == ref.classes
        assert [(src.name(i), src.label(i), src.read(i)) for i in range(len(src))] == [
            (ref.name(i), ref.label(i), ref.read(i)) for i in range(len(ref))
        ]


def test_truncated_or_malformed_tar(tmp_path):
    """A damaged single tar behaves like a damaged shard: the members before the damage are used, the loss is
    one counted ``tar_truncated`` skip, and only an archive with no intact image is an error."""
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        for k in range(3):
            add_member(tar, f"c{k}/{k}.jpg", bytes([k]) * 1500)
    with tarfile.open(archive) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    raw = archive.read_bytes()
    assert len(open_source(archive)) == 3 and open_source(archive).skipped == []
    second_header, end_of_data = offsets[1], offsets[2] + 512 + 1536
    # cut at a member boundary (tarfile alone would see a shorter archive), inside a header, inside data,
    # and before the end-of-archive marker: the intact members before the cut are used, the rest is counted
    for cut, intact in ((second_header, 1), (second_header + 100, 1), (second_header + 700, 1), (end_of_data, 3)):
        bad = tmp_path / f"cut{cut}.tar"
        bad.write_bytes(raw[:cut])
        src = open_source(bad)
        assert [src.read(i) for i in range(len(src))] == [bytes([k]) * 1500 for k in range(intact)]
        assert [reason for _, reason in src.skipped] == ["tar_truncated"]
    bad = tmp_path / "cut100.tar"  # inside the first header: nothing usable
    bad.write_bytes(raw[:100])
    with pytest.raises(DataError, match="malformed or truncated"):
        open_source(bad)
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(raw[:512] + b"\x07" * 3000)
    src = open_source(garbage)
    assert len(src) == 1 and [reason for _, reason in src.skipped] == ["tar_truncated"]
    noisy = tmp_path / "noisy.tar"  # members that do not compress, so that half the .gz holds a whole one
    members = [np.random.default_rng(k).bytes(1500) for k in range(3)]
    with tarfile.open(noisy, "w") as tar:
        for k, data in enumerate(members):
            add_member(tar, f"c{k}/{k}.jpg", data)
    cut_gzip = tmp_path / "cut.tar.gz"
    packed = gzip.compress(noisy.read_bytes())
    cut_gzip.write_bytes(packed[: len(packed) // 2])
    src = open_source(cut_gzip)
    assert [src.read(i) for i in range(len(src))] == members[:1]
    assert [reason for _, reason in src.skipped] == ["tar_truncated"]
    cut_gzip.write_bytes(packed[:30])
    with pytest.raises(DataError, match="malformed or truncated"):
        open_source(cut_gzip)


# ---- subsets and pickling --------------------------------------------------------------------------------


def test_subset_and_pickle(tmp_path):
    for name in ["a/0.png", "a/1.png", "b/2.png", "b/3.png"]:
        write(tmp_path / "f" / name, name.encode())
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(tmp_path / "f", arcname=".")
    for src in (open_source(tmp_path / "f", labelled=True), open_source(tmp_path / "t.tar", labelled=True)):
        view = subset(src, [3, 0, 2])
        assert len(view) == 3 and view.classes == ["a", "b"] and view.root == src.root
        assert [(view.name(i), view.label(i), view.read(i)) for i in range(3)] == [
            ("b/3.png", 1, b"b/3.png"),
            ("a/0.png", 0, b"a/0.png"),
            ("b/2.png", 1, b"b/2.png"),
        ]
        nested = subset(view, [2])
        assert nested.name(0) == "b/2.png"
        copy = pickle.loads(pickle.dumps(view))
        assert [copy.read(i) for i in range(3)] == [view.read(i) for i in range(3)]
        with pytest.raises(IndexError):
            subset(src, [4])
        with pytest.raises(IndexError):
            view.name(3)


def test_cifar10_test_tar():
    if not CIFAR_TEST.is_file():
        pytest.skip(f"{CIFAR_TEST} not present (the shared CIFAR-10 copy is only on the development machines)")
    readme = CIFAR_README.read_text()
    line = next(x for x in readme.splitlines() if x.startswith("Classes"))
    expected = [c.strip(" .") for c in line.split(":", 1)[1].split("(")[0].split(",")]
    src = open_source(CIFAR_TEST, labelled=True)
    assert len(src) == 10_000
    assert src.classes == expected and len(expected) == 10
    assert src.name(0) == "airplane/0000.jpg" and src.label(len(src) - 1) == 9
    assert load_rgb(src.read(1234)).size == (32, 32)
