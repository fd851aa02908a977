"""The Levels tab in a real browser (Debian's Chromium driven by Playwright): a detection
selected from the table and by a click in the picture, explained level by level; the RoI heads
run again with every RoI forced onto one level; the scale sweep's plots; recall and precision per
level from the synthetic example's own ground truth.

Fails (does not skip) when playwright or chromium is missing, as the other browser tests do.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_browser import browser_page, missing_browser, open_tab, pixels, segment, wait_for_image, wait_for_text
from app_testing import SCREENSHOTS, serve

import segfpn
from testdata import EXAMPLES

SYNTHETIC = EXAMPLES / "synthetic_shapes_1.png"
BUNDLED = EXAMPLES.parents[1] / "weights" / "synthetic_panoptic_fpn.safetensors"


@pytest.fixture(scope="module")
def bundled_server():
    served = serve(segfpn.load(BUNDLED, device="cpu"))
    yield served
    served.demo.close()


def _text(page, selector: str) -> str:
    return page.locator(selector).inner_text()


def _wait_text_change(page, selector: str, before: str, contains: str) -> None:
    page.wait_for_function(
        "([s, before, contains]) => { const t = document.querySelector(s)?.innerText || '';"
        " return t !== before && t.includes(contains); }", arg=[selector, before, contains])


def _not_blank(image: np.ndarray, what: str) -> None:
    assert image.size and float(image.std()) > 8.0, f"{what} looks blank (pixel std {image.std():.1f})"


def _centre(box: np.ndarray) -> tuple[float, float]:
    return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2


def _smallest_box_at(boxes: np.ndarray, point: tuple[float, float]) -> int:
    x, y = point
    inside = (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
    areas = np.where(inside, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), np.inf)
    return int(np.argmin(areas))


def test_levels_tab_in_a_browser(bundled_server):
    problem = missing_browser()
    if problem:
        pytest.fail(f"The browser test needs Playwright and Chromium: {problem}", pytrace=False)
    expected = bundled_server.predictor.predict(segfpn.read_image(SYNTHETIC)).instances
    keep = np.flatnonzero(expected.scores >= 0.5)  # the app's default score threshold
    assert len(keep) >= 2
    with browser_page() as page:
        segment(page, bundled_server.url, SYNTHETIC)
        open_tab(page, "Levels")
        wait_for_image(page, "#levels-image img")
        page.wait_for_selector('#detection-table [data-testid="cell-0-1"]')
        assert _text(page, '#detection-table [data-testid="cell-0-1"]').strip() == expected.names[keep[0]]

        # The second row of the table: its rule worked out, with its level.
        before = _text(page, "#rule-text")
        page.locator('#detection-table [data-testid="cell-1-1"]').click()
        _wait_text_change(page, "#rule-text", before, "k = ")
        rule = _text(page, "#rule-text")
        assert f"p{int(expected.levels[keep[1]])}" in rule and "224" in rule
        for selector in ("#box-grids img", "#mask-grids img", "#mask-probs img"):
            wait_for_image(page, selector)
            _not_blank(pixels(page, selector), selector)
        page.wait_for_selector("#activation-bars .vega-embed, #activation-bars canvas, #activation-bars svg")

        # A click in the picture at the centre of a box explains that detection (one whose centre
        # lies in no smaller shown box: the app picks the most specific box under the pointer).
        target = next(i for i in keep if _smallest_box_at(expected.boxes[keep], _centre(expected.boxes[i])) ==
                      list(keep).index(i))
        image = page.locator("#levels-image img")
        image.scroll_into_view_if_needed()  # the grids' screenshots scrolled the page
        shown = image.bounding_box()
        height, width = segfpn.read_image(SYNTHETIC).shape[:2]
        x0, y0, x1, y1 = (float(v) for v in expected.boxes[target])
        before = _text(page, "#rule-text")
        # The picture keeps its aspect ratio inside the element: find where it is drawn.
        *natural, fit = page.evaluate("() => { const i = document.querySelector('#levels-image img');"
                                      " return [i.naturalWidth, i.naturalHeight, getComputedStyle(i).objectFit]; }")
        scale = min(shown["width"] / natural[0], shown["height"] / natural[1])
        if fit in ("scale-down", "none"):  # never enlarged
            scale = min(scale, 1.0)
        left = shown["x"] + (shown["width"] - natural[0] * scale) / 2
        top = shown["y"] + (shown["height"] - natural[1] * scale) / 2
        page.mouse.click(left + (x0 + x1) / 2 / width * natural[0] * scale,
                         top + (y0 + y1) / 2 / height * natural[1] * scale)
        _wait_text_change(page, "#rule-text", before, f"#{target} ")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_levels_explained.png"), "the page")

        # What if every RoI read p5: the heads run again, the diff is drawn.
        page.get_by_text("What if it read another level").click()
        page.locator("#force-level label").filter(has_text="p5").click()
        page.click("#what-if-button")
        wait_for_text(page, "#what-if-info", "every RoI on p5")
        wait_for_image(page, "#what-if-image img")
        _not_blank(pixels(page, "#what-if-image img"), "the what-if diff")
        assert "no backbone" in _text(page, "#what-if-info")

        # The scale sweep: nine input sizes, four plots.
        page.get_by_text("Scale sweep: how objects move between levels").click()
        page.click("#sweep-button")
        wait_for_text(page, "#sweep-info", "9 input sizes")
        for plot in ("#sweep-levels", "#sweep-scores", "#sweep-shares", "#sweep-counts"):
            page.wait_for_selector(f"{plot} canvas, {plot} svg")
        _not_blank(pixels(page, "#sweep-levels"), "the sweep's level plot")

        # Recall and precision per level, from the ground truth the synthetic example brings.
        page.get_by_text("Recall and precision per level").click()
        page.click("#metrics-button")
        page.wait_for_selector('#level-metrics [data-testid="cell-0-0"]')
        assert _text(page, '#level-metrics [data-testid="cell-0-0"]').strip().startswith("p")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_levels_what_if_sweep_metrics.png"), "the page")
