"""One training at a time in a run folder: ``RunLock`` holds ``<run>/.lock`` (the owner's pid and host) while a
training writes there, so a second one started with the same --name (or --resume) is refused instead of both
reporting done into one folder, one silently overwriting the other.

The lock file is created whole or not at all (written under a temporary name, then hard-linked into place, which
fails if the name exists). A lock whose process is gone (a killed run: SIGKILL, power loss) is stale and taken over;
a lock of another host cannot be checked and is respected. ``release`` removes it on every way out of ``train``.
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path

__all__ = ["RunLock"]

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


class RunLock:
    """The lock of the run folder `run_dir` (created if missing); ``acquire`` raises FileExistsError naming the
    training that holds it."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def _owner(self) -> tuple[int | None, str]:
        try:
            pid, _, host = self.path.read_text().partition("\n")
            return int(pid), host.strip()
        except (OSError, ValueError):
            return None, ""

    def _create(self) -> bool:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lock.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{socket.gethostname()}\n")
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            pid, host = self._owner()
            here = host in ("", socket.gethostname())
            if pid is not None and (not here or _alive(pid)):
                where = "" if here else f" on host {host}"
                raise FileExistsError(
                    f"another training (pid {pid}{where}) is already training into {self.path.parent}; wait for it to "
                    f"finish, or pick another --name or --output (if that training is gone, delete {self.path})")
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                self.path.unlink()
        raise FileExistsError(f"could not take the lock {self.path}: other trainings keep taking it; pick another "
                              "--name or --output")

    def release(self) -> None:
        if self.held and self._owner()[0] == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False
