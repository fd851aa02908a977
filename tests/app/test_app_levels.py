"""The Levels tab through gradio_client: a detection explained, the RoI heads run again with
another level rule, the scale sweep and per-level metrics, all from the session's run."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
import segfpn
from testdata import EXAMPLES

SYNTHETIC = EXAMPLES / "synthetic_shapes_1.png"


@pytest.fixture(scope="module")
def bundled_client():
    """The app with the bundled synthetic model (it finds the synthetic examples' shapes)."""
    from app_testing import free_port

    predictor = segfpn.load(EXAMPLES.parents[1] / "weights" / "synthetic_panoptic_fpn.safetensors", device="cpu")
    demo = app.build_demo(predictor)
    _, url, _ = app.launch(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    yield Client(url, verbose=False), predictor
    demo.close()


def test_explain_what_if_sweep_and_metrics(bundled_client):
    client, predictor = bundled_client
    client.predict(handle_file(SYNTHETIC), api_name="/segment")
    expected = predictor.predict(segfpn.read_image(SYNTHETIC)).instances
    assert len(expected) > 0

    index, rule, box_grids, mask_grids, mask_probs, bars = client.predict(
        index=0, grid_mode="mean_abs", api_name="/explain")
    assert index == 0 and f"p{int(expected.levels[0])}" in rule and "k = ⌊4 + log2(" in rule
    assert box_grids and mask_grids and mask_probs
    assert {row[0] for row in bars["data"]} == {"p2", "p3", "p4", "p5", "p6"}

    view, info, rows = client.predict(force_level="rule", canonical_level=4, canonical_size=224, score=0.0,
                                      api_name="/what_if")
    assert "kept** " + str(len(expected)) in info and all(r[1] == "kept" for r in rows["data"])
    _, info, rows = client.predict(force_level="p5", canonical_level=4, canonical_size=224, score=0.0,
                                   api_name="/what_if")
    assert "every RoI on p5" in info and "no backbone" in info
    assert {r[6] for r in rows["data"] if r[1] != "lost"} <= {"p5"}

    levels, scores, shares, counts, text = client.predict(api_name="/scale_sweep")
    assert "9 input sizes" in text and len(counts["data"]) == 9

    table, note = client.predict(ground_truth=None, api_name="/level_metrics")
    assert [row[0] for row in table["data"]] and "ground-truth box" in note


def test_explaining_needs_a_run_and_a_real_index(bundled_client):
    client, _ = bundled_client
    fresh = Client(client.src, verbose=False)
    outputs = fresh.predict(index=0, grid_mode="mean_abs", api_name="/explain")  # no run in this session yet
    assert outputs[1] in (None, {"__type__": "update"})  # nothing explained: the page says press Segment first
    fresh.predict(handle_file(SYNTHETIC), api_name="/segment")
    with pytest.raises(AppError, match="no detection #10000"):
        fresh.predict(index=10_000, grid_mode="mean_abs", api_name="/explain")
