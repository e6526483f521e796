"""Two more kinds of :class:`~openseer.data.sources.ImageSource`: a file list and shards read into memory.

A file list is a text file with one image path per line (relative paths are relative to the list's folder),
optionally followed by a tab and a label (a class name or an integer); blank lines and lines starting with
``#`` are ignored. Without a tab, a line whose last space-separated word has no image extension is read as
``path label`` as well. Labels are indices into the sorted class names (numerically sorted when all are
integers); with ``labelled=True`` and no label column, the class is the image's parent folder name.

Shards (:mod:`openseer.data.shards`) are read whole into memory for labelled evaluation sets (kNN, linear
probes): the label is the sample's ``.cls`` (classes named by the shard manifest), or else the first component
of its key, ImageFolder-style (e.g. the CIFAR-10 tars: ``airplane/0000.jpg``).
"""

from __future__ import annotations

import logging
import os

import numpy as np

from openseer.data.images import IMAGE_EXTENSIONS, DataError
from openseer.data.shards import ShardStats, expand_shards, is_shard_spec, iter_shard, read_manifest
from openseer.data.sources import FolderSource, ImageSource, TarSource, is_image_name, open_path

LIST_SUFFIXES = (".txt", ".lst", ".list", ".tsv")


def _class_labels(values: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    unique = set(values)
    numeric = all(v.lstrip("-").isdigit() for v in unique)
    classes = sorted(unique, key=int) if numeric else sorted(unique)
    if len(classes) < 2:
        raise DataError(f"labelled data {where} needs at least 2 classes; found {classes}")
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def open_file_list(path: str, labelled: bool = False) -> FolderSource:
    """A source of the images a file list names, in the list's order."""
    names, labels = [], []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" in line:
                name, label = line.split("\t", 1)
            elif " " in line.strip() and not is_image_name(line.strip().rsplit(" ", 1)[1]):
                name, label = line.strip().rsplit(" ", 1)
            else:
                name, label = line.strip(), None
            if label is not None and not label.strip():
                raise DataError(f"{path}:{number}: empty label")
            if not is_image_name(name.strip()):
                raise DataError(
                    f"{path} is a file but not a tar archive or a file list of images (line {number}: "
                    f"{name.strip()[:80]!r} has no image extension, {', '.join(IMAGE_EXTENSIONS)})"
                )
            names.append(name.strip())
            labels.append(label.strip() if label is not None else None)
    if not names:
        raise DataError(f"file list {path} names no images")
    root = os.path.dirname(os.path.abspath(path))
    has_labels = [x is not None for x in labels]
    if any(has_labels) and not all(has_labels):
        raise DataError(f"file list {path}: some lines have a label column and others do not")
    if not labelled:
        return FolderSource(root, names, np.full(len(names), -1, dtype=np.int64), [])
    values = labels if all(has_labels) else [os.path.basename(os.path.dirname(n)) for n in names]
    ids, classes = _class_labels(values, f"in {path}")
    return FolderSource(root, names, ids, classes)


def open_shards(spec: str, labelled: bool = False) -> TarSource:
    """All samples of a shard set in memory, in shard order (for evaluation-sized data)."""
    names, blobs, cls = [], [], []
    stats = ShardStats()
    for url in expand_shards(spec):
        for record in iter_shard(url, stats):
            names.append(f"{record.key}.{record.ext}")
            blobs.append(record.data)
            cls.append(record.label)
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
    return TarSource(str(spec), names, labels, classes, b"".join(blobs), offsets)


def open_source(path: str | os.PathLike[str], labelled: bool = False) -> ImageSource:
    """Open a folder, a tar archive, a file list or a set of tar shards of images.

    File lists (``.txt``, ``.lst``, ``.list``, ``.tsv``) are read by
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
            archive is damaged, or ``labelled`` is set and the layout has images in the root or fewer than
            two classes.
    """
    if is_shard_spec(path):
        return open_shards(path, labelled)
    root = os.fspath(path)
    if os.path.isfile(root) and root.lower().endswith(LIST_SUFFIXES):
        return open_file_list(root, labelled)
    return open_path(root, labelled)
