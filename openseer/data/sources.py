"""Image collections as uniform, picklable, random-access sources: a folder, a tar archive, or a subset.

An :class:`ImageSource` lists its images once, sorted by their path relative to the root, so that a folder
and a tar of the same folder give the same indices, labels and names. It hands out raw bytes
(:meth:`ImageSource.read`); decoding is :func:`openseer.data.images.load_rgb`'s job, so a corrupt file costs
one skipped sample in the loader, not a crashed listing.

Names are stored in one bytes blob with an offset array rather than a list of Python strings: it pickles
in one piece and DataLoader workers forked from the main process do not touch per-name reference counts
(which would copy the pages of a large list into every worker, the "dataloader memory leak").
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterable, Sequence

import numpy as np

from openseer.data.images import IMAGE_EXTENSIONS, BadImage, DataError
from openseer.data.tars import decompress, file_entry, is_image_name, is_tar_name, member_entry, scan_tar

log = logging.getLogger("openseer")


class _StringTable:
    """An immutable list of strings kept as one UTF-8 blob plus offsets (see the module docstring)."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        self._offsets[1:] = np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._blob = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = self._offsets[i], self._offsets[i + 1]
        return self._blob[start:end].decode("utf-8", "surrogateescape")


class ImageSource:
    """A random-access, picklable collection of image files.

    Attributes:
        root: the folder or archive the images come from, as given to :func:`openseer.data.open_source`.
        classes: class names in label order (sorted); empty when the source is unlabelled.
        skipped: ``(name, reason)`` of what listing the source passed over and the user should hear about:
            ``unsafe_member`` (a tar member named ``/abs/x.jpg`` or ``../x.jpg``), ``not_a_file`` (a link or
            device with an image name), ``tar_truncated`` (the archive breaks off: the members after that
            point), ``symlink_loop`` and ``broken_link`` (folders). The trainer counts them like skipped images.
    """

    root: str
    classes: list[str]
    skipped: list[tuple[str, str]] = []

    def __init__(self, root: str, names: Sequence[str], labels: np.ndarray, classes: list[str]) -> None:
        self.root = root
        self.classes = classes
        self.skipped = []
        self._names = _StringTable(names)
        self._labels = labels.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        labelled = f", {len(self.classes)} classes" if self.classes else ""
        return f"{type(self).__name__}({self.root!r}, {len(self)} images{labelled})"

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for a source of {n} images")
        return int(i) % n

    def name(self, i: int) -> str:
        """The path of image ``i`` relative to the root, with '/' separators (e.g. ``"cat/0001.jpg"``)."""
        return self._names[self._check(i)]

    def label(self, i: int) -> int:
        """The class index of image ``i``, or -1 when the source is unlabelled."""
        return int(self._labels[self._check(i)])

    def read(self, i: int) -> bytes:
        """The raw bytes of image ``i``."""
        raise NotImplementedError

    def entry(self, i: int) -> str:
        """The file-list line naming image ``i``: its absolute path, or ``ARCHIVE::MEMBER`` for a member of a tar
        (`openseer.data.tars`), so that a list of entries reopens the same images (``openseer curate`` writes one).

        Raises:
            DataError: image ``i`` cannot be named in a file list (an archive whose name has no tar suffix).
        """
        raise NotImplementedError


class FolderSource(ImageSource):
    """Images found recursively under a folder; each :meth:`read` opens the file."""

    def __init__(self, root: str, names: Sequence[str], labels: np.ndarray, classes: list[str]) -> None:
        super().__init__(root, names, labels, classes)
        self._abs_root = os.path.abspath(root)  # reads keep working if the process changes directory

    def read(self, i: int) -> bytes:
        """The file's bytes; a file deleted since the listing is a ``BadImage("missing")`` (counted, not fatal)."""
        path = os.path.join(self._abs_root, self.name(i))
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BadImage("missing", "the file was deleted after the folder was listed") from None

    def entry(self, i: int) -> str:
        return file_entry(os.path.join(self._abs_root, self.name(i)))


class TarSource(ImageSource):
    """Images of a tar archive (or of shards), all held in memory as one bytes blob (read once at open time).

    ``members``: each image's ``(archive, member name)`` when the root is not one archive (shards); by default
    image ``i`` is the member ``name(i)`` of the root. :meth:`entry` names it ``ARCHIVE::MEMBER``.
    """

    def __init__(
        self,
        root: str,
        names: Sequence[str],
        labels: np.ndarray,
        classes: list[str],
        blob: bytes,
        offsets: np.ndarray,
        members: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(root, names, labels, classes)
        self._blob = blob
        self._offsets = offsets
        self._origin: tuple[list[str], np.ndarray, _StringTable] | None = None
        if members is not None:
            archives = list(dict.fromkeys(archive for archive, _ in members))
            at = {archive: k for k, archive in enumerate(archives)}
            archive_of = np.array([at[archive] for archive, _ in members], dtype=np.int32)
            self._origin = archives, archive_of, _StringTable([member for _, member in members])

    def read(self, i: int) -> bytes:
        i = self._check(i)
        return self._blob[self._offsets[i] : self._offsets[i + 1]]

    def entry(self, i: int) -> str:
        i = self._check(i)
        if self._origin is None:
            return member_entry(os.path.abspath(self.root), self.name(i))
        archives, archive_of, members = self._origin
        return member_entry(archives[archive_of[i]], members[i])


class SubsetSource(ImageSource):
    """A view of chosen images of another source; keeps its classes and labels."""

    def __init__(self, parent: ImageSource, indices: np.ndarray) -> None:
        self.root = parent.root
        self.classes = parent.classes
        self.skipped = parent.skipped
        self._parent = parent
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    def _parent_index(self, i: int) -> int:
        return int(self._indices[self._check(i)])

    def name(self, i: int) -> str:
        return self._parent.name(self._parent_index(i))

    def label(self, i: int) -> int:
        return self._parent.label(self._parent_index(i))

    def read(self, i: int) -> bytes:
        return self._parent.read(self._parent_index(i))

    def entry(self, i: int) -> str:
        return self._parent.entry(self._parent_index(i))


def subset(source: ImageSource, indices: Iterable[int]) -> ImageSource:
    """A view of ``source`` restricted to ``indices`` (in that order; repeats allowed).

    Raises:
        IndexError: if an index is outside ``[0, len(source))``.
    """
    values = indices.tolist() if hasattr(indices, "tolist") else list(indices)  # numpy, torch, range, list
    idx = np.asarray(values, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
        raise IndexError(f"subset indices must lie in [0, {len(source)}); got {idx.min()}..{idx.max()}")
    if isinstance(source, SubsetSource):  # flatten views of views
        return SubsetSource(source._parent, source._indices[idx])
    return SubsetSource(source, idx)


def open_path(path: str | os.PathLike[str], labelled: bool = False) -> ImageSource:
    """Open a folder or a tar archive of images (:func:`openseer.data.lists.open_source` also reads file lists
    and shard sets, and calls this for the rest)."""
    root = os.fspath(path)
    if not os.path.exists(root):
        raise DataError(f"data path {root} does not exist")
    if os.path.isdir(root):
        names, ignored, skipped = _list_folder(root)
        _require_images(root, names, ignored)
        labels, classes = _labels_for(root, names, labelled)
        return _with_skips(FolderSource(root, names, labels, classes), skipped)
    if not os.path.isfile(root):
        raise DataError(f"data path {root} is neither a folder nor a regular file")
    if not (is_tar_name(root) or tarfile.is_tarfile(root)):
        raise DataError(
            f"data path {root} is a file but not a tar archive; pass a folder of images "
            "(searched recursively) or a .tar of one"
        )
    names, blob, offsets, ignored, skipped = _read_tar(root)
    if not names and any(reason == "tar_truncated" for _, reason in skipped):
        raise DataError(f"tar archive {root} is malformed or truncated and holds no intact image ({skipped[-1][0]})")
    _require_images(root, names, ignored)
    labels, classes = _labels_for(root, names, labelled)
    return _with_skips(TarSource(root, names, labels, classes, blob, offsets), skipped)


def _with_skips(source: ImageSource, skipped: list[tuple[str, str]]) -> ImageSource:
    """Attach what listing passed over, and say it once."""
    source.skipped = skipped
    if skipped:
        counts: dict[str, int] = {}
        for _, reason in skipped:
            counts[reason] = counts.get(reason, 0) + 1
        log.warning(
            "%s: passed over %s, e.g. %r",
            source.root,
            ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())),
            skipped[0][0],
        )
    return source


def _list_folder(root: str) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Relative paths of the image files under ``root`` (sorted), of the other files seen, and the
    ``(name, reason)`` of links passed over (``symlink_loop``, ``broken_link``)."""
    images: list[str] = []
    ignored: list[str] = []
    skipped: list[tuple[str, str]] = []
    root_stat = os.stat(root)
    # Each pending folder carries the (device, inode) of its ancestors, to detect symlink loops.
    root_key = (root_stat.st_dev, root_stat.st_ino)
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [("", frozenset({root_key}))]
    while stack:
        rel, ancestors = stack.pop()
        folder = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            raise DataError(f"cannot list folder {folder}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel_name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()  # both follow symlinks
            except OSError:  # e.g. ELOOP: a link that points at itself
                is_dir = is_file = False
            if is_dir:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in ancestors:
                    stack.append((rel_name, ancestors | {key}))
                else:
                    skipped.append((rel_name, "symlink_loop"))
            elif is_file:
                (images if is_image_name(entry.name) else ignored).append(rel_name)
            elif entry.is_symlink():
                skipped.append((rel_name, "symlink_loop" if _loops(entry.path) else "broken_link"))
    images.sort()
    return images, ignored, sorted(skipped)


def _loops(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == 40  # ELOOP
    return False


def _require_images(root: str, names: list[str], ignored: list[str]) -> None:
    if names:
        return
    others = ""
    if ignored:
        others = f"; {len(ignored)} other file(s) were ignored, e.g. {sorted(ignored)[0]!r}"
    raise DataError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}{others})")


def _labels_for(root: str, names: list[str], labelled: bool) -> tuple[np.ndarray, list[str]]:
    """Labels from the first path component (ImageFolder layout), or all -1 when unlabelled."""
    if not labelled:
        return np.full(len(names), -1, dtype=np.int64), []
    in_root = [n for n in names if "/" not in n]
    if in_root:
        raise DataError(
            f"labelled data in {root} needs one folder per class (<root>/<class>/<image>), but "
            f"{len(in_root)} image(s) lie directly in the root, e.g. {in_root[0]!r}"
        )
    first = [n.split("/", 1)[0] for n in names]
    classes = sorted(set(first))
    if len(classes) < 2:
        raise DataError(
            f"labelled data in {root} needs at least 2 class folders with images; found {len(classes)} "
            f"({', '.join(classes)})"
        )
    index = {c: k for k, c in enumerate(classes)}
    return np.array([index[c] for c in first], dtype=np.int64), classes


def _read_tar(path: str) -> tuple[list[str], bytes, np.ndarray, list[str], list[tuple[str, str]]]:
    """Read the image members of a tar archive into one blob, up to any damage.

    Returns:
        (sorted names, blob of their bytes in that order, offsets into the blob (len + 1), ignored names,
        ``(name, reason)`` of what was passed over: unsafe members, links, and the truncated rest).
    """
    with open(path, "rb") as f:
        raw, complete = decompress(f.read(), path)
    scan = scan_tar(io.BytesIO(raw), len(raw), complete)
    found, skipped = scan.found, scan.skipped
    if scan.damage:
        skipped.append((f"{path}@{scan.end}", "tar_truncated"))
        log.warning(
            "tar archive %s is malformed or truncated (%s after byte %d of %d): using the %d images before "
            "that point, like a truncated shard",
            path,
            scan.damage,
            scan.end,
            len(raw),
            len(found),
        )
    names = sorted(found)
    view = memoryview(raw)
    sizes = [found[n][1] for n in names]
    offsets = np.zeros(len(names) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(sizes, dtype=np.int64)
    blob = b"".join(view[o : o + s] for o, s in (found[n] for n in names))
    return names, blob, offsets, scan.ignored, skipped
