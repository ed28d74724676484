"""Image decoding (qtvit.data.images): every PIL mode to 8-bit L/RGB by scaling, not clipping; the pixel limit
against decompression bombs; refused formats; fuzzed files end in a ValueError naming the file."""
from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from qtvit.data import images
from qtvit.data.folder import open_image, set_max_image_pixels


def _decode(path, mode="L"):
    return np.asarray(open_image(path, mode))


def _save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


# ------------------------------------------------------------------------------------------------- modes and values
def test_16bit_grey_png_and_tiff_scale_the_full_range(tmp_path):
    v = np.array([[0, 128, 129, 257, 1000, 32768, 65280, 65535]], np.uint16)
    want = [[0, 0, 1, 1, 4, 128, 254, 255]]  # round(v / 257): not clipped at 255 (the bug: all >= 255 white)
    for name in ("g16.png", "g16.tiff"):
        p = _save(tmp_path, name, Image.fromarray(v))
        assert Image.open(p).mode.startswith("I")
        np.testing.assert_array_equal(_decode(p), want)
        rgb = _decode(p, "RGB")
        assert rgb.shape == (1, 8, 3) and (rgb == np.array(want)[..., None]).all()
    big = _save(tmp_path, "g16b.tiff", Image.fromarray(v.astype(">u2")))
    assert Image.open(big).mode == "I;16B"
    np.testing.assert_array_equal(_decode(big), want)


def test_32bit_int_is_16bit_data_or_min_max_scaled(tmp_path):
    inside = _save(tmp_path, "i.tiff", Image.fromarray(np.array([[0, 257, 65535, 30000]], np.int32)))
    assert Image.open(inside).mode == "I"
    np.testing.assert_array_equal(_decode(inside), [[0, 1, 255, 117]])  # 30000/257 = 116.7
    outside = _save(tmp_path, "o.tiff", Image.fromarray(np.array([[-100, 0, 100, 70000]], np.int32)))
    np.testing.assert_array_equal(_decode(outside), [[0, 0, 1, 255]])  # min-max: (v + 100) * 255 / 70100
    # A PGM with maxval 1023 loads as 'I' scaled by PIL to 16 bits; then / 257.
    pgm = tmp_path / "ten.pgm"
    pgm.write_bytes(b"P5\n3 1\n1023\n" + np.array([0, 512, 1023], ">u2").tobytes())
    np.testing.assert_array_equal(_decode(pgm), [[0, 128, 255]])


def test_float_images_in_unit_range_or_min_max(tmp_path):
    unit = _save(tmp_path, "f.tiff", Image.fromarray(np.array([[0, 0.25, 0.5, 1.0]], np.float32)))
    assert Image.open(unit).mode == "F"
    np.testing.assert_array_equal(_decode(unit), [[0, 64, 128, 255]])  # the bug: all black but 1.0
    wide = _save(tmp_path, "w.tiff", Image.fromarray(np.array([[-1, 0, 1, 3, np.nan]], np.float32)))
    np.testing.assert_array_equal(_decode(wide), [[0, 64, 128, 255, 0]])  # NaN: 0, left out of the range
    const = _save(tmp_path, "c.tiff", Image.fromarray(np.full((2, 2), 7.0, np.float32)))
    np.testing.assert_array_equal(_decode(const), 255)  # no range to scale: clipped to [0, 1]
    allnan = _save(tmp_path, "n.tiff", Image.fromarray(np.full((2, 2), np.nan, np.float32)))
    np.testing.assert_array_equal(_decode(allnan), 0)


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [255, 255, 255, 255]]], np.uint8)
    p = _save(tmp_path, "a.png", Image.fromarray(rgba))
    np.testing.assert_array_equal(_decode(p, "RGB"), [[[100, 50, 25], [0, 0, 0], [255, 255, 255]]])
    la = _save(tmp_path, "la.png", Image.fromarray(np.array([[[200, 128], [90, 0]]], np.uint8), "LA"))
    np.testing.assert_array_equal(_decode(la, "L"), [[100, 0]])
    # A palette with a transparent index (GIF and PNG): that index is black.
    pal = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    for name in ("t.gif", "t.png"):
        p = _save(tmp_path, name, pal, transparency=1)
        np.testing.assert_array_equal(_decode(p, "RGB"), [[[255, 0, 0], [0, 0, 0], [0, 0, 255]]])
    opaque = _save(tmp_path, "p.png", pal)
    np.testing.assert_array_equal(_decode(opaque, "RGB"), [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]])


def test_8bit_modes_decode_through_pil(tmp_path):
    bits = _save(tmp_path, "b.png", Image.fromarray(np.array([[True, False, True]])))
    assert Image.open(bits).mode == "1"
    np.testing.assert_array_equal(_decode(bits), [[255, 0, 255]])
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    p = _save(tmp_path, "c.tiff", cmyk)
    np.testing.assert_array_equal(_decode(p, "RGB"), [[[255, 255, 255], [0, 255, 255]]])
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [12, 34, 56]]], np.uint8)
    p = _save(tmp_path, "rgb.bmp", Image.fromarray(rgb))
    np.testing.assert_array_equal(_decode(p, "RGB"), rgb)
    np.testing.assert_array_equal(_decode(p, "L"), np.asarray(Image.fromarray(rgb).convert("L")))  # 601-2 luma
    grey = _save(tmp_path, "g.png", Image.fromarray(np.array([[7, 200]], np.uint8)))
    np.testing.assert_array_equal(_decode(grey, "RGB"), [[[7] * 3, [200] * 3]])
    ycc = images.to_8bit(Image.new("YCbCr", (1, 1), (128, 128, 128)))
    assert ycc.mode == "RGB" and abs(int(np.asarray(ycc)[0, 0, 0]) - 128) <= 1


def test_refused_format_and_missing_file(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin
    ran = []  # PIL's EPS plugin would run Ghostscript on the file: a program, not an image decoder
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or Image.new("RGB", (10, 10)))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    eps = tmp_path / "x.jpg"  # an EPS under an image name
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ValueError, match=r"x\.jpg is not a readable image"):
        open_image(eps)
    assert not ran
    with pytest.raises(FileNotFoundError, match="nope.png"):
        open_image(tmp_path / "nope.png")


# -------------------------------------------------------------------------------------------- decompression bombs
def _png_header_only(path, width, height, bit_depth=1, colour_type=0):
    """A PNG that declares width x height but holds one byte of image data: a few dozen bytes on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def pixel_limit(monkeypatch):
    """Restore PIL's limit and the environment after a test that changes them."""
    saved = Image.MAX_IMAGE_PIXELS
    monkeypatch.delenv(images.MAX_PIXELS_ENV, raising=False)
    monkeypatch.setattr(images, "_applied_env", None)
    yield monkeypatch
    monkeypatch.undo()  # first: its setenv calls recorded values that set_max_image_pixels wrote behind its back
    os.environ.pop(images.MAX_PIXELS_ENV, None)
    images._applied_env = None
    Image.MAX_IMAGE_PIXELS = saved


def test_decompression_bomb_is_a_clear_error(tmp_path, pixel_limit):
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200
    with pytest.raises(ValueError) as e:
        open_image(bomb)
    msg = str(e.value)
    assert "bomb.png" in msg and "900,000,000 pixels" in msg and "89,478,485" in msg
    assert "QTVIT_MAX_IMAGE_PIXELS" in msg and "set_max_image_pixels" in msg


def test_pixel_limit_from_the_function_and_the_environment(tmp_path, pixel_limit):
    good = _save(tmp_path, "g.png", Image.fromarray(np.full((100, 120), 9, np.uint8)))  # 12,000 pixels
    under_twice = _save(tmp_path, "u.png", Image.fromarray(np.full((100, 80), 9, np.uint8)))  # 8,000
    set_max_image_pixels(5000)
    assert images.max_image_pixels() == 5000
    for p, n in ((good, "12,000"), (under_twice, "8,000")):  # PIL's error (> 2x) and its warning (> 1x)
        with pytest.raises(ValueError, match=f"{p.name} declares an image of {n} pixels, over the limit of 5,000"):
            open_image(p)
    pixel_limit.setenv(images.MAX_PIXELS_ENV, "20000")  # read at the next decode
    assert _decode(good).shape == (100, 120) and images.max_image_pixels() == 20000
    pixel_limit.setenv(images.MAX_PIXELS_ENV, "0")
    assert images.max_image_pixels() == 0 and Image.MAX_IMAGE_PIXELS is None
    pixel_limit.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.warns(UserWarning, match="QTVIT_MAX_IMAGE_PIXELS='lots' is not a whole number"):
        assert _decode(good).shape == (100, 120)
    with pytest.raises(ValueError, match="whole number of pixels"):
        set_max_image_pixels(-1)


# ------------------------------------------------------------------------------------------------------- fuzzing
FORMATS = (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}), ("TIFF", "tiff", {}), ("GIF", "gif", {}),
           ("WEBP", "webp", {"quality": 90}), ("BMP", "bmp", {}), ("PPM", "ppm", {}))
CUTS = (0, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97, 0.99)


def fuzz_files(folder, seed: int = 0) -> list:
    """Random bytes under image names and truncated copies of a valid file of each format (noise pixels, so every
    cut falls in data the decoder needs)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    noise = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out = []
    for fmt, ext, kw in FORMATS:
        whole = folder / f"whole.{ext}.keep"
        noise.save(whole, fmt, **kw)
        data = whole.read_bytes()
        whole.unlink()
        for cut in CUTS:
            p = folder / f"cut{int(cut * 100):02d}.{ext}"
            p.write_bytes(data[:int(len(data) * cut)])
            out.append(p)
        for n in (1, 7, 100, 3000):
            p = folder / f"random{n}.{ext}"
            p.write_bytes(rng.bytes(n))
            out.append(p)
        p = folder / f"header_then_random.{ext}"
        p.write_bytes(data[:32] + rng.bytes(400))
        out.append(p)
    return out


def test_fuzzed_files_end_in_a_value_error_naming_them(tmp_path):
    files = fuzz_files(tmp_path / "fuzz")
    assert len(files) == len(FORMATS) * (len(CUTS) + 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL may warn about corrupt metadata on the way
        for p in files:
            with pytest.raises(ValueError) as e:
                open_image(p)
            assert str(p) in str(e.value), e.value


def test_flipped_bytes_decode_or_raise_a_value_error(tmp_path):
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fmt, ext, kw in FORMATS:
            p = tmp_path / f"x.{ext}"
            noise.save(p, fmt, **kw)
            data = bytearray(p.read_bytes())
            for trial in range(8):
                bad = bytearray(data)
                for i in rng.integers(0, len(bad), 4):
                    bad[i] ^= int(rng.integers(1, 256))
                p.write_bytes(bytes(bad))
                try:
                    im = open_image(p)
                except ValueError as e:
                    assert str(p) in str(e)
                else:  # damage in pixel data may still decode: then it is a proper 8-bit RGB image
                    assert im.mode == "RGB" and im.size == (16, 16)
