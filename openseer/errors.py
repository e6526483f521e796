"""The errors openseer raises for problems a user can fix, in one family.

Every such error derives from :class:`OpenseerError`; the ``openseer`` command catches that one class and prints
its message as a single ``openseer: error: ...`` line with exit code 2, so a missing folder, a wrong config key
or an unusable checkpoint never ends in a traceback. The subclasses say which input was wrong. Errors about
arguments (``ConfigError``, ``CheckpointError``, ``DataError``) are also ``ValueError``s, as Python code
expects of a bad argument; a run that cannot continue (``TrainingError``) is a ``RuntimeError``.

This module imports only the standard library, so every layer of the package can raise these errors without
import cycles.
"""

from __future__ import annotations

import errno as errno_names
from pathlib import Path

#: Reasons a :class:`BadImage` can carry.
BAD_IMAGE_REASONS = (
    "empty",
    "truncated",
    "unreadable",
    "too_large",
    "missing",  # the file vanished after the folder was listed
    "needs_pillow_heif",  # HEIC/HEIF without the pillow-heif plugin
    "needs_pillow_avif",  # AVIF without the pillow-avif-plugin
)


class OpenseerError(Exception):
    """A problem with the user's input or run, reported by the CLI as one line (exit code 2)."""


class ConfigError(OpenseerError, ValueError):
    """A configuration or command-line value that is unknown, of the wrong type or out of range."""


class CheckpointError(OpenseerError, ValueError):
    """A checkpoint, exported backbone or features file that cannot be used."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a run file failed (disk full, I/O error, read-only folder): one line naming the file and the
    errno. It is an OSError as well, so ``except OSError`` still sees it; the CLI prints it and exits 2."""

    def __init__(self, path: str | Path, error: OSError) -> None:
        code = error.errno
        name = errno_names.errorcode.get(code, "") if code is not None else ""
        what = f"[Errno {code}{' ' + name if name else ''}] {error.strerror or error}" if code else str(error)
        self.message = (
            f"cannot write {path}: {what}; the previous version of the file is intact: fix the cause (e.g. "
            f"free disk space) and run the same command again to resume"
        )
        super().__init__(self.message)
        self.errno, self.strerror, self.filename = code, error.strerror, str(path)

    def __str__(self) -> str:  # not OSError's "[Errno N] text: 'file'"
        return self.message


class DataError(OpenseerError, ValueError):
    """A problem with the user's data, e.g. "data path /x does not exist" or "no images found"."""


class TrainingError(OpenseerError, RuntimeError):
    """Training cannot continue (e.g. repeated non-finite losses)."""


class BadImage(OpenseerError):
    """A file that cannot be used as an image (the data loader skips and counts it).

    Attributes:
        reason: why, one of ``"empty"`` (zero bytes), ``"truncated"`` (the data ends or breaks before the
            image does), ``"unreadable"`` (not an image, or a format/mode PIL cannot decode) and
            ``"too_large"`` (over PIL's decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS``).
        detail: the decoder's message, when there is one.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in BAD_IMAGE_REASONS:
            raise ValueError(f"unknown BadImage reason {reason!r}; expected one of {BAD_IMAGE_REASONS}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
