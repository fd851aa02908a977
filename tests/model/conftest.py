"""Parity figures gathered while the model tests run, printed in the terminal summary: the worst
case of each measure over every image size, so that a CI log shows how close the outputs are."""

from __future__ import annotations

import pytest

_FIGURES: dict[str, list[dict]] = {}


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
        terminalreporter.write_line(
            f"{group}: {len(rows)} sizes, {matched}/{total} detections matched ({rounding} by paste-box rounding); "
            + ", ".join([_worst(rows, "min_box_iou", min), _worst(rows, "max_score_diff", max),
                         _worst(rows, "min_mask_iou", min)]))
