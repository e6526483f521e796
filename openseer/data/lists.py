"""Two more kinds of :class:`~openseer.data.sources.ImageSource`: a file list and shards read into memory.

A file list is a text file with one image per line (relative paths are relative to the list's folder),
optionally followed by a tab and a label (a class name or an integer); blank lines and lines starting with
``#`` are ignored. Without a tab, a line whose last space-separated word has no image extension is read as
``path label`` as well. Labels are indices into the sorted class names (numerically sorted when all are
integers); with ``labelled=True`` and no label column, the class is the image's parent folder name.

A line names a file by its path, or a member of a tar archive as ``ARCHIVE::MEMBER``
(``pool.tar::cat/0001.jpg``; the syntax is `openseer.data.tars`'): what ``openseer curate`` writes for a tar or
shard pool. Every archive a list names must exist when it is opened (else one `DataError` line); a member the
archive lacks is a counted ``missing`` skip, as a deleted file is.

Shards (:mod:`openseer.data.shards`) are read whole into memory for labelled evaluation sets (kNN, linear
probes): the label is the sample's ``.cls`` (classes named by the shard manifest), or else the first component
of its key, ImageFolder-style (e.g. the CIFAR-10 tars: ``airplane/0000.jpg``).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np

from openseer.data.images import IMAGE_EXTENSIONS, DataError
from openseer.data.shards import ShardStats, _is_url, expand_shards, is_shard_spec, iter_shard, read_manifest
from openseer.data.sources import FolderSource, ImageSource, TarSource, open_path
from openseer.data.tars import (
    TarIndex,
    archive_location,
    check_archive,
    is_image_name,
    member_entry,
    member_name,
    split_entry,
)

LIST_SUFFIXES = (".txt", ".lst", ".list", ".tsv")


def _class_labels(values: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    unique = set(values)
    numeric = all(v.lstrip("-").isdigit() for v in unique)
    classes = sorted(unique, key=int) if numeric else sorted(unique)
    if len(classes) < 2:
        raise DataError(f"labelled data {where} needs at least 2 classes; found {classes}")
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


class ListSource(FolderSource):
    """The images a file list names, in the list's order: files (each read opens it, as a folder's) and tar
    members, ``ARCHIVE::MEMBER`` (`openseer.data.tars`).

    Each process indexes an archive once, at its first read, and only for the members the list names
    (:class:`~openseer.data.tars.TarIndex`); at most :attr:`MAX_OPEN` archives stay open per process. Pickling (to
    DataLoader workers) drops the indexes, and a forked worker builds its own, so no two processes share a file.
    """

    MAX_OPEN = 32

    def __init__(
        self,
        root: str,
        names: list[str],
        labels: np.ndarray,
        classes: list[str],
        archives: list[str],
        archive_of: np.ndarray,
    ) -> None:
        super().__init__(root, names, labels, classes)
        self.archives = archives
        self._archive_of = archive_of.astype(np.int32, copy=False)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._indexes: dict[int, TarIndex] = {}  # every archive indexed in this process
        self._open: OrderedDict[int, None] = OrderedDict()  # those whose file may be open, least recently used first
        self._rows: tuple[np.ndarray, np.ndarray] | None = None  # rows sorted by archive, and where each one starts

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_indexes={}, _open=OrderedDict(), _rows=None)
        return state

    def _wanted(self, a: int) -> set[str]:
        """The normalised member names the list names in archive ``a``."""
        if self._rows is None:
            order = np.argsort(self._archive_of, kind="stable")
            starts = np.searchsorted(self._archive_of[order], np.arange(len(self.archives) + 1))
            self._rows = order, starts
        order, starts = self._rows
        rows = order[starts[a] : starts[a + 1]]
        names = (member_name(split_entry(self.name(int(i)))[1], keep_hidden=True) for i in rows)
        return {name for name in names if name is not None}  # an unsafe name is never read: a missing member

    def _index(self, a: int) -> TarIndex:
        if self._pid != os.getpid():  # a forked worker: its parent's open files are not its own
            self._reset()
        index = self._indexes.get(a)
        if index is None:
            index = self._indexes[a] = TarIndex(self.archives[a], self._wanted(a))
        self._open[a] = None
        self._open.move_to_end(a)
        while len(self._open) > self.MAX_OPEN:
            self._indexes[self._open.popitem(last=False)[0]].close()
        return index

    def read(self, i: int) -> bytes:
        """The image's bytes; a missing file or member is a ``BadImage("missing")`` (counted, not fatal)."""
        a = int(self._archive_of[self._check(i)])
        if a < 0:
            return super().read(i)
        return self._index(a).read(split_entry(self.name(i))[1])

    def entry(self, i: int) -> str:
        a = int(self._archive_of[self._check(i)])
        if a < 0:
            return super().entry(i)
        member = split_entry(self.name(i))[1]
        return member_entry(self.archives[a], member_name(member, keep_hidden=True) or member)


def _parse_line(line: str, path: str, number: int) -> tuple[str, str | None]:
    """``(entry, label or None)`` of one non-comment line of a file list."""
    if "\t" in line:
        name, label = line.split("\t", 1)
    elif " " in line.strip() and not is_image_name(line.strip().rsplit(" ", 1)[1]):
        name, label = line.strip().rsplit(" ", 1)
    else:
        name, label = line.strip(), None
    if label is not None and not label.strip():
        raise DataError(f"{path}:{number}: empty label")
    name = name.strip()
    if not is_image_name(name):
        raise DataError(
            f"{path} is a file but not a tar archive or a file list of images (line {number}: "
            f"{name[:80]!r} has no image extension, {', '.join(IMAGE_EXTENSIONS)})"
        )
    return name, label.strip() if label is not None else None


def _parent_name(entry: str) -> str:
    """The class of an unlabelled line: the image's parent folder (inside the archive for a member; the
    archive's file name for a member at the archive's root)."""
    split = split_entry(entry)
    if split is None:
        return os.path.basename(os.path.dirname(entry))
    archive, member = split
    parts = (member_name(member, keep_hidden=True) or member).split("/")
    return parts[-2] if len(parts) > 1 else os.path.basename(archive.rstrip("/"))


def _archives(path: str, root: str, entries: list[str], numbers: list[int]) -> tuple[list[str], np.ndarray]:
    """The archives a list names (resolved: relative to its folder) and each entry's archive (-1: a file).

    Raises:
        DataError: an archive that does not exist or cannot be opened (one line naming the first such).
    """
    archives: dict[str, int] = {}
    archive_of = np.full(len(entries), -1, dtype=np.int32)
    for k, entry in enumerate(entries):
        split = split_entry(entry)
        if split is None:
            continue
        location = archive_location(split[0], root)
        if location not in archives:
            problem = check_archive(location)
            if problem is not None:
                raise DataError(f"{path}:{numbers[k]}: archive {location} cannot be read ({problem})")
            archives[location] = len(archives)
        archive_of[k] = archives[location]
    return list(archives), archive_of


def open_file_list(path: str, labelled: bool = False) -> ListSource:
    """A source of the images a file list names, in the list's order (files, and ``ARCHIVE::MEMBER`` entries)."""
    names, labels, numbers = [], [], []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, label = _parse_line(line, path, number)
            names.append(name)
            labels.append(label)
            numbers.append(number)
    if not names:
        raise DataError(f"file list {path} names no images")
    root = os.path.dirname(os.path.abspath(path))
    has_labels = [x is not None for x in labels]
    if any(has_labels) and not all(has_labels):
        raise DataError(f"file list {path}: some lines have a label column and others do not")
    archives, archive_of = _archives(path, root, names, numbers)
    if not labelled:
        return ListSource(root, names, np.full(len(names), -1, dtype=np.int64), [], archives, archive_of)
    values = labels if all(has_labels) else [_parent_name(n) for n in names]
    ids, classes = _class_labels(values, f"in {path}")
    return ListSource(root, names, ids, classes, archives, archive_of)


def open_shards(spec: str, labelled: bool = False) -> TarSource:
    """All samples of a shard set in memory, in shard order (for evaluation-sized data)."""
    names, blobs, cls, members = [], [], [], []
    stats = ShardStats()
    for url in expand_shards(spec):
        shard = url if _is_url(url) else os.path.abspath(url)
        for record in iter_shard(url, stats):
            names.append(f"{record.key}.{record.ext}")
            blobs.append(record.data)
            cls.append(record.label)
            members.append((shard, record.member))
    if not names:
        raise DataError(f"the shards {spec!r} hold no images ({stats.counts or 'empty'})")
    if stats.counts:
        logging.getLogger("openseer").warning("reading %s: %s", spec, stats.counts)
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    labels, classes = np.full(len(names), -1, dtype=np.int64), []
    if labelled:
        if all(c >= 0 for c in cls):
            first = expand_shards(spec)[0]
            manifest = read_manifest(first.rsplit("/", 1)[0] if "/" in first else ".") or {}
            labels = np.asarray(cls, dtype=np.int64)
            classes = list(manifest.get("classes") or [str(k) for k in range(int(labels.max()) + 1)])
        elif all("/" in n for n in names):
            labels, classes = _class_labels([n.split("/", 1)[0] for n in names], f"in {spec}")
        else:
            raise DataError(f"labelled shards {spec!r} need a .cls per sample or <class>/<key> sample keys")
    return TarSource(str(spec), names, labels, classes, b"".join(blobs), offsets, members)


def open_source(path: str | os.PathLike[str], labelled: bool = False) -> ImageSource:
    """Open a folder, a tar archive, a file list or a set of tar shards of images.

    File lists (``.txt``, ``.lst``, ``.list``, ``.tsv``; lines are paths or ``ARCHIVE::MEMBER``) are read by
    :func:`openseer.data.lists.open_file_list`, and shard sets (globs, brace patterns, URLs, ``::`` lists,
    folders with a shard manifest) are read whole into memory by :func:`openseer.data.lists.open_shards`
    (for evaluation sets; pretraining streams them).

    Files are matched by extension (case-insensitive, :data:`IMAGE_EXTENSIONS`); files and folders whose
    name starts with '.' are skipped. Images are sorted by their path relative to the root.

    With ``labelled=True`` the layout is ImageFolder's, ``root/<class>/.../<image>``: the class is the first
    path component, classes are sorted alphabetically and a label is the class's index. Only folders that
    contain at least one image are classes (an empty class folder is ignored).

    A folder is searched recursively; symbolic links to folders are followed unless they lead back to a
    folder being searched (a loop, counted as ``symlink_loop`` in ``source.skipped``; a dangling link is a
    ``broken_link``). A tar archive (plain, or compressed with gzip, bzip2 or xz) is read into memory once:
    only regular files are used (links and devices with image names are counted as ``not_a_file``), members
    with an absolute path or a '..' component are counted as ``unsafe_member``, and nothing is ever extracted
    to disk. A truncated or damaged archive behaves like a truncated shard: the members before the damage are
    used, the loss is one ``tar_truncated`` entry in ``source.skipped`` (and a warning), and only an archive
    with no intact image raises :class:`DataError`. Tar sources live in memory: unpack a collection larger
    than memory to a folder instead.

    Args:
        path: a folder, or a tar file.
        labelled: read class labels from the first path component.

    Returns:
        The source.

    Raises:
        DataError: the path does not exist, is neither a folder nor a tar archive, holds no images, the
            archive is damaged, a file list names an archive that cannot be opened, or ``labelled`` is set and
            the layout has images in the root or fewer than two classes.
    """
    if is_shard_spec(path):
        return open_shards(path, labelled)
    root = os.fspath(path)
    if os.path.isfile(root) and root.lower().endswith(LIST_SUFFIXES):
        return open_file_list(root, labelled)
    return open_path(root, labelled)
