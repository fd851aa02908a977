"""Inputs a person can hand the model: converted when they are images, a clear error when not."""

import io
import re
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
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


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


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="TIFF")
    return buf.getvalue()


def _gray_photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "camera_gray.png").convert("L"))


def test_float_images_are_read_by_their_range():
    gray = _gray_photo()
    picture = np.repeat(gray[:, :, None], 3, axis=2)
    for peak in (1.0, 255.0, 65535.0):  # a mode "F" TIFF in [0, 1] used to come out black
        values = gray.astype(np.float32) * np.float32(peak / 255.0)
        assert np.abs(read_image(_tiff(values)).astype(int) - picture).max() <= 1, peak
        assert np.abs(read_image(values).astype(int) - picture).max() <= 1, peak
    overshoot = gray.astype(np.float32) / 255 * 1.1 - 0.05  # resampling overshoot: clipped
    assert read_image(_tiff(overshoot)).max() == 255 and read_image(_tiff(overshoot)).min() == 0
    for bad in (np.nan, np.inf, -np.inf):
        values = gray.astype(np.float32) / 255
        values[10:20, 30:40] = bad
        with pytest.raises(ImageError, match=r"NaN or infinite values \(100 of 262144 values\)"):
            read_image(_tiff(values))
        with pytest.raises(ImageError, match="NaN or infinite"):
            read_image(values)
    for low, high in ((0.0, 1e6), (-1.0, 1.0)):
        with pytest.raises(ImageError, match=re.escape(f"image values run from {low:g} to {high:g}")):
            read_image(_tiff(np.linspace(low, high, 64 * 64, dtype=np.float32).reshape(64, 64)))


def test_integer_images_are_read_by_their_range():
    gray = _gray_photo()
    eight = read_image(_tiff(gray.astype(np.int32)))  # mode "I", values 0-255
    np.testing.assert_array_equal(eight[..., 0], gray)
    sixteen = read_image(_tiff(gray.astype(np.int32) * 257))  # mode "I", values 0-65535
    np.testing.assert_array_equal(sixteen[..., 0], gray)
    for values in (gray.astype(np.int32) - 1, gray.astype(np.int32) * 1000):
        with pytest.raises(ImageError, match="segfpn reads 8- and 16-bit values"):
            read_image(_tiff(values))


def test_sixteen_bit_images_are_converted_without_float64_copies():
    import tracemalloc

    ramp = (np.arange(1500 * 2000, dtype=np.uint32).reshape(1500, 2000) % 65536).astype(np.uint16)
    data = _png_bytes(Image.fromarray(ramp))
    tracemalloc.start()  # numpy's and Python's allocations (not Pillow's own image memory)
    try:
        rgb = read_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(rgb[..., 1], ((ramp.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
    # The old path made a float64 copy of the whole image (8 bytes a pixel) and two more.
    assert peak < 2.5 * rgb.nbytes, peak / 1e6


def test_thin_images_are_refused_with_their_aspect_ratio():
    strip = _png_bytes(Image.new("RGB", (50000, 2)))
    with pytest.raises(ImageError, match=re.escape(
            "image is 50000x2 pixels: too thin for the model (aspect ratio 25000:1; at most 100:1)")):
        read_image(strip)
    assert read_image(np.zeros((2, 200, 3), np.uint8)).shape == (2, 200, 3)  # exactly 100:1
    with pytest.raises(ImageError, match="too thin"):
        read_image(np.zeros((202, 2), np.uint8))


def test_every_size_read_image_accepts_leaves_the_model_pixels_on_each_side():
    """Seeded random sizes: what passes the size rules is at least 13 px on its shorter side
    once the model resizes it (torchvision's and detectron2's rules, 800 / 1333), and what is
    refused is refused with a message naming its size."""
    from segfpn.config import InputConfig, detectron2_input
    from segfpn.imageio import check_size
    from segfpn.model.preprocess import resized_size

    rng = np.random.default_rng(8)
    accepted = 0
    for _ in range(3000):
        width, height = (int(x) for x in np.exp(rng.uniform(np.log(1), np.log(60000), 2)))
        try:
            check_size(width, height)
        except ImageError as error:
            assert f"image is {width}x{height} pixels" in str(error) or "too large" in str(error)
            continue
        accepted += 1
        for config in (InputConfig(), detectron2_input()):
            assert min(resized_size(height, width, config)) >= 13, (width, height)
    assert 500 < accepted < 2900


def _photo_jpeg(width: int, height: int, **options) -> bytes:
    buf = io.BytesIO()
    Image.open(EXAMPLES / "voc2007_000001_portrait.jpg").convert("RGB").resize((width, height)).save(
        buf, format="JPEG", quality=95, **options)
    return buf.getvalue()


def test_max_side_decodes_a_reduced_image():
    import cv2

    from segfpn.imageio import decode_image

    jpeg = _photo_jpeg(1600, 1200)
    full = read_image(jpeg)
    reduced = decode_image(jpeg, max_side=400)
    assert reduced.rgb.shape == (300, 400, 3) and reduced.original_size == (1200, 1600) and reduced.reduced
    area = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.rgb.astype(int) - area).mean() < 2.0  # decoded at 1/2 scale, then area-averaged
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1600 x 1200, shown 1200 x 1600
    upright = decode_image(_photo_jpeg(1600, 1200, exif=exif), max_side=400)
    assert upright.rgb.shape == (400, 300, 3) and upright.original_size == (1600, 1200)
    np.testing.assert_array_equal(read_image(jpeg, max_side=1600), full)  # not larger: unchanged
    sixteen = Image.fromarray((np.arange(900 * 600, dtype=np.uint32).reshape(600, 900) % 65536).astype(np.uint16))
    assert read_image(_png_bytes(sixteen), max_side=300).shape == (200, 300, 3)
    array = decode_image(np.zeros((100, 1000, 3), np.uint8), max_side=250)
    assert array.rgb.shape == (25, 250, 3) and array.original_size == (100, 1000)
    with pytest.raises(ValueError, match="max_side"):
        read_image(jpeg, max_side=0)


def test_file_objects_postscript_and_unreadable_files(tmp_path):
    photo = EXAMPLES / "camera_gray.png"
    with photo.open("rb") as f:
        assert read_image(f).shape == (512, 512, 3)
        assert not f.closed  # the caller's file is the caller's to close

    class Stream:  # a pipe: read() only
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def read(self, size=-1):
            return self.data.read(size)

    assert read_image(Stream(photo.read_bytes())).shape == (512, 512, 3)
    eps = io.BytesIO()
    Image.new("RGB", (16, 16)).save(eps, format="EPS")
    with pytest.raises(ImageError, match="PostScript file; reading it would run Ghostscript"):
        read_image(eps.getvalue())
