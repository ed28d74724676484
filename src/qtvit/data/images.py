"""Decoding one image file into an 8-bit "L" or "RGB" PIL image, whatever its format's pixel mode.

An image file is data, never code, and a bad one must end in a ValueError naming it (the folders skip and count
such files; ``predict`` reports them). The rules, each tested in tests/test_images.py:

* Formats: only JPEG (MPO, the multi-picture JPEG of cameras, included), PNG, BMP, GIF, TIFF, WebP and PPM/PGM are
  opened, recognised by content whatever the file's extension. Every other PIL plugin is refused; EPS, for one,
  would run Ghostscript on the file.
* Multi-frame files (GIF, TIFF, WebP, MPO): the first frame.
* 8-bit modes (1, L, P, RGB, RGBX, CMYK, YCbCr, HSV): PIL's own conversion; any other mode too, or a ValueError
  where PIL has none.
* Alpha (RGBA, LA, PA, La, RGBa, a palette with a transparent index): composited on black, ``value * alpha / 255``,
  so a transparent pixel is black whatever colour it hides (dropping alpha would show that arbitrary colour).
* 16-bit integers (I;16, I;16L, I;16B, I;16N): the full range scaled to 8 bits, ``round(v / 257)`` (0 -> 0,
  65535 -> 255), never clipped at 255.
* 32-bit integers (I): PIL's mode for 16-bit data of several formats (PGM with maxval > 255, some 16-bit PNG and
  TIFF files), so values within [0, 65535] are read as 16-bit data, ``round(v / 257)``; an image with values
  outside that range is min-max scaled to [0, 255].
* 32-bit floats (F): values within [0, 1] are taken as intensities, ``round(v * 255)``; otherwise the image is
  min-max scaled to [0, 255] (a constant image is clipped to [0, 1] first). NaN and infinities become 0.
* Greyscale sources decode to "L", colour ones to "RGB"; PIL then converts to the mode asked for (RGB -> L is
  ITU-R 601-2 luma, L -> RGB repeats the channel).
* Size: an image of more pixels than the limit is refused before it is decoded (a small file can declare a huge
  image, a "decompression bomb"). The limit is PIL's ``Image.MAX_IMAGE_PIXELS`` (default 89 478 485 pixels),
  set by the environment variable ``QTVIT_MAX_IMAGE_PIXELS`` (a pixel count, 0 for no limit; read at each decode,
  so loader workers, spawned or forked, follow it) or by ``set_max_image_pixels(n)`` (which sets both).
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
# Registering exactly the allowed plugins: Image.open(formats=...) looks each name up among the registered ones.
from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, PpmImagePlugin,  # noqa: F401
                 TiffImagePlugin, WebPImagePlugin)

__all__ = ["ALLOWED_FORMATS", "MAX_PIXELS_ENV", "open_image", "to_8bit", "set_max_image_pixels", "too_many_pixels",
           "max_image_pixels"]

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
MAX_PIXELS_ENV = "QTVIT_MAX_IMAGE_PIXELS"
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "F"}
_applied_env: str | None = None  # the environment value last applied, so a change is picked up


def set_max_image_pixels(n: int | None) -> None:
    """Refuse images of more than `n` pixels (0 or None: no limit). Sets PIL's ``Image.MAX_IMAGE_PIXELS`` and the
    ``QTVIT_MAX_IMAGE_PIXELS`` environment variable, so that loader worker processes started later inherit it."""
    global _applied_env
    if n is None:
        n = 0
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"set_max_image_pixels takes a whole number of pixels >= 0 (0: no limit), not {n!r}")
    Image.MAX_IMAGE_PIXELS = n or None
    _applied_env = os.environ[MAX_PIXELS_ENV] = str(n)


def max_image_pixels() -> int:
    """The pixel limit in force (0: none)."""
    _apply_env_limit()
    return int(Image.MAX_IMAGE_PIXELS or 0)


def _apply_env_limit() -> None:
    global _applied_env
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or value == _applied_env:
        return
    _applied_env = value
    try:
        n = int(value.replace("_", ""))
        if n < 0:
            raise ValueError
    except ValueError:
        # Not fatal: a typo in the environment must not make every image of a folder "unreadable".
        warnings.warn(f"{MAX_PIXELS_ENV}={value!r} is not a whole number of pixels; keeping the limit of "
                      f"{Image.MAX_IMAGE_PIXELS or 0} pixels (set it to a pixel count, or 0 for no limit)",
                      stacklevel=3)
        return
    Image.MAX_IMAGE_PIXELS = n or None


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Decode one image file into an 8-bit PIL image of `mode` ("RGB" or "L") by the rules of this module.

    FileNotFoundError if `path` does not exist; ValueError naming the file for anything else that goes wrong: not
    an image, a refused format, truncated or corrupt data, more pixels than the limit."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an image file; pass the image files (e.g. {path}/*.png)")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    _apply_env_limit()
    try:
        with warnings.catch_warnings():
            # PIL only warns between the limit and twice the limit; here the limit is the limit.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=ALLOWED_FORMATS) as im:
                im.load()
                return to_8bit(im).convert(mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise too_many_pixels(path, e) from None
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise many types on corrupt data; all mean "unreadable"
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}: {e}); pass a JPEG, PNG, BMP, GIF, "
                         "TIFF, WebP or PPM/PGM file") from e


def too_many_pixels(path: str | os.PathLike, e: Exception, what: str = "") -> ValueError:
    """The error for a file over the pixel limit (PIL's decompression-bomb guard), `what` ("mask ") naming its
    kind: the size, the limit, and how to raise it."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(found.group(1)):,} pixels" if found else "more pixels than the limit"
    example = int(found.group(1)) if found else 0
    return ValueError(f"{what}{path} declares an image of {size}, over the limit of {max_image_pixels():,} pixels "
                      f"(a guard against decompression bombs); if the file is genuine, raise the limit with the "
                      f"environment variable {MAX_PIXELS_ENV}=<pixels> (0: no limit), e.g. `{MAX_PIXELS_ENV}="
                      f"{example} qtvit ...`, or qtvit.data.folder.set_max_image_pixels(n) in Python")


def to_8bit(im: Image.Image) -> Image.Image:
    """`im` as an 8-bit "L" (greyscale sources) or "RGB" image, scaling wide value ranges (see the module rules)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        return _composite_on_black(im)
    if im.mode.startswith("I;16"):
        return _grey(_round_div(np.asarray(im).astype(np.int64), 257))
    if im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if a.size == 0 or (a.min() >= 0 and a.max() <= 65535):
            return _grey(_round_div(a, 257))
        return _grey(_min_max(a.astype(np.float64)))
    if im.mode == "F":
        return _grey(_float_to_8bit(np.asarray(im, dtype=np.float64)))
    return im.convert("L" if im.mode in _GREY_MODES else "RGB")


def _composite_on_black(im: Image.Image) -> Image.Image:
    grey = im.mode in ("LA", "La")
    a = np.asarray(im.convert("LA" if grey else "RGBA")).astype(np.int64)
    out = _round_div(a[..., :-1] * a[..., -1:], 255)
    return _grey(out[..., 0]) if grey else Image.fromarray(out.astype(np.uint8))


def _float_to_8bit(a: np.ndarray) -> np.ndarray:
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if lo >= 0 and hi <= 1:
        out = np.rint(a * 255)
    elif hi == lo:  # no range to scale: clip the constant to [0, 1]
        out = np.full(a.shape, round(min(max(lo, 0.0), 1.0) * 255), np.float64)
    else:
        out = _min_max(a)
    return np.where(finite, out, 0).astype(np.uint8)


def _min_max(a: np.ndarray) -> np.ndarray:
    lo, hi = np.nanmin(a[np.isfinite(a)]), np.nanmax(a[np.isfinite(a)])
    return np.rint((a - lo) * (255 / (hi - lo))) if hi > lo else np.zeros(a.shape)


def _round_div(a: np.ndarray, d: int) -> np.ndarray:
    """round(a / d) for non-negative integers, in integer arithmetic (halves up)."""
    return (a + d // 2) // d


def _grey(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
