"""Fashion-MNIST from its idx files, held in memory as one uint8 tensor (no torchvision, no per-image PIL).

Where the files are looked for, in order:
1. the folder given by the caller (``--data``), which must hold the four idx files (gzipped or not);
2. ``$QTVIT_FASHION_MNIST``;
3. Debian's ``dataset-fashion-mnist`` package: ``/usr/share/datasets/fashion-mnist``;
4. the cache ``fashion-mnist/`` in qtvit's cache (``$QTVIT_CACHE``, else ``$XDG_CACHE_HOME/qtvit``, else
   ``~/.cache/qtvit``), downloaded there once by ``qtvit.hub.download`` when the machine has internet
   (``download=True``); a cached file that is damaged is downloaded again.
Otherwise a FileNotFoundError says how to get them.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from .. import hub
from ..constants import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "DEBIAN_DIR",
    "read_idx", "write_idx", "find_fashion_mnist", "load_fashion_mnist",
]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_HOW_TO_GET = (
    "Get Fashion-MNIST with `apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu; files land "
    f"in {DEBIAN_DIR}), or download the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist "
    "into a folder and pass it with --data FOLDER."
)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (the MNIST format; ``.gz`` is decompressed) into a numpy array of its shape and type."""
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise ValueError(f"{path} is not an idx file (bad magic number {head!r}); re-download it")
            ndim = head[3]
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            dtype = np.dtype(_IDX_DTYPES[head[2]])
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read idx file {path}: {e}; the file is corrupt or truncated, re-download it") from e
    count = int(np.prod(shape))
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path} holds {len(data)} bytes of data, its header announces {count * dtype.itemsize}; "
                         "the file is truncated, re-download it")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped when the name ends in ``.gz``); the inverse of :func:`read_idx`."""
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx writes uint8 arrays (as Fashion-MNIST's files are), got {array.dtype}")
    payload = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_all(folder: Path) -> bool:
    return all(_file_in(folder, stem) for pair in _FILES.values() for stem in pair)


def _cache_dir() -> Path:
    return hub.get_cache_dir() / "fashion-mnist"


def _download(folder: Path) -> None:
    for stem in (s for pair in _FILES.values() for s in pair):
        if _file_in(folder, stem) and not (folder / (stem + ".gz")).is_file():
            continue  # an uncompressed copy someone put there
        last_error: Exception | None = None
        for mirror in _MIRRORS:
            try:  # one downloader for the package: cached, verified on reuse, damaged copies fetched again
                hub.download(mirror + stem + ".gz", cache_dir=folder, progress=False, check=read_idx)
                break
            except OSError as e:  # no network, DNS, HTTP error: try the next mirror, then give up
                last_error = e
        else:
            raise FileNotFoundError(f"Fashion-MNIST is not on this machine and downloading {stem}.gz failed "
                                    f"({last_error}). {_HOW_TO_GET}")


def find_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder holding Fashion-MNIST's four idx files (see the module docstring for the search order)."""
    if root is not None:
        folder = Path(root).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist. {_HOW_TO_GET}")
        if not _has_all(folder):
            missing = [s for pair in _FILES.values() for s in pair if not _file_in(folder, s)]
            raise FileNotFoundError(f"{folder} lacks the Fashion-MNIST idx files {missing}. {_HOW_TO_GET}")
        return folder
    candidates = [Path(p) for p in [os.environ.get("QTVIT_FASHION_MNIST")] if p] + [DEBIAN_DIR, _cache_dir()]
    for folder in candidates:
        if folder.is_dir() and _has_all(folder):
            if download and folder == _cache_dir():
                _download(folder)  # qtvit's own downloads are verified on reuse; a damaged one is fetched again
            return folder
    if download:
        _download(_cache_dir())
        return _cache_dir()
    raise FileNotFoundError(f"Fashion-MNIST not found in {[str(c) for c in candidates]}. {_HOW_TO_GET}")


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as one uint8 tensor (N, 28, 28) and labels as int64 (N,) for split "train" or "test"."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    folder = find_fashion_mnist(root, download=download)
    img_stem, lbl_stem = _FILES[split]
    images = read_idx(_file_in(folder, img_stem))
    labels = read_idx(_file_in(folder, lbl_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match; "
                         "re-download the dataset")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{folder}: {split} labels go up to {labels.max()}, Fashion-MNIST has 10 classes")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
