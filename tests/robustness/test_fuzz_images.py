"""Fuzzed image files: mutations of small valid images in every format Pillow writes, each read
by :func:`segfpn.read_image`. Every one must give an RGB uint8 image within the size rules or
an :class:`ImageError`, nothing else, in bounded time and memory. And the hostile files of the
robustness table are refused before they cost memory."""

from __future__ import annotations

import gc
import io
import re
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from input_cases import BY_NAME, CAT, rgb
from PIL import Image

from segfpn.imageio import ImageError, read_image

SEED = 20260611
MUTATIONS_PER_FILE = 120
#: A file that takes longer than this to decode is a hang (a decoder loop), not a slow case: a
#: case takes ~1 ms, and 2 cores shared with other test processes can stall one for seconds.
MAX_SECONDS_PER_FILE = 20.0
#: The fuzz reads with this limit, so that what a file may cost is small enough to check:
#: a 1-megapixel float image and its conversions take ~20 MB.
FUZZ_MEGAPIXELS = 1.0
MAX_PEAK_GROWTH_MB = 64


def _photo(width: int = 24, height: int = 16) -> Image.Image:
    return Image.fromarray(rgb(CAT)).resize((width, height), Image.Resampling.BOX)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _with_exif_orientation(image: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(image, "JPEG", exif=exif)


def _float_values(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L"), np.float32) / 255.0)


def _sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)


def _int32(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image.convert("L"), np.int32) * 200)


def _animated(image: Image.Image, fmt: str) -> bytes:
    return _save(image, fmt, save_all=True, append_images=[image.transpose(Image.Transpose.ROTATE_180)])


def seed_files() -> dict[str, bytes]:
    """Small valid files, ``"<format>_<what>"`` -> bytes: every format Pillow writes and reads
    here (ICNS writes 1 MB of upscaled sizes and is refused anyway; PALM, PDF, BUFR, GRIB, HDF5
    and WMF are not read), in the modes each one stores."""
    photo = _photo()
    files = {
        "png_rgb": _save(photo, "PNG"), "png_rgba": _save(photo.convert("RGBA"), "PNG"),
        "png_l": _save(photo.convert("L"), "PNG"), "png_la": _save(photo.convert("LA"), "PNG"),
        "png_p": _save(photo.convert("P"), "PNG"), "png_1": _save(photo.convert("1"), "PNG"),
        "png_i16": _save(_sixteen_bit(photo), "PNG"),
        "jpeg_rgb": _save(photo, "JPEG"), "jpeg_l": _save(photo.convert("L"), "JPEG"),
        "jpeg_cmyk": _save(photo.convert("CMYK"), "JPEG"),
        "jpeg_progressive": _save(photo, "JPEG", progressive=True),
        "jpeg_exif_rotated": _with_exif_orientation(photo),
        "mpo": _animated(photo, "MPO"),
        "gif_animated": _animated(photo.convert("P"), "GIF"),
        "bmp_rgb": _save(photo, "BMP"), "bmp_p": _save(photo.convert("P"), "BMP"),
        "bmp_1": _save(photo.convert("1"), "BMP"), "dib": _save(photo, "DIB"),
        "tiff_rgb": _save(photo, "TIFF"), "tiff_lzw": _save(photo, "TIFF", compression="tiff_lzw"),
        "tiff_deflate_rgba": _save(photo.convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
        "tiff_jpeg": _save(photo, "TIFF", compression="jpeg"),
        "tiff_group4": _save(photo.convert("1"), "TIFF", compression="group4"),
        "tiff_cmyk": _save(photo.convert("CMYK"), "TIFF"), "tiff_lab": _save(photo.convert("LAB"), "TIFF"),
        "tiff_i16": _save(_sixteen_bit(photo), "TIFF"), "tiff_i32": _save(_int32(photo), "TIFF"),
        "tiff_float": _save(_float_values(photo), "TIFF"),
        "webp_lossy": _save(photo, "WEBP"), "webp_lossless_rgba": _save(photo.convert("RGBA"), "WEBP", lossless=True),
        "ppm": _save(photo, "PPM"), "pgm": _save(photo.convert("L"), "PPM"),
        "pbm": _save(photo.convert("1"), "PPM"), "pgm_16": _save(_sixteen_bit(photo), "PPM"),
        "im_rgb": _save(photo, "IM"), "im_float": _save(_float_values(photo), "IM"),
        "sgi_rgb": _save(photo, "SGI"), "sgi_l": _save(photo.convert("L"), "SGI"),
        "spider": _save(_float_values(photo), "SPIDER"),
        "ico_png": _save(photo.convert("RGBA"), "ICO", sizes=[(16, 16)]),
        "ico_bmp": _save(photo.convert("RGBA"), "ICO", sizes=[(16, 16)], bitmap_format="bmp"),
        "qoi_rgb": _save(photo, "QOI"), "qoi_rgba": _save(photo.convert("RGBA"), "QOI"),
        "dds_rgb": _save(photo, "DDS"), "dds_rgba": _save(photo.convert("RGBA"), "DDS"),
        "dds_l": _save(photo.convert("L"), "DDS"),
        "jpeg2000": _save(photo, "JPEG2000"), "j2k_codestream": _save(photo, "JPEG2000", no_jp2=True),
        "tga": _save(photo, "TGA"), "tga_rle_rgba": _save(photo.convert("RGBA"), "TGA", compression="tga_rle"),
        "pcx": _save(photo, "PCX"), "pcx_p": _save(photo.convert("P"), "PCX"),
        "blp": _save(photo.convert("P"), "BLP"), "msp": _save(photo.convert("1"), "MSP"),
        "xbm": _save(photo.convert("1"), "XBM"), "eps": _save(photo, "EPS"),
    }
    if "AVIF" in Image.SAVE:
        files["avif"] = _save(photo, "AVIF")
    return files


def _png_chunk_lengths(data: bytes) -> list[int]:
    """Offsets of the length fields of a PNG's chunks (none if ``data`` is not a PNG)."""
    offsets, at = [], 8
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return offsets
    while at + 8 <= len(data):
        offsets.append(at)
        at += 12 + struct.unpack(">I", data[at:at + 4])[0]
    return offsets


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-3 of: a bit flipped, a byte replaced, the file cut, a length or size field (a PNG
    chunk's, or any 2- or 4-byte word in the first 128 bytes) set to 0, 1, a random or the
    largest value, garbage inserted, a stretch repeated."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 7))
        at = int(rng.integers(0, len(out)))
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            out[at] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
        elif kind == 2 and len(out) > 1:
            del out[max(1, at):]
        elif kind in (3, 4):
            chunks = _png_chunk_lengths(bytes(out))
            width = int(rng.choice([2, 4]))
            if kind == 3 and chunks:
                at, width, order = int(rng.choice(chunks)), 4, ">"
            else:
                at, order = int(rng.integers(0, max(1, min(len(out), 128) - width))), str(rng.choice(["<", ">"]))
            largest = (1 << (8 * width)) - 1
            value = int(rng.choice([0, 1, largest, largest >> 1, int(rng.integers(0, largest))]))
            out[at:at + width] = struct.pack(order + ("H" if width == 2 else "I"), value)
        elif kind == 5:
            out[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif kind == 6:
            size = int(rng.integers(1, 256))
            out[at:at] = out[int(rng.integers(0, len(out))):][:size]
    return bytes(out)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _memory_mb(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024


def _peak_growth_mb(case: bytes) -> float:
    """How far one more read of ``case`` raises the process's peak resident memory, in MB."""
    gc.collect()
    _reset_peak()
    resident = _memory_mb("VmRSS")
    try:
        read_image(case, max_megapixels=FUZZ_MEGAPIXELS)
    except Exception:  # noqa: BLE001 -- only the memory is measured here
        pass
    return _memory_mb("VmHWM") - resident


def _contract_broken(image, max_megapixels: float) -> str | None:
    """Why ``image`` is not what read_image promises, or None."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        return f"not an RGB uint8 array: {type(image).__name__} {getattr(image, 'shape', '')}"
    height, width = image.shape[:2]
    if not image.flags.c_contiguous:
        return "not C-contiguous"
    if min(height, width) < 2 or height * width > max_megapixels * 1e6 or max(height, width) > 100 * min(height, width):
        return f"size {width}x{height} breaks the size rules"
    return None


@pytest.mark.filterwarnings("ignore")  # Pillow warns about many of the damaged files
def test_fuzzed_files_give_an_image_or_an_image_error():
    rng = np.random.default_rng(SEED)
    files = seed_files()
    broken, slow, costly, outcomes = [], [], [], {"image": 0, "ImageError": 0}
    for name, data in files.items():
        if name != "eps":  # refused by design (Ghostscript)
            assert _contract_broken(read_image(data), FUZZ_MEGAPIXELS) is None, name
        for index in range(MUTATIONS_PER_FILE):
            case = mutate(data, rng)
            _reset_peak()
            resident = _memory_mb("VmRSS")
            start = time.perf_counter()
            try:
                image = read_image(case, max_megapixels=FUZZ_MEGAPIXELS)
            except ImageError as error:
                outcomes["ImageError"] += 1
                assert str(error)
            except Exception as error:  # noqa: BLE001 -- what the test is looking for
                broken.append(f"{name} #{index}: {type(error).__name__}: {error}")
            else:
                outcomes["image"] += 1
                if (why := _contract_broken(image, FUZZ_MEGAPIXELS)) is not None:
                    broken.append(f"{name} #{index}: {why}")
            seconds = time.perf_counter() - start
            if seconds > MAX_SECONDS_PER_FILE:
                slow.append(f"{name} #{index}: {seconds:.1f} s")
            if (grown := _memory_mb("VmHWM") - resident) > MAX_PEAK_GROWTH_MB:
                # The peak is the whole process's: in a full test run another module's server
                # threads may allocate meanwhile. A case is costly only if it is so twice.
                if (grown := _peak_growth_mb(case)) > MAX_PEAK_GROWTH_MB:
                    costly.append(f"{name} #{index}: +{grown:.0f} MB")
    total = len(files) * MUTATIONS_PER_FILE
    print(f"{total} fuzzed files from {len(files)} seeds: {outcomes['image']} read, "
          f"{outcomes['ImageError']} refused with ImageError")
    assert broken == [], f"{len(broken)} of {total} (seed {SEED}):\n" + "\n".join(broken[:40])
    assert slow == [] and costly == []
    assert outcomes["image"] > total // 10  # the mutations leave many files readable: the test sees both


def test_hostile_files_are_refused_before_they_cost_memory():
    """The decompression bombs of the robustness table: in pixels (a PNG claiming 30000 x 30000,
    an icon hiding a 7000 x 7000 PNG behind a 16 x 16 directory entry) and in metadata (200 MB
    of zeros in an iCCP chunk). Each is refused with its message, the peak memory of this
    process growing by less than 20 MB."""
    refused = {}
    for name in ("png_bomb_30000", "png_64_megapixels", "ico_hiding_7000x7000_png", "png_iccp_200mb_zeros"):
        data = BY_NAME[name].make()
        _reset_peak()
        resident = _memory_mb("VmRSS")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                read_image(data)
                refused[name] = "read"
            except ImageError as error:
                refused[name] = str(error)
        grown = _memory_mb("VmHWM") - resident
        assert grown < 20, (name, grown, refused[name])
    for name, message in refused.items():
        assert BY_NAME[name].message.replace(BY_NAME[name].file_name, "input") in message, (name, message)


def _webp_declaring(size: tuple[int, int], layout: str) -> bytes:
    """A real 16x16 WebP in ``layout`` ("VP8 ", "VP8L" or "VP8X"), its header changed to declare
    ``size`` (width, height)."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    options = {"VP8 ": {}, "VP8L": {"lossless": True}, "VP8X": {"exif": Image.Exif().tobytes()}}[layout]
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", **options)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == layout.encode()
    width, height = size
    if layout == "VP8X":
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif layout == "VP8 ":
        data[26:30] = struct.pack("<HH", width, height)
    else:
        bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
        data[21:25] = struct.pack("<I", bits | (width - 1) | (height - 1) << 14)
    return bytes(data)


@pytest.mark.parametrize("layout", ["VP8 ", "VP8L", "VP8X"])
def test_a_webp_declaring_a_huge_canvas_is_refused_before_it_is_opened(layout, monkeypatch):
    """libwebp allocates a WebP's whole canvas while Pillow opens it (16383x16383: 1 GiB for a
    300-byte file), so the declared size is checked from the header before Pillow sees the file."""
    from PIL import Image as PILImage

    opened = []
    real_open = PILImage.open
    monkeypatch.setattr(PILImage, "open", lambda fp, *a, **k: opened.append(fp) or real_open(fp, *a, **k))
    rng = np.random.default_rng(5)
    for size in [(16383, 16383), (6000, 7000)] + [tuple(int(v) for v in rng.integers(7000, 16384, 2))
                                                  for _ in range(3)]:
        with pytest.raises(ImageError, match=rf"too large: \d+ megapixels \({size[0]}x{size[1]}\)"):
            read_image(_webp_declaring(size, layout))
    assert opened == []
    assert read_image(_webp_declaring((16, 16), layout)).shape == (16, 16, 3)  # the untouched size still reads
