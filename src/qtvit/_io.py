"""The one way qtvit writes files: beside the target under a temporary name, fsync'ed, then renamed into place.

Readers see the old file or the whole new one, never half of one. Checkpoints, results CSVs, figures and exported
models all go through ``atomic_write``; outputs get the mode a plain ``open(path, "w")`` would give (the umask's),
not mkstemp's 0600.

A full disk surfaces from the libraries in many shapes: ``OSError(ENOSPC)`` from Python, a ``SafetensorError``
quoting "No space left on device (os error 28)", or torch.save's ``RuntimeError: [enforce fail at
inline_container.cc] ... unexpected pos`` that has lost the errno altogether. ``disk_full_error`` recognises all
of them (by errno, by message, or because the folder has less free space than the write needed) and turns them
into one ``OSError(ENOSPC)`` that names the folder, the free space and the space needed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "fsync_dir", "default_file_mode", "disk_free", "disk_full_error", "format_bytes",
           "write_text", "private_temp", "check_output"]

# what the libraries say when the disk is full, when they keep the reason at all
_FULL_MESSAGE = re.compile(r"no space left|os error 28|errno 28|storagefull|disk full|quota exceeded", re.I)


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


def disk_free(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged process can still write in the file system holding ``path`` (None if unknown)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def format_bytes(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # not reached


def _says_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:  # the cause chain: torch hides the errno in __context__
        seen.add(id(exc))
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or _FULL_MESSAGE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(exc: BaseException, target: str | os.PathLike, needed: int | None = None,
                    kept: str = "the previous file, if any, is intact") -> OSError | None:
    """``OSError(ENOSPC)`` explaining ``exc`` if it was a full disk while writing ``target``, else None.

    A failure counts as a full disk when it says so (errno or message), or when a write failed (OSError,
    RuntimeError, safetensors' error) and the folder now has less free space than ``needed`` bytes.
    """
    reason = getattr(exc, "_qtvit_reason", None)  # explained by an inner writer: explain it again for this target
    reason = reason or f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    folder = Path(target).parent
    free = disk_free(folder)
    io_failure = isinstance(exc, (OSError, RuntimeError)) or "serializ" in str(exc).lower()
    if not (_says_disk_full(exc) or (io_failure and needed is not None and free is not None and free < needed)):
        return None
    need = f"about {format_bytes(needed)}" if needed is not None else "more"
    err = OSError(errno.ENOSPC, f"disk full while writing {target}: {folder} has {format_bytes(free)} free and "
                                f"this write needs {need}: free space or change --output (write elsewhere); {kept}. "
                                f"[{reason}]")
    err._qtvit_reason = reason
    return err


def atomic_write(dst: str | os.PathLike, write: Callable[[str], None], *, size: int | None = None) -> Path:
    """Call ``write(tmp_path)`` beside ``dst``, fsync, rename: readers see the old file or the whole new one.

    ``size``: the bytes the write will take, if known; it is checked against the free space first and named in
    the error. On failure nothing at ``dst`` changes and the temporary file is removed; a full disk raises an
    ``OSError(ENOSPC)`` that names the folder, its free space and the space needed. Returns ``dst`` as a Path.
    """
    dst = check_output(dst, overwrite=True)  # a file where a folder must be: one clear error, not [Errno 17]
    dst.parent.mkdir(parents=True, exist_ok=True)
    free = disk_free(dst.parent)
    if size is not None and free is not None and free < size:
        raise disk_full_error(OSError(errno.ENOSPC, "checked before writing, nothing was written"), dst, size)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except Exception as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # before measuring the free space: the half-written file is not the user's
        full = disk_full_error(e, dst, size)
        if full is not None:
            raise full from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(dst.parent)
    return dst


def write_text(dst: str | os.PathLike, text: str) -> Path:
    """``atomic_write`` of a text file (UTF-8)."""
    return atomic_write(dst, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def private_temp(beside: str | os.PathLike, suffix: str = ".tmp"):
    """A fresh file name beside ``beside`` (hidden, unique: never a user's file) for an intermediate result; the
    file is removed on every way out of the block, an interrupt or an error included."""
    beside = check_output(beside, overwrite=True)
    beside.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=beside.parent, prefix=f".{beside.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)



def check_output(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--overwrite",
                 folder: bool = False) -> Path:
    """Refuse an output before any work starts: a parent (or, for a ``folder`` output, the path itself) that is a
    file (NotADirectoryError), a file output that is a folder (IsADirectoryError), or an existing file without
    ``overwrite`` (FileExistsError naming ``flag``). Returns the path."""
    path = Path(path)
    blocker = next((p for p in ([path] if folder else []) + list(path.parents) if p.exists() and not p.is_dir()),
                   None)
    if blocker is not None:
        raise NotADirectoryError(f"cannot write {path}: {blocker} is a file, not a folder; choose another output "
                                 "folder")
    if not folder and path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the name of the file to write")
    if not folder and path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass {flag} to replace it, or choose another output")
    return path
