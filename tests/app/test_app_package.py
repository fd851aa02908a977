"""segfpn.app without a server: model candidates, image intake, views, downloads and the
runs kept between requests."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from app_testing import PHOTO

from segfpn import read_image
from segfpn.app import files, session, views
from segfpn.app.source import ModelSource, ModelUnavailable
from segfpn.app.views import LEVELS
from segfpn.checkpoints import catalogue, resolve
from segfpn.outputs import file_stem


@pytest.fixture(scope="module")
def run(mini_predictor):
    return session.run_model(mini_predictor, str(PHOTO), name=PHOTO.name)


# --- the model ----------------------------------------------------------------------------------

def test_candidates_default_then_fallbacks():
    assert resolve.candidates(None)[0] == catalogue.default_checkpoint().name
    assert resolve.candidates(" a.pkl, b ")[:2] == ["a.pkl", "b"]
    assert resolve.candidates(["x"])[0] == "x"


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
    assert source.try_get() is None  # at once: the download runs in the background
    assert source.wait(timeout=60)
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
    image, original = session.prepare_image(big, max_side=2000)
    assert image.shape == (800, 2000, 3) and original == (1200, 3000)
    small, original = session.prepare_image(np.zeros((50, 80, 3), np.uint8))
    assert small.shape == (50, 80, 3) and original == (50, 80)


@pytest.mark.parametrize("name, stem", [("../../etc/passwd.jpg", "passwd"), ("..", "image"),
                                        ("my photo (1).png", "my_photo_1"),
                                        ("/tmp/x/ok-name_2.jpeg", "ok-name_2")])
def test_download_names_never_come_from_the_request_path(name, stem):
    assert file_stem(name) == stem


# --- views and downloads ------------------------------------------------------------------------

def test_run_keeps_half_precision_features(run):
    assert set(run.features) == set(LEVELS)
    assert all(f.dtype == np.float16 for f in run.features.values())
    assert run.result.features is None and not run.downscaled
    assert {"preprocess", "backbone_fpn", "heads", "postprocess"} <= set(run.timings)


@pytest.mark.parametrize("level", LEVELS)
def test_every_level_and_mode_draws_over_the_image(run, level):
    for mode in ("mean_abs", "max", "l2", "channel", "pca"):
        image, info, channel = views.activation_view(run, level, mode, 10_000)
        assert image.shape == run.image.shape and image.dtype == np.uint8
        assert image.std() > 1
        assert channel == views.level_channels(run, level) - 1
        assert f"stride **{2 ** int(level[1])} px**" in info


def test_panoptic_view_and_table(run):
    base, annotations, colors = views.panoptic_view(run)
    segments = run.result.panoptic.segments
    assert base.shape == run.image.shape
    assert [label for _, label in annotations] == [views.segment_label(s) for s in segments]
    assert len(set(colors)) == len(segments) and all(c.startswith("#") for c in colors.values())
    for mask, label in annotations:
        assert mask.dtype == bool and mask.shape == base.shape[:2]
    rows = views.segment_rows(run)
    assert [r[0] for r in rows] == [s.id for s in segments]
    thing = next(s for s in segments if s.isthing)
    _, only, _ = views.panoptic_view(run, highlight=thing.id)
    assert len(only) == 1 and only[0][0].sum() > 0
    assert f"p{thing.level}" in views.segment_details(run, thing.id)


def test_downloads_go_to_a_folder_of_the_request_own(run, mini_predictor):
    overlay = views.draw_instance_view(run)
    with files.request_dir() as first, files.request_dir() as second:
        assert first != second and not any(first.iterdir())
        written = files.write_downloads(run, overlay, first)
        assert {p.parent for p in written.all()} == {first}
        assert written.instances.name == "voc2007_000001_portrait.instances.json"
        document = json.loads(written.panoptic_json.read_text())
        assert document["annotations"][0]["file_name"] == written.panoptic_png.name
        assert len(document["categories"]) == 133
        assert not any(second.iterdir())  # another request's folder is left alone
    assert not first.exists() and not second.exists()  # removed when their requests end


def test_summary_has_the_stages_and_the_device(run):
    run.timings["drawing"] = 0.25
    text = views.run_summary(run)
    for part in ("preprocess", "backbone + FPN", "heads", "drawing 0.25 s", "on **cpu**", "353 × 500 px"):
        assert part in text
    assert read_image(PHOTO).shape == run.image.shape


# --- the runs kept between requests -----------------------------------------------------------

def _run_of(nbytes: int, name: str = "run") -> session.Run:
    """A Run holding ``nbytes`` of image bytes and nothing else."""
    return session.Run(name=name, image=np.zeros(nbytes, np.uint8), original_size=(1, nbytes),
                         result=None, features={}, timings={}, device="cpu")


def test_kept_bytes_counts_each_buffer_once_views_as_their_base():
    """Seeded random nests of arrays, views of them, tensors and bytes, some shared: the count
    is the sum over the distinct buffers reachable, whatever holds them."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        bases = [np.zeros(int(rng.integers(1, 5000)), rng.choice([np.uint8, np.float16, np.float32]))
                 for _ in range(int(rng.integers(1, 6)))]
        tensors = [torch.zeros(int(rng.integers(1, 1000))) for _ in range(int(rng.integers(0, 3)))]
        blobs = [bytes(int(rng.integers(0, 100))) for _ in range(2)]
        reachable = set()
        leaves = []
        for _ in range(int(rng.integers(1, 12))):
            kind = rng.integers(0, 4)
            if kind == 0 or not tensors:
                i = int(rng.integers(len(bases)))
                base = bases[i]
                leaves.append(base[int(rng.integers(base.size)):] if rng.random() < 0.5 else base)
                reachable.add(("array", i))
            elif kind == 1:
                i = int(rng.integers(len(tensors)))
                leaves.append(tensors[i][: int(rng.integers(1, tensors[i].numel() + 1))])
                reachable.add(("tensor", i))
            else:
                i = int(rng.integers(len(blobs)))
                leaves.append(blobs[i])
                reachable.add(("bytes", i))
        # Nest the leaves in containers and a segfpn object (a Run), in random order.
        rng.shuffle(leaves)
        nested = {"a": leaves[: len(leaves) // 2], "b": (leaves[len(leaves) // 2:], {"c": leaves[:1]})}
        holder = _run_of(0)
        holder.features = nested
        expected = sum(bases[i].nbytes if k == "array" else
                       tensors[i].untyped_storage().nbytes() if k == "tensor" else len(blobs[i])
                       for k, i in reachable)
        assert session.kept_bytes(holder) == expected + holder.image.nbytes


def test_kept_bytes_of_a_run_is_what_it_holds(run):
    """Image, features, panoptic ids and semantic labels at least; the masks add at most their
    full frames (less when they are stored cropped)."""
    result = run.result
    held = (run.image.nbytes + sum(f.nbytes for f in run.features.values())
            + result.panoptic.segment_ids.nbytes + result.semantic.labels.nbytes
            + result.instances.boxes.nbytes + result.instances.scores.nbytes)
    full_masks = len(result.instances) * run.image.shape[0] * run.image.shape[1]
    size = session.kept_bytes(run)
    assert held < size <= held + full_masks + (1 << 20)


def test_run_store_keeps_the_most_recently_used_within_its_budget():
    """Random puts, uses and discards against a reference LRU list: the store holds what the
    reference holds, within its budget, and names the runs it dropped."""
    rng = np.random.default_rng(1)
    budget = 10_000
    store = session.RunStore(budget_bytes=budget)
    reference: list[tuple[str, int]] = []  # (key, bytes), least recently used first
    dropped: set[str] = set()
    for _ in range(400):
        op = rng.integers(0, 3)
        if op == 0 or not reference:
            size = int(rng.integers(1, 4000)) if rng.random() < 0.95 else budget + 5
            key = store.put(_run_of(size))
            reference.append((key, size))
            touched = key
        elif op == 1:
            key, size = reference.pop(int(rng.integers(len(reference))))
            assert store.get(key).image.nbytes == size
            reference.append((key, size))
            touched = key
        else:
            key, _ = reference.pop(int(rng.integers(len(reference))))
            store.discard(key)
            touched = None
        while sum(s for _, s in reference) > budget and len(reference) > 1 and reference[0][0] != touched:
            dropped.add(reference.pop(0)[0])
        assert [k for k, _ in reference] == list(store._runs)
        assert store.total_bytes == sum(s for _, s in reference)
        assert store.total_bytes <= budget or len(store) == 1
    assert dropped and all(store.get(k) is None and store.was_dropped(k) for k in dropped)
    assert not store.was_dropped("never-stored") and store.get(None) is None


def test_run_store_counts_what_a_run_builds_after_it_was_stored():
    store = session.RunStore(budget_bytes=1000)
    first, second = store.put(_run_of(400)), store.put(_run_of(400))
    store.get(second).features["cache"] = np.zeros(500, np.uint8)  # e.g. a frame made on demand
    assert store.get(second) is not None  # measured again: 900 bytes now, the other one goes
    assert store.total_bytes == 900 and store.get(first) is None and store.was_dropped(first)


def test_semantic_legend_lists_the_classes_by_share(run):
    legend = views.semantic_legend(run)
    semantic = run.result.semantic
    present = {semantic.class_names[i] for i in np.unique(semantic.labels)}
    assert all(name in legend for name in present)
    shares = [float(x) for x in re.findall(r"(\d+\.\d) %", legend)]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 0.1 * len(shares)


def test_the_offline_model_shows_its_own_examples_first(monkeypatch, tmp_path):
    import app

    monkeypatch.setenv("SEGFPN_OFFLINE", "1")
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))  # no COCO checkpoint: the bundled model
    offline = ModelSource(resolve.candidates(None), device="cpu")
    coco = ModelSource.from_predictor(session_predictor_stub(), "coco-model")
    for source, first in ((offline, "synthetic shapes"), (coco, "real photos")):
        demo = app.build_demo(source)
        labels = [c["props"].get("label") or "" for c in demo.config["components"] if c["type"] == "dataset"]
        assert len(labels) == 2 and first in labels[0], labels
        demo.close()


def session_predictor_stub():
    """Something with a predictor's surface for building the page (never run)."""
    from types import SimpleNamespace

    from segfpn.categories import coco_panoptic_category_set

    return SimpleNamespace(predict=lambda *a, **k: None, categories=coco_panoptic_category_set(),
                           has_semantic_head=True, arch="panoptic_fpn_R_50", device="cpu", source="coco-model")
