"""Inputs a person can hand the model: converted when they are images, a clear error when not."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import segfpn
from segfpn.imageio import ImageError, read_image

from testdata import EXAMPLES


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (the pixel data is never reached)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_grayscale_rgba_palette_and_16_bit_are_converted():
    gray = read_image(EXAMPLES / "camera_gray.png")
    assert gray.shape == (512, 512, 3) and gray.dtype == np.uint8
    assert np.array_equal(gray[..., 0], gray[..., 2])
    rgba = read_image(EXAMPLES / "horse_rgba.png")
    assert rgba.shape == (328, 400, 3)
    assert tuple(rgba[0, 0]) == (255, 255, 255)  # transparent corner composited on white
    ramp = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 32)
    sixteen = read_image(_png_bytes(Image.fromarray(ramp)))
    assert sixteen.dtype == np.uint8 and sixteen[-1, -1, 0] > sixteen[0, 0, 0]
    palette = read_image(_png_bytes(Image.fromarray(np.tile(np.arange(16, dtype=np.uint8), (8, 1))).convert("P")))
    assert palette.shape == (8, 16, 3)


def test_cmyk_jpeg_and_exif_orientation():
    buf = io.BytesIO()
    Image.new("CMYK", (40, 20), (0, 255, 255, 0)).save(buf, format="JPEG")
    red = read_image(buf.getvalue())
    assert red.shape == (20, 40, 3) and red[10, 20, 0] > 200 and red[10, 20, 1] < 60
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (40, 20), (10, 20, 30)).save(rotated, format="JPEG", exif=exif)
    assert read_image(rotated.getvalue()).shape == (40, 20, 3)  # as a person sees it


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    first = read_image(buf.getvalue())
    assert first.shape == (12, 16, 3) and first[0, 0, 0] > 200


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is a text file, not a photo\n", "not an image"),
    (_png_claiming_size(30000, 30000), "image too large: 900 megapixels, limit 40"),
    (_png_claiming_size(9000, 6000), "image too large: 54 megapixels \\(9000x6000\\), limit 40"),
])
def test_bad_bytes(data, message):
    with pytest.raises(ImageError, match=message):
        read_image(data)


def test_truncated_jpeg_and_text_named_jpg(tmp_path):
    good = (EXAMPLES / "voc2007_000001_portrait.jpg").read_bytes()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good[: len(good) // 3])
    with pytest.raises(ImageError, match="damaged or truncated"):
        read_image(truncated)
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match="notes.jpg is not an image"):
        read_image(text)
    with pytest.raises(ImageError, match="does not exist"):
        read_image(tmp_path / "missing.jpg")


def test_tiny_and_malformed_arrays():
    with pytest.raises(ImageError, match="1x1 pixels"):
        read_image(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError, match="HxW or HxWx3"):
        read_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match="NaN"):
        read_image(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ImageError, match="cannot read an image from a dict"):
        read_image({})


def test_predict_reports_bad_input_clearly(d2_mini_checkpoint):
    predictor = segfpn.load(d2_mini_checkpoint, device="cpu")
    with pytest.raises(ImageError, match="empty"):
        predictor.predict(b"")
    wide = predictor.predict(np.full((30, 400, 3), 128, np.uint8))  # 13:1 panorama
    assert wide.instances.masks.shape[1:] == (30, 400) and wide.panoptic.segment_ids.shape == (30, 400)
