"""Very elongated uploads (a 50000x2 strip): the app downscales uploads above --max-side, and
no downscale may end in a side the model cannot take or in a message about a size the person
never uploaded. Every message names the size as uploaded."""

from __future__ import annotations

import re

import numpy as np
import pytest
from app_process import serve_in_process
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from serve_app import MINI_CHECKPOINT, SMALL_INPUT

import segfpn
from segfpn import ImageError
from segfpn.app import session
from segfpn.app.source import ModelSource

MAX_SIDE = session.MAX_SIDE
#: The shortest side the model takes (segfpn.read_image's minimum).
MIN_SIDE = 2


def _elongated_sizes(seed: int, count: int) -> list[tuple[int, int]]:
    """(width, height) of random strips longer than MAX_SIDE, lying or standing."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        long_side = int(rng.integers(MAX_SIDE + 1, 60_001))
        short_side = int(rng.integers(2, 40))
        sizes.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
    return sizes


def _sizes_named(text: str) -> set[str]:
    return set(re.findall(r"\b\d+x\d+\b", text))


def test_downscale_keeps_two_pixels_or_refuses_naming_the_upload():
    """40 seeded random strips: downscaled to at most MAX_SIDE with both sides at least
    MIN_SIDE, or refused with a message naming the size uploaded."""
    for width, height in _elongated_sizes(seed=0, count=40):
        strip = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
        try:
            image, original = session.prepare_image(strip, max_side=MAX_SIDE)
        except ImageError as e:
            assert f"{width}x{height}" in str(e)
            continue
        assert original == (height, width)
        assert max(image.shape[:2]) <= MAX_SIDE and min(image.shape[:2]) >= MIN_SIDE, (width, height)


class _RefusesThinImages:
    """A predictor that, like a model, refuses an image whose shorter side is under 8 px,
    naming the size it was given."""

    def predict(self, image, **kwargs):
        h, w = image.shape[:2]
        raise ImageError(f"image is {w}x{h} pixels; too thin for this model")


def test_an_error_from_the_model_names_the_size_uploaded():
    strip = np.zeros((30, 9000, 3), np.uint8)  # downscaled to 2000x7, then refused
    with pytest.raises(ImageError) as refused:
        session.run_model(_RefusesThinImages(), strip, max_side=MAX_SIDE)
    assert "9000x30" in str(refused.value)


@pytest.fixture(scope="module")
def app_url():
    predictor = segfpn.load(MINI_CHECKPOINT, device="cpu", overrides=SMALL_INPUT)
    url, demo = serve_in_process(ModelSource.from_predictor(predictor, "mini"))
    yield url
    demo.close()


#: Uploads through the app: three named strips, and three seeded random ones.
APP_CASES = {"50000x2": [(50_000, 2)], "2x50000": [(2, 50_000)], "30000x3": [(30_000, 3)],
             "random": _elongated_sizes(seed=1, count=3)}


@pytest.mark.parametrize("case", list(APP_CASES))
def test_the_app_answers_about_the_size_uploaded(app_url, tmp_path, case):
    """Through the app: either segmented (the summary says what it was downscaled from) or
    refused with a message naming the upload's size, and no size with a side under MIN_SIDE."""
    client = Client(app_url, verbose=False)
    try:
        for width, height in APP_CASES[case]:
            path = tmp_path / f"strip_{width}x{height}.png"
            Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
            try:
                *_, summary = client.predict(handle_file(path), 0.5, 0.5, True, True,
                                             api_name="/segment")
            except AppError as e:
                assert f"{width}x{height}" in str(e), str(e)
                named = _sizes_named(str(e)) - {f"{width}x{height}"}
                assert all(min(map(int, s.split("x"))) >= MIN_SIDE for s in named), str(e)
            else:
                assert f"{width} × {height} px, downscaled to" in summary
    finally:
        client.close()
