"""Predicting a folder: per-image outputs, one merged COCO results file, resuming, broken images,
and the split across torchrun processes (2 CPU processes, gloo) with no image done twice or lost.

The model is detectron2's mini Panoptic FPN (tests/data/d2_mini), on small images.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import segfpn
from segfpn.inference import MERGED_RESULTS, predict_folder
from segfpn.outputs import result_files

from testdata import D2_MINI, ROOT, load_rgb

WEIGHTS = D2_MINI / "panoptic_fpn_mini.pkl"
PHOTOS = ["astronaut.png", "coffee.png", "chelsea_cat.png", "voc2007_000001_portrait.jpg"]


def make_folder(folder, count=4):
    """``count`` small photos (longest side 160) plus a broken JPEG and a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image = Image.fromarray(load_rgb(PHOTOS[i % len(PHOTOS)]))
        image.thumbnail((160, 160))
        name = f"img{i:02d}.png"
        image.save(folder / name)
        names.append(name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return names


@pytest.fixture(scope="module")
def predictor():
    return segfpn.load(WEIGHTS, device="cpu")


def test_folder_outputs_merged_results_and_broken_image(tmp_path, predictor):
    names = make_folder(tmp_path / "images", count=3)
    out = tmp_path / "out"
    report = predict_folder(predictor, tmp_path / "images", out, progress=False)
    assert sorted(report.done) == names and not report.skipped
    assert list(report.failed) == ["broken.jpg"] and "broken.jpg" in report.failed["broken.jpg"]
    for name in names:
        paths = result_files(out, name, panoptic=True)
        for path in paths.all():
            assert path.stat().st_size > 0, (name, path)
        results = json.loads(paths.instances.read_text())
        # Image ids: 1-based positions in the folder's sorted file list (broken.jpg included).
        listed = sorted(p.name for p in (tmp_path / "images").iterdir())
        assert results and {r["image_id"] for r in results} == {listed.index(name) + 1}
        panoptic = json.loads(paths.panoptic_json.read_text())
        assert panoptic["images"][0]["file_name"] == name and panoptic["categories"]
        with Image.open(paths.overlay) as overlay:
            assert overlay.size == Image.open(tmp_path / "images" / name).size
    log = json.loads((out / "logs" / "predict_rank0_of_1.json").read_text())
    assert sorted(log["done"]) == names and list(log["failed"]) == ["broken.jpg"]


def _undecodable_files() -> dict[str, bytes]:
    """Files Pillow's decoders fail on with ValueError, IndexError, AttributeError and
    NotImplementedError (not OSError), named to sort between the photos of make_folder."""
    from input_cases import BY_NAME  # tests/robustness is on pytest's pythonpath

    made = {name: BY_NAME[case].make() for name, case in (
        ("img00_header.png", "png_ihdr_length_zero"), ("img01_cut.png", "qoi_cut"),
        ("img02_stack.tif", "spider_image_number_without_stack"), ("img03_flags.jpg", "dds_unknown_flags"))}
    return made


def test_undecodable_files_are_reported_and_the_run_goes_on(tmp_path, predictor):
    names = make_folder(tmp_path / "images", count=4)
    undecodable = _undecodable_files()
    for name, data in undecodable.items():
        (tmp_path / "images" / name).write_bytes(data)
    bad = sorted([*undecodable, "broken.jpg"])
    out = tmp_path / "out"
    for run in ("first", "again"):  # a rerun must not stop at them either
        report = predict_folder(predictor, tmp_path / "images", out, progress=False)
        assert sorted(report.failed) == bad, run
        for name in undecodable:
            assert report.failed[name].startswith(f"{name} could not be decoded (damaged or truncated): ")
        if run == "first":
            assert sorted(report.done) == names and not report.skipped
        else:
            assert sorted(report.skipped) == names and not report.done
    assert all(result_files(out, n, panoptic=True).instances.exists() for n in names)


def test_resume_skips_done_images(tmp_path, predictor):
    names = make_folder(tmp_path / "images", count=3)
    out = tmp_path / "out"
    predict_folder(predictor, tmp_path / "images", out, progress=False)
    stamps = {n: result_files(out, n, panoptic=True).instances.stat().st_mtime_ns for n in names}
    # An interrupted run: the last image's marker (its instances JSON, written last) is missing.
    result_files(out, names[-1], panoptic=True).instances.unlink()
    report = predict_folder(predictor, tmp_path / "images", out, progress=False)
    assert report.done == [names[-1]] and sorted(report.skipped) == names[:-1]
    for n in names[:-1]:
        assert result_files(out, n, panoptic=True).instances.stat().st_mtime_ns == stamps[n]


def test_batches_give_the_same_results(tmp_path, predictor):
    make_folder(tmp_path / "images", count=2)
    one, two = tmp_path / "one", tmp_path / "two"
    predict_folder(predictor, tmp_path / "images", one, progress=False, batch_size=1)
    predict_folder(predictor, tmp_path / "images", two, progress=False, batch_size=2)
    for name in ("img00.png", "img01.png"):
        a = json.loads(result_files(one, name, panoptic=True).instances.read_text())
        b = json.loads(result_files(two, name, panoptic=True).instances.read_text())
        # Batching pads the images to the largest: the features of the smaller one may change a little.
        assert len(a) == len(b) and a
        np.testing.assert_allclose([r["score"] for r in a[:20]], [r["score"] for r in b[:20]], atol=0.05)


def test_predict_batch_equals_one_at_a_time_for_images_of_one_size(predictor):
    # Same size, so batching adds no padding: the results must be those of single images.
    a = np.asarray(Image.fromarray(load_rgb("astronaut.png")).resize((160, 120)))
    b = np.ascontiguousarray(a[::-1, ::-1])
    batched = predictor.predict_batch([a, b])
    for image, result in zip((a, b), batched):
        single = predictor.predict(image)
        assert len(single.instances.scores) == len(result.instances.scores) > 0
        np.testing.assert_allclose(result.instances.boxes, single.instances.boxes, atol=1e-3)
        np.testing.assert_allclose(result.instances.scores, single.instances.scores, atol=1e-5)
        assert (np.asarray(result.instances.masks) != np.asarray(single.instances.masks)).mean() < 1e-4
        assert (result.panoptic.segment_ids == single.panoptic.segment_ids).mean() > 0.999
    assert predictor.predict_batch([]) == []


def run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          **kwargs)


def test_cli_folder_reports_broken_image_and_merges(tmp_path):
    names = make_folder(tmp_path / "images", count=2)
    out = tmp_path / "out"
    proc = run_cli(["-m", "segfpn.cli", "predict", str(tmp_path / "images"), "--weights", str(WEIGHTS),
                    "--out", str(out), "--device", "cpu", "--no-progress"])
    assert proc.returncode == 1, proc.stderr  # one image failed; the others are done
    assert "2 predicted, 0 already done, 1 failed" in proc.stdout
    assert "broken.jpg" in proc.stderr
    merged = json.loads((out / MERGED_RESULTS).read_text())
    assert {r["image_id"] for r in merged} == {2, 3}  # ids: positions in the sorted list (broken.jpg is 1)
    assert all(result_files(out, n, panoptic=True).instances.exists() for n in names)


def test_torchrun_splits_the_folder_across_two_processes(tmp_path):
    names = make_folder(tmp_path / "images", count=5)
    out = tmp_path / "out"
    # One image was done by an earlier, interrupted run: it must be skipped, not redone.
    predict_folder(segfpn.load(WEIGHTS, device="cpu"), tmp_path / "images", out, progress=False)
    done_before = names[0]
    for n in names[1:]:
        for path in result_files(out, n, panoptic=True).all():
            path.unlink()
    (out / MERGED_RESULTS).unlink(missing_ok=True)
    stamp = result_files(out, done_before, panoptic=True).instances.stat().st_mtime_ns
    proc = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "segfpn.cli",
                    "predict", str(tmp_path / "images"), "--weights", str(WEIGHTS), "--out", str(out),
                    "--device", "cpu", "--no-progress"])
    assert proc.returncode != 0  # the rank that got broken.jpg reports it
    assert "(2 processes)" in proc.stdout and "broken.jpg" in proc.stderr
    logs = [json.loads((out / "logs" / f"predict_rank{r}_of_2.json").read_text()) for r in range(2)]
    done = [n for log in logs for n in log["done"]]
    # Every image done exactly once, by one process; the one done before skipped.
    assert sorted(done) == sorted(names[1:]) and len(done) == len(set(done))
    assert [n for log in logs for n in log["skipped"]] == [done_before]
    assert [n for log in logs for n in log["failed"]] == ["broken.jpg"]
    assert all(log["done"] or log["skipped"] for log in logs)  # both processes worked
    assert result_files(out, done_before, panoptic=True).instances.stat().st_mtime_ns == stamp
    merged = json.loads((out / MERGED_RESULTS).read_text())
    assert {r["image_id"] for r in merged} == set(range(2, 2 + len(names)))
