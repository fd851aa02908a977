"""The app in a real browser: Debian's Chromium driven by Playwright.

Screenshots go to artifacts/screenshots/ (git-ignored). This test fails (it does not skip) when
playwright or chromium is missing: CI installs both, see tests/install_chromium.sh.
"""

from __future__ import annotations

import numpy as np
import pytest
from app_browser import (browser_page, choose, missing_browser, open_tab, pick_model, pixels, segment, text_of,
                         wait_for_image, wait_for_text)
from app_testing import PHOTO, SCREENSHOTS, save_tiny_box_only, serve_with_picker

from testdata import photo_frames, write_video


def _not_blank(image: np.ndarray, what: str, min_std: float = 12.0) -> None:
    assert image.size and float(image.std()) > min_std, f"{what} looks blank (pixel std {image.std():.1f})"


def test_segment_and_inspect_in_a_browser(server):
    problem = missing_browser()
    if problem:
        pytest.fail(f"The browser test needs Playwright and Chromium: {problem}", pytrace=False)
    calls = server.predictor.calls
    with browser_page() as page:
        segment(page, server.url, PHOTO)
        assert "detections" in text_of(page, "#run-info") and "cpu" in text_of(page, "#run-info")
        overlay = pixels(page, "#instances-image img")
        _not_blank(overlay, "the instance overlay", min_std=20.0)
        _not_blank(pixels(page, path=SCREENSHOTS / "app_1_instances.png"), "the page")

        open_tab(page, "Pyramid inspector")
        before = pixels(page, "#pyramid-image img")
        choose(page, "level-radio", "p4")
        wait_for_text(page, "#pyramid-info", "p4 · FPN output")
        p4 = pixels(page, "#pyramid-image img")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_2_pyramid_p4.png"), "the page")
        choose(page, "mode-radio", "PCA: 3 components as RGB")
        wait_for_text(page, "#pyramid-info", "PCA")
        pca = pixels(page, "#pyramid-image img")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_3_pyramid_p4_pca.png"), "the page")
        for image in (before, p4, pca):
            _not_blank(image, "the activation map", min_std=20.0)
        assert before.shape != p4.shape or not np.array_equal(before, p4)
        assert p4.shape != pca.shape or not np.array_equal(p4, pca)

        open_tab(page, "Panoptic")
        page.locator('#segment-table [data-testid="cell-0-1"]').click()  # row 0, class column
        wait_for_text(page, "#selected-segment", "#")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_4_panoptic_selected.png"), "the page")
    assert server.predictor.calls == calls + 1  # one Segment, every other view from the session


def test_exports_video_and_webcam_in_a_browser(server, tmp_path):
    problem = missing_browser()
    if problem:
        pytest.fail(f"The browser test needs Playwright and Chromium: {problem}", pytrace=False)
    clip = write_video(tmp_path / "clip.mp4", photo_frames(10))
    with browser_page(fake_camera=True) as page:
        segment(page, server.url, PHOTO)

        open_tab(page, "Downloads")
        page.locator("#export-formats label").filter(has_text="detections table (CSV)").click()
        page.click("#export-button")
        wait_for_text(page, "#exported", ".detections")  # the page breaks the name before its suffix
        assert ".labelme" in text_of(page, "#exported")

        open_tab(page, "Video")
        page.locator("#video-input input[type=file]").set_input_files(str(clip))
        page.click("#video-button")
        wait_for_text(page, "#video-info", "frames segmented")
        page.wait_for_function("() => { const v = document.querySelector('#video-output video');"
                               " return v && v.readyState >= 2 && v.videoWidth > 0; }")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_5_video.png"), "the page")

        open_tab(page, "Webcam")
        page.locator("#webcam-input").get_by_text("Click to Access Webcam").click()
        page.locator("#webcam-input button[aria-label='capture photo']").click()  # start streaming
        wait_for_text(page, "#webcam-info", "ms a frame")
        wait_for_image(page, "#webcam-output img")
        _not_blank(pixels(page, "#webcam-output img"), "the segmented webcam frame")
        _not_blank(pixels(page, path=SCREENSHOTS / "app_6_webcam.png"), "the page")


def test_pick_a_retinanet_and_segment_in_a_browser(tmp_path):
    """The model picker: a tiny RetinaNet chosen, then every view of its run says what it has."""
    problem = missing_browser()
    if problem:
        pytest.fail(f"The browser test needs Playwright and Chromium: {problem}", pytrace=False)
    save_tiny_box_only(tmp_path)
    server = serve_with_picker(tmp_path)
    try:
        with browser_page() as page:
            page.goto(server.url)
            wait_for_text(page, "#model-status", "(Panoptic FPN)")
            pick_model(page, "tiny_retinanet.safetensors")
            wait_for_text(page, "#model-status", "(RetinaNet)")
            segment(page, server.url, PHOTO, reload=False)
            assert "RetinaNet **tiny_retinanet.safetensors**".replace("**", "") in text_of(page, "#run-info")
            _not_blank(pixels(page, "#instances-image img"), "the box overlay", min_std=20.0)
            open_tab(page, "Semantic")
            assert "RetinaNet predicts boxes only" in text_of(page, "#semantic-note")
            open_tab(page, "Pyramid inspector")
            choose(page, "level-radio", "p7")
            wait_for_text(page, "#pyramid-info", "p7 · FPN output")
            open_tab(page, "Levels")
            assert "Rule: anchor level that fired." in text_of(page, "#levels-info")
            assert "RetinaNet has no RoIs" in text_of(page, "#roi-note")
            _not_blank(pixels(page, path=SCREENSHOTS / "app_7_retinanet_levels.png"), "the page")
    finally:
        server.demo.close()
