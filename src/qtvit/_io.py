"""The one way qtvit writes files: beside the target under a temporary name, fsync'ed, then renamed into place.

Readers see the old file or the whole new one, never half of one. Checkpoints, results CSVs, figures and exported
models all go through ``atomic_write``.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "fsync_dir", "default_file_mode"]


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0o666 under the umask); mkstemp's 0o600 is too strict."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (POSIX); harmless where unsupported."""
    with contextlib.suppress(OSError):
        dfd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write(dst: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` beside ``dst``, fsync, rename: readers see the old file or the whole new one.

    On failure nothing at ``dst`` changes and the temporary file is removed; a full disk raises an
    ``OSError(ENOSPC)`` that names the folder. Returns ``dst`` as a Path.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"disk full while writing {dst}: free space in {dst.parent} or write "
                                        f"elsewhere (the previous file, if any, is intact) [{e}]") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(dst.parent)
    return dst
