r"""Make docs/screenshot.png, the README's picture of the app with results (and docs/levels.png).

    PYTHONPATH=. python tests/app/readme_screenshot.py        # bundled model, a synthetic example, Panoptic tab
    PYTHONPATH=. python tests/app/readme_screenshot.py --tab Levels --out docs/levels.png
    PYTHONPATH=. python tests/app/readme_screenshot.py --weights weights/model_final_cafdb1.pkl \
        --photo examples/images/cyclists_33823288584.jpg --tab Instances

Serves the app on 127.0.0.1, uploads a photo in Debian's Chromium (see app_browser.py), presses
Segment and takes the screenshot. The default is the bundled offline model on one of the synthetic
examples it was trained for, so that the picture shows a real segmentation; with a COCO checkpoint
use a real photo.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app_browser import browser_page, choose, missing_browser, segment, wait_for_text
from app_testing import ROOT, serve

import segfpn

HERE = Path(__file__).resolve().parent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "weights/synthetic_panoptic_fpn.safetensors"))
    parser.add_argument("--photo", default=str(ROOT / "examples/images/synthetic_shapes_1.png"))
    parser.add_argument("--score", type=float, default=0.5, help="score threshold to show")
    parser.add_argument("--tab", default="Panoptic", help="the tab to show")
    parser.add_argument("--level", default="p3", help="pyramid level for the inspector")
    parser.add_argument("--mode", default="mean |activation|", help="inspector mode (its label)")
    parser.add_argument("--explain", type=int, default=0, help="Levels tab: the detection (table row) to explain")
    parser.add_argument("--out", default=str(ROOT / "docs/screenshot.png"))
    args = parser.parse_args(argv)
    problem = missing_browser()
    if problem:
        sys.exit(problem)

    server = serve(segfpn.load(args.weights))
    try:
        with browser_page(width=1440, height=1180) as page:
            segment(page, server.url, Path(args.photo))
            score = page.locator("#score-slider input[type=number]")
            score.fill(f"{args.score:g}")
            score.press("Enter")
            wait_for_text(page, "#instance-info", f"(score ≥ {args.score:.2f})")
            if args.tab != "Instances":
                page.get_by_role("tab", name=args.tab).click()
            if args.tab == "Pyramid inspector":
                choose(page, "level-radio", args.level)
                wait_for_text(page, "#pyramid-info", f"{args.level} ·")
                choose(page, "mode-radio", args.mode)
                wait_for_text(page, "#pyramid-info", f"showing {args.mode}")
            if args.tab == "Levels":  # one detection explained
                page.locator(f'#detection-table [data-testid="cell-{args.explain}-1"]').click()
                wait_for_text(page, "#rule-text", f"#{args.explain} ")
            page.wait_for_timeout(1500)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            if args.tab == "Levels":  # the tab's panel, from the picture to the activation bars
                scrolled = page.evaluate("() => [window.scrollX, window.scrollY]")
                parts = ("#levels-image", "#detection-table", "#activation-bars")
                boxes = [page.locator(part).bounding_box() for part in parts]
                picture, table, end = ({**b, "x": b["x"] + scrolled[0], "y": b["y"] + scrolled[1]} for b in boxes)
                left, top = picture["x"] - 16, picture["y"] - 165
                page.screenshot(path=str(out), full_page=True,
                                clip={"x": left, "y": top, "width": table["x"] + table["width"] + 16 - left,
                                      "height": end["y"] + end["height"] + 16 - top})
            else:
                page.screenshot(path=str(out))
            print(f"wrote {out}")
    finally:
        server.demo.close()


if __name__ == "__main__":
    main()
