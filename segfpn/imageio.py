"""Turning what a user hands us (a path, bytes, a PIL image, an array) into an RGB uint8 array.

Whatever goes wrong with an input (not an image, damaged or hostile data, too large, too thin,
values that are not a picture) is an :class:`ImageError` whose message names the reason; no
other exception comes out of Pillow's decoders.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: Largest image accepted, in megapixels.
MAX_MEGAPIXELS = 40.0
#: Largest ratio of the longer side to the shorter. The model scales the longer side to at most
#: 1333 px, so a 100:1 strip reaches it 13 px thin (3 px at the stride-4 level); much thinner and
#: the shorter side rounds to nothing.
MAX_ASPECT_RATIO = 100.0
#: Smallest side accepted, in pixels.
MIN_SIDE = 2

#: Formats opened but not decoded, and why.
_REFUSED_FORMATS = {
    "EPS": "a PostScript file; reading it would run Ghostscript, an interpreter, on it",
    # Containers whose decoders open an embedded image of a size known only once it is decoded.
    "ICNS": "a macOS icon, not read (its images' sizes are known only once they are decoded)",
    "IPTC": "an IPTC record, not read (its image's size is known only once it is decoded)",
}
#: EXIF orientation -> the transpose that shows the picture as a person sees it.
_ORIENTATIONS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA", "P")
#: Elements converted at a time (bounds the temporary copies of a 40-megapixel image).
_BLOCK = 1 << 20


class ImageError(ValueError):
    """The input is not an image segfpn can use; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """``rgb``: uint8 [h, w, 3], C-contiguous. ``original_size``: (H, W) of the picture before
    any reduction, as a person sees it (EXIF orientation applied); equal to ``rgb.shape[:2]``
    unless ``max_side`` reduced it."""

    rgb: np.ndarray
    original_size: tuple[int, int]

    @property
    def reduced(self) -> bool:
        return tuple(self.rgb.shape[:2]) != tuple(self.original_size)


def _check_megapixels(width: int, height: int, max_megapixels: float) -> None:
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageError(f"image too large: {megapixels:.0f} megapixels ({width}x{height}), limit {max_megapixels:.0f}")


def check_size(width: int, height: int, *, max_megapixels: float = MAX_MEGAPIXELS,
               max_aspect_ratio: float = MAX_ASPECT_RATIO) -> None:
    """Raise :class:`ImageError` unless a ``width`` x ``height`` image is one the model can take:
    at least 2 px a side, at most ``max_megapixels``, at most ``max_aspect_ratio``:1."""
    _check_megapixels(width, height, max_megapixels)
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise ImageError(f"image is {width}x{height} pixels: too thin for the model (aspect ratio {ratio:.0f}:1; "
                         f"at most {max_aspect_ratio:.0f}:1)")


def _reduced_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) with the longer side at most ``max_side``, the aspect ratio kept, no side below 2."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


#: A way to go over an image's values a few rows at a time: yields (rows, values of those rows).
Blocks = Callable[[], Iterator[tuple[slice, np.ndarray]]]


def _array_blocks(array: np.ndarray) -> Blocks:
    rows = max(1, _BLOCK // max(1, int(np.prod(array.shape[1:]))))
    return lambda: ((slice(top, top + rows), array[top:top + rows]) for top in range(0, len(array), rows))


def _image_blocks(image: Image.Image) -> Blocks:
    """Blocks of a loaded PIL image, each a copy of a few rows (never the whole image)."""
    width, height = image.size
    rows = max(1, _BLOCK // max(1, width))

    def blocks():
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            yield slice(top, bottom), np.asarray(image.crop((0, top, width, bottom)))

    return blocks


def _value_range(blocks: Blocks) -> tuple[float, float]:
    """(min, max) of the values; :class:`ImageError` for NaN or infinity."""
    low, high, bad, count = np.inf, -np.inf, 0, 0
    for _, block in blocks():
        count += block.size
        if np.issubdtype(block.dtype, np.floating):
            finite = np.isfinite(block)
            if not finite.all():
                bad += int(block.size - np.count_nonzero(finite))
                continue
        if block.size:
            low, high = min(low, float(block.min())), max(high, float(block.max()))
    if bad:
        raise ImageError(f"image contains NaN or infinite values ({bad} of {count} values); "
                         "replace them with numbers before segmenting")
    return low, high


def _scale_to_uint8(blocks: Blocks, shape: tuple[int, ...], peak: float) -> np.ndarray:
    """Values in [0, peak] -> uint8 [shape], rounded; values outside are clipped."""
    out = np.empty(shape, np.uint8)
    for rows, block in blocks():
        if peak == 65535.0 and block.dtype.kind in "ui":
            out[rows] = (block.astype(np.uint32) * 255 + 32767) // 65535  # exact, in integers
        elif peak == 255.0 and block.dtype.kind in "ui":
            out[rows] = block
        else:
            scaled = block.astype(np.float64) * (255.0 / peak) + 0.5
            out[rows] = np.clip(scaled, 0.0, 255.0, out=scaled)
    return out


def _floats_to_uint8(blocks: Blocks, shape: tuple[int, ...]) -> np.ndarray:
    """Float pixel values -> uint8. The range is the smallest of [0, 1], [0, 255] and
    [0, 65535] that the values fit in, allowing half the range of overshoot (resampling
    overshoot, rounding below zero), which is clipped; values outside any are refused."""
    low, high = _value_range(blocks)
    for peak in (1.0, 255.0, 65535.0):
        if high <= 1.5 * peak:
            if low < -0.5 * peak:
                break
            return _scale_to_uint8(blocks, shape, peak)
    raise ImageError(f"image values run from {low:g} to {high:g}; float images are read as [0, 1], "
                     "[0, 255] or [0, 65535]: rescale it to one of those")


def _integers_to_uint8(blocks: Blocks, shape: tuple[int, ...]) -> np.ndarray:
    """Integer pixel values (16- or 32-bit) -> uint8: read as 0-255 when every value fits
    there, else as 0-65535; values outside 0-65535 are refused."""
    low, high = _value_range(blocks)
    if low < 0 or high > 65535:
        raise ImageError(f"image has integer values from {low:.0f} to {high:.0f}; segfpn reads 8- and 16-bit "
                         "values (0-65535): convert it to an 8- or 16-bit image")
    return _scale_to_uint8(blocks, shape, 255.0 if high <= 255 else 65535.0)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] -> [H, W, 3]: the picture over a white page."""
    out = np.empty((*rgba.shape[:2], 3), np.uint8)
    for rows, block in _array_blocks(rgba)():
        alpha = block[:, :, 3:].astype(np.float32) / 255.0
        out[rows] = block[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5
    return out


def from_array(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays -> RGB uint8 [H, W, 3].

    dtypes: uint8; uint16 (0-65535); bool; float, read as [0, 1], [0, 255] or [0, 65535] by
    its largest value (see :func:`_floats_to_uint8`; NaN and infinity are refused). A 4th
    channel is alpha: the picture is composited on white.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"expected an HxW or HxWx3 image array, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = _scale_to_uint8(_array_blocks(array), array.shape, 65535.0)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = _floats_to_uint8(_array_blocks(array), array.shape)
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        array = _composite_on_white(array)
    return np.ascontiguousarray(array)


def _orientation(pil: Image.Image) -> Image.Transpose | None:
    try:
        return _ORIENTATIONS.get(pil.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception as exc:  # noqa: BLE001 -- damaged metadata: the pixels are still the picture
        logger.warning("ignoring unreadable EXIF data: %s", exc)
        return None


def _gray_or_rgb(pil: Image.Image) -> Image.Image:
    """A loaded image of any mode -> the picture in mode "L" or "RGB".

    16-bit and 32-bit integer images ("I;16*", "I") are read by their values' range (0-255 if
    they fit, else 0-65535), float images ("F") as [0, 1], [0, 255] or [0, 65535]; images with
    alpha are composited on white; CMYK, YCbCr, LAB, HSV... are converted by Pillow.
    """
    mode = pil.mode
    if mode in ("L", "RGB"):
        return pil
    if mode == "1":
        return pil.convert("L")
    if mode == "F":
        return Image.fromarray(_floats_to_uint8(_image_blocks(pil), (pil.height, pil.width)))
    if mode == "I" or mode.startswith("I;16"):
        return Image.fromarray(_integers_to_uint8(_image_blocks(pil), (pil.height, pil.width)))
    if mode in _ALPHA_MODES and (mode != "P" or "transparency" in pil.info):
        rgba = pil.convert("LA").convert("RGBA") if mode == "La" else pil.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba)
        return white
    return pil.convert("RGB")


def _to_rgb(pil: Image.Image, *, max_side: int | None, max_megapixels: float, max_aspect_ratio: float,
            drafted_from: tuple[int, int] | None = None) -> DecodedImage:
    """A PIL image (its header read, perhaps not yet decoded) -> :class:`DecodedImage`.
    ``drafted_from``: the (w, h) in the file when ``pil.draft`` made the decoder reduce it."""
    pil.load()
    check_size(*pil.size, max_megapixels=max_megapixels, max_aspect_ratio=max_aspect_ratio)  # some loaders resize
    transpose = _orientation(pil)
    width, height = drafted_from or pil.size
    image = _gray_or_rgb(pil)
    target = _reduced_size(width, height, max_side)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BOX, reducing_gap=2.0)  # area averaging
    if transpose is not None:
        image = image.transpose(transpose)
        if transpose in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                         Image.Transpose.ROTATE_270):
            width, height = height, width
    # A few rows at a time: np.asarray(image) would hold two whole copies at once (tobytes).
    rgb = np.empty((image.height, image.width, 3), np.uint8)
    for rows, block in _image_blocks(image)():
        rgb[rows] = block if block.ndim == 3 else block[:, :, None]
    return DecodedImage(rgb=rgb, original_size=(height, width))


def _check_icon_frames(stream, *, max_megapixels: float) -> None:
    """An icon (ICO) lists its frames' sizes in a directory, but Pillow decodes its largest frame
    while opening it, at the size in that frame's own PNG or BMP header: a directory may say
    16x16 for a 7000x7000 PNG. Check the frames' own headers before Pillow opens ``stream``."""
    head = stream.read(6)
    if len(head) == 6 and head[:4] == b"\0\0\1\0":
        count = struct.unpack("<H", head[4:])[0]
        directory = stream.read(16 * count)
        for entry in range(len(directory) // 16):
            (offset,) = struct.unpack("<I", directory[16 * entry + 12:16 * entry + 16])
            stream.seek(offset)
            frame = stream.read(24)
            if frame[:8] == b"\x89PNG\r\n\x1a\n" and len(frame) == 24:
                width, height = struct.unpack(">II", frame[16:24])
            elif len(frame) >= 12:
                width, height = struct.unpack("<ii", frame[4:12])
                width, height = abs(width), abs(height) // 2  # the colour and the mask bitmaps
            else:
                continue
            _check_megapixels(width, height, max_megapixels)
    stream.seek(0)


def _check_webp_canvas(stream, *, max_megapixels: float) -> None:
    """libwebp, under Pillow's WebP opener, allocates the whole canvas (4 bytes a pixel) while the
    file is opened, before its size can be checked: a 300-byte file may declare 16383x16383
    (1 GiB). Read the size from the first chunk's header (RIFF container; VP8X canvas, VP8 frame or
    VP8L bitstream) and check it before Pillow opens ``stream``."""
    head = stream.read(30)
    stream.seek(0)
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(head[24:27], "little")
        height = 1 + int.from_bytes(head[27:30], "little")
    elif chunk == b"VP8 ":
        width = struct.unpack("<H", head[26:28])[0] & 0x3FFF
        height = struct.unpack("<H", head[28:30])[0] & 0x3FFF
    elif chunk == b"VP8L":
        bits = struct.unpack("<I", head[21:25])[0]
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        return
    _check_megapixels(width, height, max_megapixels)


def decode_image(source, *, max_side: int | None = None, max_megapixels: float = MAX_MEGAPIXELS,
                 max_aspect_ratio: float = MAX_ASPECT_RATIO) -> DecodedImage:
    """:func:`read_image`, also giving the size of the picture before ``max_side`` reduced it."""
    limits = {"max_megapixels": max_megapixels, "max_aspect_ratio": max_aspect_ratio}
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"max_side must be at least {MIN_SIDE}, got {max_side}")
    if isinstance(source, np.ndarray):
        if source.ndim >= 2:
            check_size(source.shape[1], source.shape[0], **limits)
        rgb = from_array(source)
        target = _reduced_size(rgb.shape[1], rgb.shape[0], max_side)
        reduced = rgb
        if target != (rgb.shape[1], rgb.shape[0]):
            small = Image.fromarray(rgb).resize(target, Image.Resampling.BOX, reducing_gap=2.0)
            reduced = np.ascontiguousarray(np.asarray(small))
        return DecodedImage(rgb=reduced, original_size=rgb.shape[:2])
    if isinstance(source, Image.Image):
        name = Path(getattr(source, "filename", "") or "image").name
        check_size(*source.size, **limits)
        return _decoded_or_error(lambda: _to_rgb(source, max_side=max_side, **limits), name, limits)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name} is empty (0 bytes): not an image")
        try:
            stream, name = contextlib.closing(path.open("rb")), path.name
        except OSError as exc:
            raise ImageError(f"{path} cannot be read: {exc.strerror}") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageError("empty input (0 bytes): not an image")
        stream, name = contextlib.nullcontext(io.BytesIO(source)), "input"
    elif hasattr(source, "read"):
        name = Path(str(getattr(source, "name", "input"))).name
        seekable = getattr(source, "seekable", lambda: False)()
        # The caller's file stays open; one that cannot seek is read into memory (as Pillow would).
        stream = contextlib.nullcontext(source if seekable else io.BytesIO(source.read()))
    else:
        raise ImageError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, "
                         "a PIL image or an HxWx3 uint8 array")

    def decode() -> DecodedImage:
        with stream as fp:
            fp.seek(0)
            _check_icon_frames(fp, max_megapixels=max_megapixels)
            _check_webp_canvas(fp, max_megapixels=max_megapixels)
            with Image.open(fp) as pil:
                # Only the header is read so far: the size is checked before any pixel is decoded.
                check_size(*pil.size, **limits)
                if pil.format in _REFUSED_FORMATS:
                    raise ImageError(f"{name} is {_REFUSED_FORMATS[pil.format]}; convert it to PNG or JPEG")
                declared, target = pil.size, _reduced_size(*pil.size, max_side)
                # A JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least the size asked for.
                drafted = target != declared and pil.draft(None, target) is not None
                return _to_rgb(pil, max_side=max_side, drafted_from=declared if drafted else None, **limits)

    return _decoded_or_error(decode, name, limits)


def _decoded_or_error(decode, name: str, limits: dict) -> DecodedImage:
    """``decode()``, with every failure of a decoder turned into an :class:`ImageError`."""
    try:
        return decode()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # PIL refuses before we see the size; its message carries the pixel count.
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        limit = limits["max_megapixels"]
        size = f"{int(pixels[1]) / 1e6:.0f} megapixels" if pixels else f"over {limit:.0f} megapixels"
        raise ImageError(f"image too large: {size}, limit {limit:.0f}") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image (format not recognised)") from None
    except MemoryError:
        raise  # the machine, not the file: a file within the size limits fits in memory
    except Exception as exc:  # Pillow's decoders raise IndexError, ValueError, ... on bad data
        reason = str(exc) or type(exc).__name__
        raise ImageError(f"{name} could not be decoded (damaged or truncated): {reason}") from exc


def read_image(source, *, max_side: int | None = None, max_megapixels: float = MAX_MEGAPIXELS,
               max_aspect_ratio: float = MAX_ASPECT_RATIO) -> np.ndarray:
    """A path, bytes, file object, PIL image or numpy array -> RGB uint8 [H, W, 3], C-contiguous.

    Grayscale, palette, CMYK, YCbCr and LAB images are converted; alpha is composited on white;
    EXIF orientation is applied (the picture as a person sees it); the first frame of an
    animation is used. Values beyond 8 bits: 16- and 32-bit integer images are read as 0-255
    when every value fits there, else as 0-65535 (other values are refused); float images
    ("F" TIFFs, float arrays) as [0, 1], [0, 255] or [0, 65535], the smallest their largest
    value fits (half a range of overshoot is clipped); NaN or infinity is refused.

    ``max_side``: when the picture's longer side is above it, it is reduced to exactly that
    (area averaging) -- JPEGs are decoded at a reduced scale directly, so a 24-megapixel photo
    never exists in memory at full size. Use it when the model downscales anyway; boxes and
    masks are then in the reduced image's pixels (:func:`decode_image` gives the original size).
    ``max_megapixels``, ``max_aspect_ratio``: the limits of :func:`check_size`, applied to the
    size declared in the file before anything is decoded.

    Raises :class:`ImageError` naming the problem for anything that is not such an image:
    undecodable, damaged or hostile data of any format included.
    """
    return decode_image(source, max_side=max_side, max_megapixels=max_megapixels,
                        max_aspect_ratio=max_aspect_ratio).rgb
