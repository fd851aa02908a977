"""Parity figures gathered while the model tests run, printed in the terminal summary: the worst
case of each measure over every image size, so that a CI log shows how close the outputs are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from testdata import EXAMPLES

_FIGURES: dict[str, list[dict]] = {}

#: The real photos the parity tests resize to every size they check.
PARITY_PHOTOS = ["cyclists_33823288584.jpg", "dogs_people_16004479832.jpg", "street_wide_17790319373.jpg",
                 "truck_1800x1200.jpg", "voc2007_000001_portrait.jpg", "astronaut.png", "coffee.png", "chelsea_cat.png"]


@pytest.fixture(scope="session")
def photo():
    """``photo(index, (width, height))``: photo ``index`` of PARITY_PHOTOS (cycling) resized to that
    size (PIL bilinear), RGB uint8 [H, W, 3]."""
    def load(index: int, size: tuple[int, int]) -> np.ndarray:
        with Image.open(EXAMPLES / PARITY_PHOTOS[index % len(PARITY_PHOTOS)]) as image:
            return np.asarray(image.convert("RGB").resize(size, Image.BILINEAR)).copy()

    return load


@pytest.fixture(scope="session")
def parity_figures():
    """``parity_figures(group, size, agreement_dict)`` records one comparison of ``group``."""
    def record(group: str, size: str, figures: dict) -> None:
        _FIGURES.setdefault(group, []).append({"size": size, **figures})

    return record


def _worst(rows: list[dict], key: str, pick) -> str:
    values = [(r[key], r["size"]) for r in rows if r.get(key) is not None]
    if not values:
        return f"{key} n/a"
    value, size = pick(values, key=lambda v: v[0])
    return f"{key} {value:.6g} ({size})"


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.section("parity: worst case over the image sizes")
    for group, rows in _FIGURES.items():
        matched = sum(r["matched"] + r["paste_rounding"] for r in rows)
        total = sum(r["detections"] for r in rows)
        rounding = sum(r["paste_rounding"] for r in rows)
        measures = [_worst(rows, "min_box_iou", min), _worst(rows, "max_score_diff", max)]
        if any(r.get("min_mask_iou") is not None for r in rows):  # box-only models have no mask figures
            measures.append(_worst(rows, "min_mask_iou", min))
        terminalreporter.write_line(
            f"{group}: {len(rows)} sizes, {matched}/{total} detections matched ({rounding} by paste-box rounding); "
            + ", ".join(measures))
