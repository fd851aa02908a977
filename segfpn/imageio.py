"""Turning what a user hands us (a path, bytes, a PIL image, an array) into an RGB uint8 array."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest image accepted, in megapixels.
MAX_MEGAPIXELS = 40.0


class ImageError(ValueError):
    """The input is not an image segfpn can use; the message says why."""


def _check_pixels(width: int, height: int, max_megapixels: float) -> None:
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageError(f"image too large: {megapixels:.0f} megapixels ({width}x{height}), limit {max_megapixels:.0f}")


def _from_pil(image: Image.Image, max_megapixels: float) -> np.ndarray:
    _check_pixels(image.width, image.height, max_megapixels)
    try:
        image = ImageOps.exif_transpose(image)  # show the orientation a person sees
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if array.max() > 255 else 255.0
            image = Image.fromarray((array / peak * 255.0 + 0.5).clip(0, 255).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "P", "PA"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"the image data is damaged or truncated: {exc}") from exc


def from_array(array: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays (uint8, uint16, bool or float in [0, 1]) -> RGB uint8."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"expected an HxW or HxWx3 image array, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("image array contains NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {array.dtype}; use uint8, uint16 or float in [0, 1]")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        array = (array[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return np.ascontiguousarray(array)


def read_image(source, *, max_megapixels: float = MAX_MEGAPIXELS) -> np.ndarray:
    """A path, bytes, file object, PIL image or numpy array -> RGB uint8 [H, W, 3].

    Grayscale, RGBA (composited on white), palette, CMYK and 16-bit images are converted; EXIF
    orientation is applied; the first frame of an animation is used.
    Raises :class:`ImageError` naming the problem for anything else.
    """
    if isinstance(source, np.ndarray):
        image = from_array(source)
    else:
        if isinstance(source, Image.Image):
            image = _from_pil(source, max_megapixels)
        else:
            if isinstance(source, (str, os.PathLike)):
                path = Path(source)
                if not path.is_file():
                    raise ImageError(f"{path} does not exist or is not a file")
                if path.stat().st_size == 0:
                    raise ImageError(f"{path.name} is empty (0 bytes): not an image")
                opener = lambda: Image.open(path)  # noqa: E731
                name = path.name
            elif isinstance(source, (bytes, bytearray)):
                if not source:
                    raise ImageError("empty input (0 bytes): not an image")
                opener = lambda: Image.open(io.BytesIO(source))  # noqa: E731
                name = "input"
            elif hasattr(source, "read"):
                opener = lambda: Image.open(source)  # noqa: E731
                name = getattr(source, "name", "input")
            else:
                raise ImageError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, "
                                 "a PIL image or an HxWx3 uint8 array")
            try:
                # Image.open reads only the header: the size is checked before any pixel is decoded.
                with opener() as pil:
                    _check_pixels(pil.width, pil.height, max_megapixels)
                    image = _from_pil(pil, max_megapixels)
            except Image.DecompressionBombError as exc:
                # PIL refuses before we see the size; its message carries the pixel count.
                pixels = re.search(r"\((\d+) pixels\)", str(exc))
                size = f"{int(pixels[1]) / 1e6:.0f} megapixels" if pixels else f"over {max_megapixels:.0f} megapixels"
                raise ImageError(f"image too large: {size}, limit {max_megapixels:.0f}") from None
            except UnidentifiedImageError:
                raise ImageError(f"{name} is not an image (format not recognised)") from None
            except OSError as exc:
                raise ImageError(f"{name} could not be decoded (damaged or truncated): {exc}") from None
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageError(f"image is {image.shape[1]}x{image.shape[0]} pixels; at least 2x2 is needed")
    return image
