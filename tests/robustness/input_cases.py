"""The bad and unusual inputs of the robustness table, made from the example photos.

Each :class:`Case` writes one file and says what must come of it: either a message (a part of
the error text a person sees) or an image (the RGB picture a person sees when opening the file,
which the app must segment: same size, same orientation, same content).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "images"
PORTRAIT = PHOTOS / "voc2007_000001_portrait.jpg"  # 353 x 500
CAT = PHOTOS / "chelsea_cat.png"  # 451 x 300
COFFEE = PHOTOS / "coffee.png"  # 600 x 400
STREET = PHOTOS / "street_wide_17790319373.jpg"  # 1116 x 600


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header announcing ``width`` x ``height`` grayscale pixels, then a few rows of
    data only: a few hundred bytes that would take width x height x 3 bytes to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_of_zeros(width: int, height: int) -> bytes:
    """A complete, valid grayscale PNG of ``width`` x ``height`` black pixels, compressed row
    block by row block (never ``width * height`` bytes in memory)."""
    compressor = zlib.compressobj(9)
    rows = b"\x00" * (width + 1) * 100
    data = [compressor.compress(rows) for _ in range(height // 100)]
    data += [compressor.compress(b"\x00" * (width + 1) * (height % 100)), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(data)) + _chunk(b"IEND", b"")


def _small(fmt: str, mode: str = "RGB", **options) -> bytes:
    """The cat photo at 32 x 24, written by Pillow as ``fmt`` in ``mode``."""
    photo = Image.fromarray(rgb(CAT)).resize((32, 24), Image.Resampling.BOX)
    return _encode(photo.convert(mode), fmt, **options)


# Small files that Pillow's decoders used to fail on with IndexError, ValueError,
# NotImplementedError or AttributeError instead of segfpn's ImageError (the fuzz test,
# test_fuzz_images.py, found these and more).

def _png_ihdr_length_zero() -> bytes:
    """A PNG whose IHDR chunk says it holds 0 bytes (the 13 bytes of the header follow)."""
    png = _small("PNG")
    return png[:8] + struct.pack(">I", 0) + png[12:]


def _png_iccp_bomb() -> bytes:
    """A PNG with an ICC-profile (iCCP) chunk of 200 MB of zeros, zlib-compressed to 200 KB,
    before the pixels: a decompression bomb in the metadata."""
    compressor = zlib.compressobj(9)
    megabyte = bytes(1 << 20)
    profile = b"".join(compressor.compress(megabyte) for _ in range(200)) + compressor.flush()
    png = _small("PNG")
    after_ihdr = 8 + 25
    return png[:after_ihdr] + _chunk(b"iCCP", b"icc\x00\x00" + profile) + png[after_ihdr:]


def _qoi_cut() -> bytes:
    """A QOI image cut 40 bytes into its pixel data."""
    return _small("QOI")[:14 + 40]


def _im_bad_size() -> bytes:
    """An IM (LabEye) file whose "Image size" header line is not a number."""
    return _small("IM").replace(b"Image size (x*y): 32*24", b"Image size (x*y): 32*2x")


def _ppm_long_token() -> bytes:
    """A PPM whose height is a 30-digit number."""
    return b"P6\n32 " + b"9" * 30 + b"\n255\n" + _small("PPM")[len(b"P6\n32 24\n255\n"):]


def _sgi_two_channels() -> bytes:
    """An SGI image whose header says 2 channels (only 1, 3 and 4 exist)."""
    sgi = bytearray(_small("SGI"))
    sgi[10:12] = struct.pack(">H", 2)
    return bytes(sgi)


def _dds_unknown_flags() -> bytes:
    """A DDS texture whose pixel-format flags name no known format."""
    dds = bytearray(_small("DDS"))
    dds[80:84] = struct.pack("<I", 0x4000)
    return bytes(dds)


def _spider_image_number_without_stack() -> bytes:
    """A SPIDER file (float image) whose header gives an image number but no stack."""
    spider = bytearray(_small("SPIDER", "F"))
    header = np.frombuffer(bytes(spider[:1024]), "<f4").copy()
    header[26] = 3.0  # IMGNUM, word 27
    spider[:1024] = header.tobytes()
    return bytes(spider)


def _ico_short_ihdr() -> bytes:
    """An icon whose PNG frame's IHDR chunk says 5 bytes instead of 13."""
    ico = bytearray(_small("ICO", sizes=[(16, 16)]))
    ico[22 + 8 + 3] = 5  # the directory is 6 + 16 bytes; then the PNG signature, then IHDR's length
    return bytes(ico)


def _jp2_bad_marker() -> bytes:
    """A JPEG 2000 file whose quantization (QCD) marker segment says 18 bytes instead of 16."""
    jp2 = _small("JPEG2000")
    qcd = jp2.index(b"\xff\x5c\x00\x10")
    return jp2[:qcd + 3] + b"\x12" + jp2[qcd + 4:]


def _ico_hiding_big_png() -> bytes:
    """An icon whose directory says 16 x 16 but whose frame is a 7000 x 7000 PNG (49
    megapixels in 150 KB): the size the directory shows is not the size decoded."""
    png = _png_of_zeros(7000, 7000)
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22)
    return directory + png


def _float_gray() -> np.ndarray:
    """The cat in gray as float32 in [0, 1]."""
    return np.asarray(Image.fromarray(rgb(CAT)).convert("L"), dtype=np.float32) / 255.0


def _float_tiff() -> bytes:
    """A 32-bit float ("F") TIFF with values in [0, 1]."""
    return _encode(Image.fromarray(_float_gray()), "TIFF")


def _float_tiff_nan() -> bytes:
    """The float TIFF with a block of NaN."""
    values = _float_gray()
    values[100:120, 200:240] = np.nan
    return _encode(Image.fromarray(values), "TIFF")


def _thin_strip() -> bytes:
    """50000 x 2 pixels: under the megapixel limit, far too thin for the model."""
    return _encode(Image.new("RGB", (50000, 2), (120, 90, 60)), "PNG")


@dataclass(frozen=True)
class Case:
    """One input: ``make()`` gives the file's bytes, saved as ``file_name``.

    ``message``: text the error must contain (the input is refused), or None.
    ``expected``: for an accepted input, the RGB image a person sees (None for a refused one).
    ``tolerance``: mean absolute difference allowed between what the app segmented and
    ``expected`` (lossy re-encodings: JPEG, GIF palettes).
    ``wrong``: what a wrong reading would show (the other frame, inverted CMYK, alpha ignored),
    where it has the same size as ``expected``: a result must look more like ``expected``.
    """

    name: str
    file_name: str
    make: Callable[[], bytes]
    message: str | None = None
    expected: Callable[[], np.ndarray] | None = None
    tolerance: float = 0.0
    wrong: Callable[[], np.ndarray] | None = None

    def write(self, folder: Path) -> Path:
        path = folder / self.file_name
        path.write_bytes(self.make())
        return path


def _grayscale() -> bytes:
    return _encode(Image.fromarray(rgb(CAT)).convert("L"), "PNG")


def _cmyk_jpeg() -> bytes:
    return _encode(Image.fromarray(rgb(CAT)).convert("CMYK"), "JPEG", quality=95)


def _deep(values: np.ndarray) -> np.ndarray:
    """16-bit values whose high byte is ``values`` and low byte its negative: read right, the
    picture; a reader that keeps the low byte would show the negative."""
    v = values.astype(np.uint16)
    return v * 256 + (255 - v)


def _png16() -> bytes:
    """A 16-bit RGB PNG (cv2 writes BGR)."""
    ok, data = cv2.imencode(".png", _deep(rgb(CAT)[:, :, ::-1]))
    assert ok
    return data.tobytes()


def _png16_gray() -> bytes:
    gray = np.asarray(Image.fromarray(rgb(CAT)).convert("L"))
    return _encode(Image.fromarray(_deep(gray)), "PNG")  # PIL mode I;16


def _gray_expected() -> np.ndarray:
    gray = np.asarray(Image.fromarray(rgb(CAT)).convert("L"))
    return np.repeat(gray[:, :, None], 3, axis=2)


def _rgba() -> bytes:
    """The photo with an alpha ramp: opaque at the left, transparent at the right."""
    photo = rgb(CAT)
    alpha = np.linspace(255, 0, photo.shape[1]).round().astype(np.uint8)
    rgba = np.dstack([photo, np.broadcast_to(alpha, photo.shape[:2])])
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _rgba_expected() -> np.ndarray:
    """Composited on white, as a person sees it on a white page."""
    photo = rgb(CAT).astype(np.float64)
    alpha = np.linspace(255, 0, photo.shape[1]).round()[None, :, None] / 255.0
    return (photo * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)


def _exif_rotated() -> bytes:
    """The cat photo stored on its side, with EXIF orientation 6 ("rotate 90° clockwise to
    view"): a viewer shows it 451 wide and 300 high, upright. Its pixels are 300 x 451."""
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb(CAT), 1)))  # 90° counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=95, exif=exif)


def _animated_gif() -> bytes:
    """Three frames: the cat, then its negative, then black. The first is the one shown."""
    photo = rgb(CAT)
    frames = [Image.fromarray(f) for f in (photo, 255 - photo, np.zeros_like(photo))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


def panorama() -> np.ndarray:
    """8000 x 300: the street photo stretched and mirrored along a wide strip."""
    street = cv2.resize(rgb(STREET), (558, 300), interpolation=cv2.INTER_AREA)
    strip = np.concatenate([street, street[:, ::-1]] * 8, axis=1)  # 8928 px
    return np.ascontiguousarray(strip[:, :8000])


def _portrait_bytes() -> bytes:
    return PORTRAIT.read_bytes()


CASES: tuple[Case, ...] = (
    Case("zero_byte", "empty.jpg", lambda: b"", message="empty (0 bytes): not an image"),
    Case("text_as_jpg", "notes.jpg", lambda: b"a shopping list, not a photo\neggs\nmilk\n" * 20,
         message="is not an image"),
    Case("truncated_jpeg", "cut.jpg", lambda: _portrait_bytes()[: len(_portrait_bytes()) // 2],
         message="damaged or truncated"),
    Case("png_bomb_30000", "bomb.png", lambda: _png_claiming(30000, 30000),
         message="image too large: 900 megapixels, limit 40"),
    Case("png_64_megapixels", "big_header.png", lambda: _png_claiming(8000, 8000),
         message="image too large: 64 megapixels (8000x8000), limit 40"),
    Case("one_pixel", "dot.png", lambda: _encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
         message="image is 1x1 pixels; at least 2x2 is needed"),
    Case("grayscale", "gray.png", _grayscale, expected=_gray_expected,
         wrong=lambda: 255 - _gray_expected()),
    Case("cmyk_jpeg", "cmyk.jpg", _cmyk_jpeg, expected=lambda: rgb(CAT), tolerance=4.0,
         wrong=lambda: 255 - rgb(CAT)),
    Case("png_16_bit_rgb", "deep.png", _png16, expected=lambda: rgb(CAT), tolerance=1.0,
         wrong=lambda: 255 - rgb(CAT)),
    Case("png_16_bit_gray", "deep_gray.png", _png16_gray, expected=_gray_expected, tolerance=1.0,
         wrong=lambda: 255 - _gray_expected()),
    Case("rgba_png", "alpha.png", _rgba, expected=_rgba_expected, tolerance=1.0,
         wrong=lambda: rgb(CAT)),
    Case("exif_rotated", "rotated.jpg", _exif_rotated, expected=lambda: rgb(CAT), tolerance=4.0),
    Case("animated_gif", "animated.gif", _animated_gif, expected=lambda: rgb(CAT), tolerance=12.0,
         wrong=lambda: 255 - rgb(CAT)),
    Case("panorama_8000x300", "panorama.jpg",
         lambda: _encode(Image.fromarray(panorama()), "JPEG", quality=90), expected=panorama,
         tolerance=4.0),
    Case("png_ihdr_length_zero", "header.png", _png_ihdr_length_zero,
         message="header.png could not be decoded (damaged or truncated): Truncated IHDR chunk"),
    Case("png_iccp_200mb_zeros", "profile.png", _png_iccp_bomb,
         message="profile.png could not be decoded (damaged or truncated): Decompressed data too large"),
    Case("qoi_cut", "cut.qoi", _qoi_cut, message="cut.qoi could not be decoded (damaged or truncated)"),
    Case("im_bad_size", "size.im", _im_bad_size, message="size.im could not be decoded (damaged or truncated)"),
    Case("ppm_long_token", "token.ppm", _ppm_long_token,
         message="token.ppm could not be decoded (damaged or truncated)"),
    Case("sgi_two_channels", "channels.sgi", _sgi_two_channels,
         message="channels.sgi could not be decoded (damaged or truncated): Unsupported SGI image mode"),
    Case("dds_unknown_flags", "flags.dds", _dds_unknown_flags,
         message="flags.dds could not be decoded (damaged or truncated): Unknown pixel format flags"),
    Case("spider_image_number_without_stack", "stack.spi", _spider_image_number_without_stack,
         message="stack.spi could not be decoded (damaged or truncated)"),
    Case("ico_short_ihdr", "icon.ico", _ico_short_ihdr,
         message="icon.ico could not be decoded (damaged or truncated): Truncated IHDR chunk"),
    Case("jp2_bad_marker", "marker.jp2", _jp2_bad_marker,
         message="marker.jp2 could not be decoded (damaged or truncated)"),
    Case("ico_hiding_7000x7000_png", "big_icon.ico", _ico_hiding_big_png,
         message="image too large: 49 megapixels (7000x7000), limit 40"),
    Case("thin_50000x2", "strip.png", _thin_strip,
         message="image is 50000x2 pixels: too thin for the model (aspect ratio 25000:1; at most 100:1)"),
    Case("float_tiff_nan", "nan.tif", _float_tiff_nan, message="image contains NaN or infinite values"),
    Case("float_tiff_0_to_1", "float.tif", _float_tiff, expected=_gray_expected, tolerance=1.0),
)
BY_NAME = {case.name: case for case in CASES}
#: The case also run as `python -m segfpn.cli predict ...` itself, to compare with the forked
#: runs of cli_runner.py.
LITERAL_CASE = "exif_rotated"


def write_all(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {case.name: case.write(folder) for case in CASES}
