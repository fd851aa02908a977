"""segfpn.app_state without a server: model candidates, image intake, views and downloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_testing import PHOTO

from segfpn import app_state, read_image
from segfpn.app_state import LEVELS, ModelSource, ModelUnavailable
from segfpn.checkpoints import catalogue


@pytest.fixture(scope="module")
def run(mini_predictor):
    return app_state.run_model(mini_predictor, str(PHOTO), name=PHOTO.name)


# --- the model ----------------------------------------------------------------------------------

def test_candidates_default_then_fallbacks():
    assert app_state.candidate_checkpoints(None)[0] == catalogue.default_checkpoint().name
    assert app_state.candidate_checkpoints(" a.pkl, b ")[:2] == ["a.pkl", "b"]
    assert app_state.candidate_checkpoints(["x"])[0] == "x"


def test_first_available_candidate_is_loaded_and_shared(tmp_path, d2_mini_checkpoint):
    source = ModelSource([str(tmp_path / "missing.pkl"), str(d2_mini_checkpoint)], device="cpu")
    predictor = source.get()
    assert source.loaded_from == str(d2_mini_checkpoint)
    assert "missing.pkl" in source.problems[0].reason
    assert "panoptic_fpn_mini.pkl" in source.describe() and "on **cpu**" in source.describe()
    again = ModelSource([str(d2_mini_checkpoint)], device="cpu").get()
    assert again is predictor  # loaded once per checkpoint, shared


def test_offline_and_missing_says_what_to_fetch_and_where(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))
    known = catalogue.default_checkpoint()
    source = ModelSource([known.name])
    assert source.try_get() is None
    with pytest.raises(ModelUnavailable, match=known.file_name):
        source.get()
    problem = source.problems[0]
    assert problem.url == known.url and problem.dest == tmp_path / known.file_name
    page = source.describe()
    assert known.url in page and str(tmp_path / known.file_name) in page and "SEGFPN_OFFLINE" in page


def test_failed_download_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("SEGFPN_BASE_URL", (tmp_path / "no-mirror-here").as_uri())
    source = ModelSource([catalogue.default_checkpoint().name], download_timeout=2)
    assert source.try_get() is None
    assert "could not" in source.problems[0].reason
    assert source.problems[0].url.startswith("file:")
    assert source.try_get() is None  # the second attempt only looks on disk
    assert "is not in" in source.problems[0].reason


def test_unknown_name_is_reported(tmp_path):
    source = ModelSource(["no_such_model"])
    assert source.try_get() is None
    assert "neither a file nor a known checkpoint" in source.describe()


# --- intake -------------------------------------------------------------------------------------

def test_large_images_are_downscaled_to_max_side():
    big = np.zeros((1200, 3000, 3), np.uint8)
    image, original = app_state.prepare_image(big, max_side=2000)
    assert image.shape == (800, 2000, 3) and original == (1200, 3000)
    small, original = app_state.prepare_image(np.zeros((50, 80, 3), np.uint8))
    assert small.shape == (50, 80, 3) and original == (50, 80)


@pytest.mark.parametrize("name, stem", [("../../etc/passwd.jpg", "passwd"), ("..", "image"),
                                        ("my photo (1).png", "my_photo_1"),
                                        ("/tmp/x/ok-name_2.jpeg", "ok-name_2")])
def test_download_names_never_come_from_the_request_path(name, stem):
    assert app_state.file_stem(name) == stem


# --- views and downloads ------------------------------------------------------------------------

def test_run_keeps_half_precision_features(run):
    assert set(run.features) == set(LEVELS)
    assert all(f.dtype == np.float16 for f in run.features.values())
    assert run.result.features is None and not run.downscaled
    assert {"preprocess", "backbone_fpn", "heads", "postprocess"} <= set(run.timings)


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_and_mode_draws_over_the_image(run, level):
    for mode in ("mean_abs", "max", "l2", "channel", "pca"):
        image, info, channel = app_state.activation_view(run, level, mode, 10_000)
        assert image.shape == run.image.shape and image.dtype == np.uint8
        assert image.std() > 1
        assert channel == app_state.level_channels(run, level) - 1
        assert f"stride **{2 ** int(level[1])} px**" in info


def test_panoptic_view_and_table(run):
    base, annotations, colors = app_state.panoptic_view(run)
    segments = run.result.panoptic.segments
    assert base.shape == run.image.shape
    assert [label for _, label in annotations] == [app_state.segment_label(s) for s in segments]
    assert len(set(colors)) == len(segments) and all(c.startswith("#") for c in colors.values())
    for mask, label in annotations:
        assert mask.dtype == bool and mask.shape == base.shape[:2]
    rows = app_state.segment_rows(run)
    assert [r[0] for r in rows] == [s.id for s in segments]
    thing = next(s for s in segments if s.isthing)
    _, only, _ = app_state.panoptic_view(run, highlight=thing.id)
    assert len(only) == 1 and only[0][0].sum() > 0
    assert f"p{thing.level}" in app_state.segment_details(run, thing.id)


def test_downloads_go_to_a_fresh_folder_per_request(run, mini_predictor):
    overlay = app_state.draw_instance_view(run)
    first = app_state.new_request_dir(run)
    files = app_state.write_downloads(run, overlay, first, categories=mini_predictor.categories)
    assert {p.parent for p in files.values()} == {first}
    assert files["instances"].name == "voc2007_000001_portrait_instances_coco.json"
    document = json.loads(files["panoptic_json"].read_text())
    assert document["annotations"][0]["file_name"] == files["panoptic_png"].name
    assert len(document["categories"]) == 133
    second = app_state.new_request_dir(run)
    assert second != first and not first.exists() and run.dirs == [second]
    app_state.release_dirs(run)
    assert not second.exists() and run.dirs == []


def test_summary_has_the_stages_and_the_device(run):
    run.timings["drawing"] = 0.25
    text = app_state.run_summary(run)
    for part in ("preprocess", "backbone + FPN", "heads", "drawing 0.25 s", "on **cpu**", "353 × 500 px"):
        assert part in text
    assert read_image(PHOTO).shape == run.image.shape
