"""The model picker and the box-only models in the app: what the picker lists, switching models per
session through gradio_client (a tiny Faster R-CNN, a tiny RetinaNet, the mini Panoptic FPN), every
view of a box-only run, at most two models in memory, and choices that fail without changing the
session's model."""

from __future__ import annotations

import gc
import json
import os
import random
import string
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from app_testing import MINI_CHECKPOINT, PHOTO, SECOND_PHOTO, save_tiny_box_only, serve_with_picker, small_loader
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import segfpn
from segfpn import read_image, viz
from segfpn.app import files, session, views
from segfpn.app.models import ModelChoiceFailed, ModelPool, SessionModel, model_options
from segfpn.app.source import ModelSource
from segfpn.categories import coco_instance_categories
from segfpn.checkpoints import catalogue
from segfpn.checkpoints import download as downloads
from segfpn.checkpoints.resolve import BUNDLED_CHECKPOINT

BUNDLED = str(BUNDLED_CHECKPOINT)
DROPPED = "no longer loaded.*Press Segment again"


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A weights folder: the two tiny box-only checkpoints, a broken one and a file that is no model."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {stem: str(path) for stem, path in save_tiny_box_only(folder).items()}
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint at all")
    (folder / "notes.txt").write_text("not a model")
    return SimpleNamespace(folder=folder, faster=paths["tiny_faster_rcnn"], retina=paths["tiny_retinanet"],
                           broken=str(folder / "broken.safetensors"))


@pytest.fixture(scope="module")
def picker_server(weights):
    """The app with the mini Panoptic FPN as its default and the picker over ``weights``."""
    server = serve_with_picker(weights.folder)
    yield server
    server.demo.close()


def _client(server) -> Client:
    return Client(server.url, verbose=False)


def _stub_source(name: str = "default-model") -> ModelSource:
    """A source handing out a stand-in predictor (never run): for the pool's bookkeeping."""
    return ModelSource.from_predictor(SimpleNamespace(predict=None, has_semantic_head=False, arch="stub",
                                                      device="cpu", categories=coco_instance_categories()), name)


# --- what the picker lists ----------------------------------------------------------------------

def test_the_picker_lists_the_catalogue_the_weights_folder_and_the_bundled_model(tmp_path):
    known = catalogue.find("retinanet_R_50_FPN_1x")
    (tmp_path / known.file_name).write_bytes(b"x")  # a catalogue checkpoint on disk
    rng = random.Random(17)
    names = {("".join(rng.choices(string.ascii_letters + "_-. ", k=rng.randint(1, 12))).strip(". ") or "m") + suffix
             for suffix in [".safetensors", ".pth", ".pkl", ".PTH", ".txt", ".json", ".pt", ""] * 3}
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.safetensors").mkdir()  # a folder is no checkpoint
    expected_files = sorted(str(tmp_path / n) for n in names if Path(n).suffix.lower() in (".safetensors", ".pth",
                                                                                            ".pkl"))

    options = model_options(weights_dir=tmp_path, default="/elsewhere/model.pkl")
    values = [o.value for o in options]
    assert values[0] == "/elsewhere/model.pkl" and options[0].label == "model.pkl · default"
    assert len(values) == len(set(values)) == 1 + len(catalogue.CHECKPOINTS) + len(expected_files) + 1
    assert set(catalogue.CHECKPOINTS) <= set(values) and values.count(BUNDLED) == 1
    assert sorted(v for v in values if v.startswith(str(tmp_path))) == expected_files
    labels = {o.value: o.label for o in options}
    assert labels[known.name] == "retinanet_R_50_FPN_1x · RetinaNet · box AP 37.4 · on disk"
    assert labels["faster_rcnn_R_50_FPN_3x"].startswith("faster_rcnn_R_50_FPN_3x · Faster R-CNN · box AP ")
    assert " · Panoptic FPN · PQ " in labels["panoptic_fpn_R_101_3x"]
    assert " · Mask R-CNN · mask AP " in labels["mask_rcnn_R_50_FPN_1x"]
    # Those on disk first, then what a choice downloads.
    first_download = next(i for i, o in enumerate(options) if " · download" in o.label)
    assert values.index(known.name) < values.index(BUNDLED) < first_download
    assert all(" · download" in o.label for o in options[first_download:])

    # The default found in the list is marked there, not added: by name, or by its file (absolute or
    # relative path). It is listed under the value the app was given, the value the picker is set
    # to: a dropdown shows nothing for a value that is not among its choices.
    for default in (known.name, str(tmp_path / known.file_name), os.path.relpath(tmp_path / known.file_name)):
        marked = model_options(weights_dir=tmp_path, default=default)
        values = [o.value for o in marked]
        assert values[0] == default and marked[0].label == labels[known.name] + " · default"
        assert len(marked) == len(options) - 1 and known.name not in values[1:]
    assert model_options(weights_dir=tmp_path / "missing")[0].value == BUNDLED  # no folder: no files


def test_the_pool_refuses_what_the_picker_does_not_offer(tmp_path):
    """Requests the page would never send: any other name or path, even of a file that exists."""
    pool = ModelPool(_stub_source(), weights_dir=tmp_path, allow_download=False)
    rng = random.Random(3)
    asked = [__file__, "/etc/hostname", str(tmp_path), "", "../weights/x.pkl", "retinanet_R_50_FPN_1x.yaml"]
    asked += ["".join(rng.choices(string.printable, k=rng.randint(1, 40))) for _ in range(20)]
    for value in asked:
        with pytest.raises(ModelChoiceFailed, match="not one of the models this app offers"):
            pool.choose(value, SessionModel())
    assert pool.loaded() == ["default-model"]


# --- models in memory ---------------------------------------------------------------------------

def test_a_model_nobody_holds_is_freed(weights):
    """Sharing a checkpoint between sources never keeps its model in memory by itself."""
    source = ModelSource([weights.retina], device="cpu", loader=small_loader)
    predictor = source.get()
    assert ModelSource([weights.retina], device="cpu", loader=small_loader).get() is predictor  # shared
    held = weakref.ref(predictor)
    del predictor, source
    gc.collect()
    assert held() is None


def test_switching_models_keeps_at_most_two_in_memory(picker_server, weights):
    pool = picker_server.models
    first, second, third = (_client(picker_server) for _ in range(3))
    first.predict(weights.faster, api_name="/choose_model")
    first.predict(handle_file(PHOTO), api_name="/segment")
    faster = weakref.ref(pool.predictor(SessionModel(current=weights.faster))[0])
    second.predict(weights.retina, api_name="/choose_model")
    status, _, picker = third.predict(BUNDLED, api_name="/choose_model")
    assert picker["value"] == BUNDLED and "(Panoptic FPN)" in status["value"]
    assert pool.loaded() == [str(MINI_CHECKPOINT), BUNDLED]  # the default, and the latest choice
    gc.collect()
    assert faster() is None  # dropped: its memory is free

    # The first session's run was made by the dropped model: explaining it asks for Segment again.
    with pytest.raises(AppError, match=DROPPED):
        first.predict(index=0, grid_mode="mean_abs", api_name="/explain")
    with pytest.raises(AppError, match=DROPPED):
        first.predict(force_level="p4", canonical_level=4, canonical_size=224, score=0.0, api_name="/what_if")
    with pytest.raises(AppError, match=DROPPED):
        first.predict(api_name="/scale_sweep")
    status, _ = second.predict(api_name="/model_status")
    assert "tiny_retinanet.safetensors** · unloaded to free memory" in status["value"]
    # Segment reads the session's model again, dropping the least recently used.
    *_, summary = first.predict(handle_file(PHOTO), api_name="/segment")
    assert "Faster R-CNN **tiny_faster_rcnn.safetensors**" in summary
    assert pool.loaded() == [str(MINI_CHECKPOINT), weights.faster]
    _, rule, *_ = first.predict(index=0, grid_mode="mean_abs", api_name="/explain")
    assert "the final box (no mask head pools it)" in rule


def test_a_model_downloaded_for_a_session_replaces_its_model_once_it_has_arrived(monkeypatch, tmp_path, weights):
    """The download runs in the background (the session keeps its model and the status says what
    is coming); the session switches at its next status refresh; a failed one leaves it as it was."""
    monkeypatch.setenv("SEGFPN_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("SEGFPN_OFFLINE", raising=False)
    reported, arrive = threading.Event(), threading.Event()

    def fake_download(checkpoint, *, on_progress=None, **options):
        on_progress(1 << 20, 2 << 20)
        reported.set()
        assert arrive.wait(30)
        if checkpoint.name != "retinanet_R_50_FPN_1x":
            raise downloads.DownloadError(f"no route to {checkpoint.url}")
        dest = downloads.local_path(checkpoint)
        dest.write_bytes(Path(weights.retina).read_bytes())
        return dest

    monkeypatch.setattr(downloads, "download", fake_download)
    pool = ModelPool(_stub_source(), loader=lambda path, device=None: small_loader(weights.retina, device="cpu"))
    chosen = pool.choose("retinanet_R_50_FPN_1x", SessionModel())
    assert chosen == SessionModel(current=None, pending="retinanet_R_50_FPN_1x") and pool.busy(chosen)
    assert reported.wait(30)
    assert "**Downloading `retinanet_R_50_FPN_1x`** (1.0 MB of 2.0 MB)…; **default-model** is used meanwhile" in \
        pool.describe(chosen)
    assert pool.settle(chosen) == (chosen, None, True)  # still under way
    with pytest.raises(ModelChoiceFailed, match="retinanet_R_50_FPN_1x is being downloaded, and the app downloads "
                                                "one checkpoint at a time: choose retinanet_R_50_FPN_3x again"):
        pool.choose("retinanet_R_50_FPN_3x", SessionModel())
    assert pool.choose("retinanet_R_50_FPN_1x", SessionModel()) == chosen  # another session waits for it too
    arrive.set()
    deadline = time.monotonic() + 30
    while (settled := pool.settle(chosen))[0] == chosen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert settled == (SessionModel(current="retinanet_R_50_FPN_1x"), "Now using retinanet_R_50_FPN_1x.", True)
    assert pool.value_of(settled[0]) == "retinanet_R_50_FPN_1x" and "(RetinaNet)" in pool.describe(settled[0])

    reported.clear()
    arrive.clear()
    failing = pool.choose("retinanet_R_50_FPN_3x", settled[0])
    assert failing.pending == "retinanet_R_50_FPN_3x" and reported.wait(30)
    arrive.set()
    while (outcome := pool.settle(failing))[0] == failing and time.monotonic() < deadline:
        time.sleep(0.05)
    session_model, message, ok = outcome
    assert session_model == settled[0] and not ok
    assert "no route to" in message and message.endswith("retinanet_R_50_FPN_1x stays in use.")


# --- every view, for each kind --------------------------------------------------------------------

def test_each_kind_of_model_segments_through_the_api(picker_server, weights):
    client = _client(picker_server)
    status, timer, picker = client.predict(weights.faster, api_name="/choose_model")
    assert "`faster_rcnn_R_50_FPN` (Faster R-CNN) · 80 thing classes, boxes only" in status["value"]
    assert picker["value"] == weights.faster and not timer["active"]
    overlay, overlay_png, coco, panoptic_png, panoptic_json, summary = client.predict(handle_file(PHOTO),
                                                                                       api_name="/segment")
    assert panoptic_png is None and panoptic_json is None
    detections = json.loads(Path(coco).read_text())
    assert detections and all("segmentation" not in d and len(d["bbox"]) == 4 for d in detections)
    assert "(boxes only)" in summary and "Faster R-CNN **tiny_faster_rcnn.safetensors**" in summary
    # The overlay: the boxes filled (no masks), as the library draws them.
    image = read_image(PHOTO)
    instances = segfpn.load(weights.faster, device="cpu").predict(image).instances
    kept = instances.scores >= 0.5
    assert kept.any() and instances.masks is None
    drawn = _rgb(overlay)
    assert np.abs(drawn.astype(int) - viz.draw_instances(image, instances, alpha=0.5)).mean() < 0.5
    areas = np.prod(instances.boxes[:, 2:] - instances.boxes[:, :2], axis=1) * kept
    x0, y0, x1, y1 = np.round(instances.boxes[np.argmax(areas)]).astype(int)  # the largest drawn box
    inside = (slice(y0 + 4, y1 - 4), slice(x0 + 4, x1 - 4))
    assert np.abs(drawn[inside].astype(int) - image[inside]).mean() > 10  # filled, not only outlined
    _, text, table = client.predict(0.5, [], "mask", api_name="/roi_levels")
    assert "**Rule: RoI level by size.**" in text and "coloured by the RoI level by size (final box)" in text
    assert len(table["data"]) == int(kept.sum())
    _, rule, box_grids, mask_grids, mask_probs, _ = client.predict(index=0, grid_mode="mean_abs", api_name="/explain")
    assert "the final box (no mask head pools it)" in rule and box_grids and mask_grids is None and mask_probs is None
    _, info, _ = client.predict(force_level="p5", canonical_level=4, canonical_size=224, score=0.0,
                                api_name="/what_if")
    assert "every RoI on p5" in info

    status, _, _ = client.predict(weights.retina, api_name="/choose_model")
    assert "(RetinaNet)" in status["value"]
    overlay, _, coco, panoptic_png, panoptic_json, summary = client.predict(handle_file(SECOND_PHOTO),
                                                                             api_name="/segment")
    assert panoptic_png is None and panoptic_json is None and "RetinaNet **tiny_retinanet.safetensors**" in summary
    assert all("segmentation" not in d for d in json.loads(Path(coco).read_text()))
    _, text, table = client.predict(0.0, [], "box", api_name="/roi_levels")
    assert "**Rule: anchor level that fired.**" in text and "coloured by the anchor level that fired" in text
    assert "**p7** (stride 128)" in text and "p2" not in text.split("—")[0]
    assert table["data"] and {row[5] for row in table["data"]} == {"—"}  # no box RoI
    assert {row[4] for row in table["data"]} <= {"p3", "p4", "p5", "p6", "p7"}
    image, info, _ = client.predict("p7", "mean_abs", 0, api_name="/inspect")
    assert info.startswith("**p7** · FPN output") and "stride **128 px**" in info and _rgb(image).std() > 1
    with pytest.raises(AppError, match="this model has no level 'p2'; it has c2, c3, c4, c5, p3, p4, p5, p6, p7"):
        client.predict("p2", "mean_abs", 0, api_name="/inspect")
    index, rule, box_grids, mask_grids, mask_probs, _ = client.predict(index=0, grid_mode="mean_abs",
                                                                        api_name="/explain")
    assert rule.startswith("RetinaNet has no RoIs: ") and box_grids is None and mask_grids is None
    view, info, rows = client.predict(force_level="p5", canonical_level=4, canonical_size=224, score=0.0,
                                      api_name="/what_if")
    assert info.startswith("RetinaNet has no RoIs: ") and view is None and not rows["data"]
    exported = client.predict(formats=["csv", "labelme"], score=0.5, classes=[], api_name="/export")
    assert f"{SECOND_PHOTO.stem}.detections.csv" in {Path(f).name for f in exported}

    # Back to the app's default: panoptic again.
    status, _, picker = client.predict(str(MINI_CHECKPOINT), api_name="/choose_model")
    assert "(Panoptic FPN)" in status["value"] and picker["value"] == str(MINI_CHECKPOINT)
    _, _, _, panoptic_png, panoptic_json, summary = client.predict(handle_file(PHOTO), api_name="/segment")
    assert panoptic_png and panoptic_json and "Panoptic FPN **panoptic_fpn_mini.pkl**" in summary


def test_a_failed_choice_keeps_the_session_model(picker_server, weights, monkeypatch):
    client = _client(picker_server)
    client.predict(weights.retina, api_name="/choose_model")
    status, timer, picker = client.predict(weights.broken, api_name="/choose_model")
    text = status["value"]
    assert text.startswith("**The model was not changed.** checkpoint ") and "broken.safetensors" in text
    assert "tiny_retinanet.safetensors stays in use." in text and status["elem_classes"] == ["status-warning"]
    assert picker["value"] == weights.retina  # the picker shows the model in use again
    *_, summary = client.predict(handle_file(PHOTO), api_name="/segment")
    assert "RetinaNet **tiny_retinanet.safetensors**" in summary

    monkeypatch.setenv("SEGFPN_OFFLINE", "1")  # a catalogue checkpoint that is not on disk, offline
    status, _, picker = client.predict("retinanet_R_50_FPN_3x", api_name="/choose_model")
    assert "SEGFPN_OFFLINE=1" in status["value"] and "stays in use" in status["value"]
    assert picker["value"] == weights.retina
    with pytest.raises(AppError, match="not in the list of choices"):  # what the page would never send
        client.predict("/etc/hostname", api_name="/choose_model")
    *_, summary = client.predict(handle_file(PHOTO), api_name="/segment")
    assert "RetinaNet **tiny_retinanet.safetensors**" in summary


def test_views_say_why_they_are_empty_for_each_kind(weights, tmp_path):
    runs = {kind: session.run_model(small_loader(path, device="cpu"), str(PHOTO), name=PHOTO.name,
                                    model_name=str(path))
            for kind, path in (("Faster R-CNN", weights.faster), ("RetinaNet", weights.retina),
                               ("Panoptic FPN", MINI_CHECKPOINT))}
    for kind, run in runs.items():
        assert run.model_kind == kind
        notes = views.notices(run)
        if kind == "Panoptic FPN":
            assert notes == {"semantic": "", "panoptic": "", "downloads": "", "roi": ""}
            assert views.run_levels(run)[-1] == "p6"
            continue
        assert notes["semantic"].startswith(f"{kind} predicts boxes only (no masks, no semantic head): ")
        assert notes["panoptic"].startswith(f"{kind} predicts boxes only") and "\n" not in notes["panoptic"]
        assert "without `segmentation`, there are no panoptic files" in notes["downloads"]
        assert (notes["roi"] != "") == (kind == "RetinaNet")
        assert views.draw_semantic_view(run) is None and views.panoptic_view(run) is None
        drawing, text = views.levels_view(run, score_threshold=0.0)
        assert drawing.shape == run.image.shape
        # Exports: each format written, or skipped with a note saying why; a class the model lacks fails.
        folder = tmp_path / kind
        folder.mkdir()
        written, skipped = files.write_exports(run, folder, formats=["labelme", "csv", "yolo"], score_threshold=0.5)
        assert {p.name for p in written} >= {f"{PHOTO.stem}.detections.csv"}
        done = {name for name in ("labelme", "yolo") if any(f".{name}." in p.name for p in written)}
        assert done | {note.split(":")[0] for note in skipped} == {"labelme", "yolo"}
        with pytest.raises(ValueError, match="unicorn"):
            files.write_exports(run, folder, formats=["csv"], score_threshold=0.5, classes=["unicorn"])
    retina = runs["RetinaNet"]
    assert views.run_levels(retina) == ["c2", "c3", "c4", "c5", "p3", "p4", "p5", "p6", "p7"]
    assert views.levels_info(views.run_levels(retina)) == "c2–c5: bottom-up ResNet stages · p3–p7: FPN outputs"
    assert [views.nearest_level(retina, level) for level in ("p2", "p7", "c2", None)] == ["p3", "p7", "c2", "p3"]
    assert views.nearest_level(runs["Faster R-CNN"], "p7") == "p6"
    # The legend in the drawing names the rule: a RetinaNet's differs from a two-stage model's.
    a, _ = views.levels_view(retina, score_threshold=0.0)
    b = viz.draw_levels(retina.image, retina.result.instances, score_threshold=0.0, level_range=(3, 7),
                        title="RoI level by size (final box)")
    assert not np.array_equal(a, b)


def test_the_bundled_model_is_recognised_however_its_path_is_written(tmp_path, monkeypatch):
    """The page puts the offline model's own examples first when it is in use: `--weights` with
    a relative path, an absolute one, or one through a link all name the bundled file."""
    bundled = Path(BUNDLED).resolve()
    link = tmp_path / "link.safetensors"
    link.symlink_to(bundled)
    monkeypatch.chdir(bundled.parents[1])
    for written in (str(bundled), os.path.relpath(bundled), f"./weights/../weights/{bundled.name}", str(link)):
        assert ModelSource.from_predictor(object(), written).uses_bundled_model, written
    (tmp_path / bundled.name).write_bytes(bundled.read_bytes())  # the same bytes elsewhere: another file
    for other in (str(tmp_path / bundled.name), "panoptic_fpn_R_50_3x"):
        assert not ModelSource.from_predictor(object(), other).uses_bundled_model, other
