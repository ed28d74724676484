"""The one downloader of the package: pretrained weights and datasets, fetched once into a local cache (urllib
only: no extra dependency).

The cache is ``$QTVIT_CACHE``, else ``$XDG_CACHE_HOME/qtvit``, else ``~/.cache/qtvit``; a file is stored under its
URL's base name, so a user without network can put a file there by hand (the error messages say which name and
where). ``$QTVIT_PRETRAINED_URL_BASE`` redirects every pretrained URL to a mirror: ``<base>/<file name>`` (tests
point it at a loopback server).

A cached file is verified before it is reused: against the expected sha256 when the caller has one, otherwise
against the sha256 recorded (in ``.<name>.sha256`` beside it) when it was downloaded; and by the caller's ``check``
(e.g. "is it a readable checkpoint"). A cached file that fails is deleted and downloaded again, once.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ._io import default_file_mode, disk_full_error, write_text

__all__ = ["DownloadError", "download", "get_cache_dir", "resolve_url"]

_CHUNK = 1 << 20
_logger = logging.getLogger(__name__)


class DownloadError(OSError):
    """A file could not be fetched (no network, HTTP error) or did not match its expected hash."""


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache: ``cache_dir`` if given, else ``$QTVIT_CACHE``, else ``$XDG_CACHE_HOME/qtvit``, else
    ``~/.cache/qtvit``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("QTVIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qtvit"


def resolve_url(url: str) -> str:
    """Apply ``$QTVIT_PRETRAINED_URL_BASE`` (a mirror holding the same file names), if set."""
    base = os.environ.get("QTVIT_PRETRAINED_URL_BASE")
    return f"{base.rstrip('/')}/{url_file_name(url)}" if base else url


def url_file_name(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"cannot derive a file name from url {url!r}; it must end in a file name like 'x.pt'")
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(digest: str, sha256: str | None, what: str, fix: str) -> None:
    # A prefix is accepted (as torch.hub does with file-name hashes), but a too-short one proves nothing.
    if sha256 is None:
        return
    expected = sha256.lower()
    if len(expected) < 8:
        raise ValueError(f"sha256 {sha256!r} is too short: give at least 8 hex digits")
    if not digest.startswith(expected):
        raise DownloadError(f"{what} has sha256 {digest}, expected {expected}. {fix}")


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def _cached_problem(path: Path, sha256: str | None, check: Callable[[Path], None] | None) -> str | None:
    """Why the cached ``path`` cannot be reused, or None when it can."""
    recorded = _sidecar(path).read_text().strip() if _sidecar(path).is_file() else None
    expected = (sha256 or recorded or "").lower()
    if expected:
        digest = _sha256(path)
        if not digest.startswith(expected):
            return f"its sha256 is {digest}, expected {expected}"
    if check is not None:
        try:
            check(path)
        except (ValueError, OSError) as e:
            return str(e)
    return None


def download(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    file_name: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Return the local path of ``url``'s file, downloading it into the cache first if it is not there yet.

    The download goes to a temporary file in the cache directory that is renamed into place only once it is
    complete (and matches ``sha256``, a hex digest or a prefix of at least 8 digits), so an interrupted download
    never leaves a truncated file under the final name; without ``sha256`` the digest of the download is recorded
    beside it. A cached file is reused without any request once it passes the hash and ``check`` (a callable that
    raises ValueError/OSError for an unusable file); a cached file that fails is deleted and downloaded again.
    Raises DownloadError naming the file and its cache path when offline.
    """
    if sha256 is not None and len(sha256) < 8:
        raise ValueError(f"sha256 {sha256!r} is too short: give at least 8 hex digits")
    folder = get_cache_dir(cache_dir)
    path = folder / (file_name or url_file_name(url))
    if path.is_file():
        problem = _cached_problem(path, sha256, check)
        if problem is None:
            return path
        _logger.warning("cached file %s is damaged (%s); deleting it and downloading it again", path, problem)
        path.unlink()
        _sidecar(path).unlink(missing_ok=True)
    _fetch(url, path, sha256, progress, timeout)
    if check is not None:
        try:
            check(path)
        except (ValueError, OSError) as e:
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
            raise DownloadError(f"the file downloaded from {url} cannot be used ({str(e)[:300]}); nothing was "
                                "cached. The server may be serving an error page or a damaged file: try again later "
                                f"or download it by hand to {path}.") from e
    return path


def _fetch(url: str, path: Path, sha256: str | None, progress: bool, timeout: float) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    by_hand = (
        f"Without network, download {url} elsewhere and put it at {path} "
        f"(or set $QTVIT_CACHE), or pass checkpoint_path=<file> to create_model."
    )
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".partial")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    bar = _progress_bar(total, path.name, progress)
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        h.update(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                    if bar is not None:
                        bar.close()
            except urllib.error.HTTPError as e:
                raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}. {by_hand}") from e
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                raise DownloadError(f"cannot download {url} ({reason}). {by_hand}") from e
            except OSError as e:  # writing, not fetching: a full disk says where and how much
                full = disk_full_error(e, path, kept="nothing was cached")
                if full is None:
                    raise
                raise full from e
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        _check_hash(digest, sha256, f"downloaded file {url}", "The file on the server differs; nothing "
                    "was cached. Check the url, or pass sha256=None if the change is expected.")
        if total is not None and os.path.getsize(tmp) != total:
            raise DownloadError(f"downloading {url} stopped after {os.path.getsize(tmp)} of {total} bytes; nothing "
                                f"was cached. Try again. {by_hand}")
        os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would hide the cache from other users
        os.replace(tmp, path)
        if sha256 is None:  # nothing to check a later reuse against: remember what a complete download was
            write_text(_sidecar(path), digest + "\n")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _progress_bar(total: int | None, name: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a progress bar is never worth failing for
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr)
