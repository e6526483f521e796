"""Tar archives of images: reading them safely, and naming their members in file lists.

Reading: :func:`decompress` undoes gzip/bzip2/xz by magic bytes, :func:`member_name` normalises a member's name
(or rejects it as unsafe), and :func:`scan_tar` walks the headers of an archive once, up to any damage, without
reading member data. A tar given as ``--data`` (`openseer.data.sources.TarSource`) and the archives a file list
names (:class:`TarIndex`) are both read through these, so both see the same members.

Naming: a file list line ``ARCHIVE::MEMBER`` (e.g. ``/data/pool.tar::cat/0001.jpg``,
``shards/shard-000003.tar::000000042.jpg``) is the image ``MEMBER`` inside the tar ``ARCHIVE``. This module is
the one home of that syntax: :func:`split_entry` parses a line, :func:`member_entry` and :func:`file_entry`
write one. ``ARCHIVE`` must end in a tar suffix (:data:`TAR_SUFFIXES`); a line is split at the first ``::``
that follows such a name, so a member name may itself hold ``::``.

:class:`TarIndex` reads the members a list names: one pass over the archive's headers per process records where
each wanted member's bytes lie, then each read seeks there (a plain tar), or slices the wanted members' bytes
kept from one decompression (a compressed tar, which cannot be read at random).
"""

from __future__ import annotations

import bz2
import io
import logging
import lzma
import os
import tarfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import BinaryIO

from openseer.data.images import IMAGE_EXTENSIONS, BadImage, DataError
from openseer.data.shards import _is_url, _open

log = logging.getLogger("openseer")

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MEMBER_SEP = "::"
TAR_BLOCK = 512
_MAGIC = {
    b"\x1f\x8b": lambda: zlib.decompressobj(wbits=31),
    b"BZh": bz2.BZ2Decompressor,
    b"\xfd7zXZ\x00": lzma.LZMADecompressor,
}


def is_tar_name(path: str) -> bool:
    """Whether a path ends in one of :data:`TAR_SUFFIXES` (case-insensitive)."""
    return path.lower().endswith(TAR_SUFFIXES)


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the image extensions (:data:`IMAGE_EXTENSIONS`)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---- the ARCHIVE::MEMBER syntax of file lists ---------------------------------------------------------------


def split_entry(entry: str) -> tuple[str, str] | None:
    """``(archive, member)`` of a file-list entry ``ARCHIVE::MEMBER``, or None for a plain path."""
    start = 0
    while (k := entry.find(MEMBER_SEP, start)) >= 0:
        if k and is_tar_name(entry[:k]):
            return entry[:k], entry[k + len(MEMBER_SEP) :]
        start = k + 1
    return None


def member_entry(archive: str, member: str) -> str:
    """The file-list entry naming ``member`` of ``archive`` (module docstring).

    Raises:
        DataError: the archive's name has no tar suffix, or holds ``::`` after one (the entry would not parse back).
    """
    entry = f"{archive}{MEMBER_SEP}{member}"
    if split_entry(entry) != (archive, member):
        raise DataError(
            f"cannot name the members of {archive} in a file list ({MEMBER_SEP} entries need an archive name "
            f"ending in {', '.join(TAR_SUFFIXES)}, with no '{MEMBER_SEP}' after it): rename the archive"
        )
    return entry


def file_entry(path: str) -> str:
    """The file-list entry naming the file ``path``: the path itself, unless it would read as ``ARCHIVE::MEMBER``.

    Raises:
        DataError: the path holds a tar name followed by ``::``.
    """
    if split_entry(path) is not None:
        raise DataError(f"cannot name {path!r} in a file list: it reads as ARCHIVE{MEMBER_SEP}MEMBER; rename it")
    return path


# ---- reading archives ----------------------------------------------------------------------------------------


def is_compressed(head: bytes) -> bool:
    """Whether the first bytes of a file are those of a gzip, bzip2 or xz stream."""
    return any(head.startswith(magic) for magic in _MAGIC)


def decompress(raw: bytes, path: str) -> tuple[bytes, bool]:
    """Undo gzip/bzip2/xz compression of a tar archive, recognised by its magic bytes.

    Returns:
        (the decompressed bytes, or as many as could be decompressed; whether the stream was complete).
    """
    for magic, make in _MAGIC.items():
        if raw.startswith(magic):
            out, rest, done = [], raw, False
            try:
                while rest and not done:
                    d = make()
                    for start in range(0, len(rest), 1 << 16):  # in pieces, to keep what precedes damage
                        out.append(d.decompress(rest[start : start + (1 << 16)]))
                        if d.eof:
                            break
                    done, rest = d.eof, d.unused_data
                    if done and rest.startswith(magic):  # concatenated streams (e.g. pigz, multi-member gzip)
                        done = False
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as e:
                log.warning("tar archive %s: the compressed data is corrupt (%s)", path, e)
                return b"".join(out), False
            return b"".join(out), done
    return raw, True


def member_name(name: str, keep_hidden: bool = False) -> str | None:
    """The normalised relative name of a tar member (no ``./``, no doubled ``/``), or None when it must be
    skipped: absolute, with a ``..`` component, empty, or (unless ``keep_hidden``) with a ``.``-hidden component."""
    if name.startswith("/"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or (not keep_hidden and any(p.startswith(".") for p in parts)):
        return None
    return "/".join(parts)


def is_unsafe(name: str) -> bool:
    """An absolute path or one with a '..' component: it could reach outside the data if extracted."""
    return name.startswith("/") or ".." in name.split("/")


def is_hidden(name: str) -> bool:
    """A member that a folder listing would skip as well (a '.' file or folder), not worth reporting."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return any(p.startswith(".") and p != ".." for p in parts)


@dataclass
class TarScan:
    """What one pass over a tar's headers found (:func:`scan_tar`).

    Attributes:
        found: normalised image member name -> (offset of its data, size); a later member of the same name wins.
        ignored: names of regular members without an image extension.
        skipped: ``(name, reason)``: ``unsafe_member`` (absolute or '..' name), ``not_a_file`` (a link or device
            with an image name).
        damage: why the archive stops early (empty when it is intact); ``end`` is the byte where it does.
    """

    found: dict[str, tuple[int, int]] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    damage: str = ""
    end: int = 0


def _take(scan: TarScan, member: tarfile.TarInfo, keep_hidden: bool, wanted: Collection[str] | None) -> str | None:
    """Record one member in ``scan``; returns its normalised name when it is a wanted image."""
    name = member_name(member.name, keep_hidden)
    if name is None:
        if not member.isdir() and is_unsafe(member.name) and not is_hidden(member.name):
            scan.skipped.append((member.name, "unsafe_member"))
        return None
    if not member.isreg() or member.issparse():
        if not member.isdir() and is_image_name(name):
            scan.skipped.append((name, "not_a_file"))
        return None
    if not is_image_name(name):
        scan.ignored.append(name)
        return None
    return name if wanted is None or name in wanted else None


def scan_tar(
    f: BinaryIO, size: int, complete: bool = True, keep_hidden: bool = False, wanted: Collection[str] | None = None
) -> TarScan:
    """Walk the headers of an uncompressed tar in the seekable file ``f`` of ``size`` bytes (no data is read).

    Args:
        complete: False when ``f`` holds what a broken compressed stream gave (the archive is then damaged).
        keep_hidden: keep members with a '.'-hidden name component (a file list may name them).
        wanted: record only these normalised names (None: every image member).
    """
    scan = TarScan()
    f.seek(0)
    if complete and f.read(TAR_BLOCK) == bytes(TAR_BLOCK):  # an empty archive: just the end-of-archive marker
        return scan
    f.seek(0)
    try:
        archive = tarfile.open(fileobj=f, mode="r:")
        for member in archive:
            scan.end = member.offset
            name = _take(scan, member, keep_hidden, wanted)
            if name is None:
                continue
            if member.offset_data + member.size > size:
                scan.damage = f"member {name!r} runs past the end of the file"
                break
            scan.found[name] = (member.offset_data, member.size)
        else:
            scan.end = archive.offset
    except (tarfile.TarError, EOFError) as e:
        scan.damage = str(e) or type(e).__name__
    # tarfile silently stops at a header it cannot parse after the first one; a complete archive ends with
    # a zero block there (POSIX end-of-archive marker), so anything else means truncation or damage.
    if not scan.damage:
        f.seek(scan.end)
        if not complete or f.read(TAR_BLOCK) != bytes(TAR_BLOCK):
            scan.damage = "no end-of-archive marker"
    return scan


def _size(f: BinaryIO) -> int:
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def check_archive(path: str) -> str | None:
    """Why the archive ``path`` (local or URL) cannot be opened, or None when it can."""
    try:
        with _open(path) as f:
            f.read(1)
    except (OSError, ValueError) as e:  # FileNotFoundError, IsADirectoryError, PermissionError, bad URL
        return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
    return None


class TarIndex:
    """The wanted image members of one tar archive (local or URL), found by one pass over its headers.

    A plain tar stays open after the scan and each :meth:`read` seeks to the member's data; a compressed one is
    decompressed once and only the wanted members' bytes are kept. A member the archive does not hold is a counted skip,
    ``BadImage("missing")`` (``"truncated"`` when the archive breaks off before the end, like a truncated shard).
    Not picklable: `openseer.data.lists.ListSource` builds one per archive in each process.
    """

    def __init__(self, path: str, wanted: Collection[str] | None = None) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._kept: dict[str, bytes] | None = None
        f = _open(path)
        try:
            if is_compressed(f.read(6)):
                f.seek(0)
                raw, complete = decompress(f.read(), path)
                f.close()
                scan = scan_tar(io.BytesIO(raw), len(raw), complete, keep_hidden=True, wanted=wanted)
                self._kept = {name: raw[o : o + n] for name, (o, n) in scan.found.items()}
            else:
                scan = scan_tar(f, _size(f), keep_hidden=True, wanted=wanted)
                self._file = f  # kept open for the reads
        except BaseException:
            f.close()
            raise
        self.members = scan.found
        self.damage = scan.damage
        if scan.damage:
            log.warning("tar archive %s is malformed or truncated (%s after byte %d)", path, scan.damage, scan.end)

    def __len__(self) -> int:
        return len(self.members)

    def read(self, member: str) -> bytes:
        """The bytes of ``member`` (any spelling :func:`member_name` normalises to a name of the archive)."""
        name = member_name(member, keep_hidden=True)
        at = self.members.get(name) if name is not None else None
        if at is None:
            if self.damage:
                raise BadImage("truncated", f"the archive {self.path} breaks off before {member!r}")
            raise BadImage("missing", f"the archive {self.path} holds no image member {member!r}")
        if self._kept is not None:
            return self._kept[name]
        if self._file is None:
            self._file = _open(self.path)
        self._file.seek(at[0])
        data = self._file.read(at[1])
        if len(data) != at[1]:
            raise BadImage("truncated", f"the archive {self.path} was cut short after it was indexed")
        return data

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        """Close the archive's file (a later :meth:`read` reopens it; the index is kept)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def archive_location(archive: str, base: str) -> str:
    """An archive named in a file list: a URL as it is, a relative path relative to ``base`` (the list's folder)."""
    return archive if _is_url(archive) else os.path.normpath(os.path.join(base, archive))
