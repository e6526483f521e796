"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Everything openseer writes that a later step reads (checkpoints, exported weights, ``config.yaml``,
``summary.json``, evaluation results, feature caches, shard manifests) goes through :func:`atomic_write`:
the data is written to a temporary file in the same folder, fsync'ed, renamed over the target, and the
folder is fsync'ed so that the rename itself survives a power loss.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openseer.errors import CheckpointWriteError

#: The files of an exported backbone in a run directory (checkpoint.export_backbone writes them).
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_SPEC = "backbone.json"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[str], Any]) -> None:
    """Write ``path`` via ``write_fn(tmp_path)`` then fsync + rename: readers see the old or the new file.

    Raises:
        CheckpointWriteError: an OSError while writing (ENOSPC, EIO, EROFS, EACCES ...), naming ``path``; the
            old file is untouched and the temporary file removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        if isinstance(e, CheckpointWriteError):
            raise
        raise CheckpointWriteError(path, os_error_of(e)) from None
    except RuntimeError as e:  # torch.save wraps a failed write in RuntimeError
        cause = os_error_of(e)
        if cause is None:
            raise
        raise CheckpointWriteError(path, cause) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def os_error_of(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error`` (itself, or its cause/context, as torch.save's RuntimeError wraps it)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> None:
    """Write ``value`` as JSON to ``path`` atomically (serialised first, so a failure leaves no file)."""
    atomic_write_text(path, json.dumps(value, indent=indent))
