"""Every export format round-trips: masks -> file -> masks, with the format's own reader drawing
polygons as the tools that read the format do. Real photos through the bundled model, and
seeded random masks (parts, holes, parts inside holes, random sizes) nobody picked."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

import segfpn
from segfpn.formats import cvat, labelme, yolo
from segfpn.formats.labelme import HOLE_LABEL
from segfpn.formats.polygons import MIN_IOU, TOLERANCE, iou, trace
from segfpn.outputs import write_result
from segfpn.structures import Instances

from testdata import ROOT, load_rgb

WEIGHTS = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"
POLYGON_FORMATS = ("labelme", "yolo", "cvat")


@pytest.fixture(scope="module")
def predictions():
    predictor = segfpn.load(WEIGHTS, device="cpu")
    return [(name, load_rgb(name), predictor.predict(load_rgb(name)))
            for name in ("synthetic_shapes_1.png", "cyclists_33823288584.jpg")]


def read_back(fmt, path, image_size):
    if fmt == "labelme":
        return labelme.read_labelme(path)
    if fmt == "yolo":
        labels, masks = yolo.read_yolo(path, image_size)
        return labels, masks
    return cvat.read_cvat(path)


@pytest.mark.parametrize("fmt", POLYGON_FORMATS)
def test_photos_round_trip_every_instance(tmp_path, predictions, fmt):
    for name, rgb, result in predictions:
        files = write_result(result, rgb, tmp_path, image_name=name, formats=[fmt])
        keep = np.flatnonzero(result.instances.scores >= 0)
        labels, masks = read_back(fmt, files.exports[fmt], result.image_size)
        assert len(masks) == len(keep) > 5, name
        expected = result.instances.names if fmt != "yolo" else result.instances.labels.tolist()
        assert list(labels) == list(expected)
        for i in range(len(keep)):
            assert iou(result.instances.masks[i], masks[i]) >= 0.95, (name, fmt, i)


def labelme_shape_to_mask(image_size, shapes):
    """LabelMe's own way (labelme.utils.shape_to_mask, drawn in file order as labelme2voc
    does): PIL polygons with a 1-px outline, ``_background_`` erasing."""
    canvas = Image.new("L", (image_size[1], image_size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        value = 0 if shape["label"] == HOLE_LABEL else 1
        draw.polygon([tuple(p) for p in shape["points"]], outline=value, fill=value)
    return np.asarray(canvas, dtype=bool)


def test_labelme_keeps_holes_as_background_shapes_of_the_instance(tmp_path):
    mask = np.zeros((120, 160), bool)
    cv2.circle(mask.view(np.uint8), (80, 60), 50, 1, -1)
    cv2.circle(mask.view(np.uint8), (80, 60), 20, 0, -1)                   # the hole
    cv2.rectangle(mask.view(np.uint8), (76, 56), (84, 64), 1, -1)          # a part inside the hole
    instances = random_instances([mask])
    doc = labelme.labelme_document(instances, np.arange(1), image_name="donut.png", image_size=mask.shape)
    labels = [s["label"] for s in doc["shapes"]]
    assert labels == ["a", HOLE_LABEL, "a"] and {s["group_id"] for s in doc["shapes"]} == {1}
    assert not labelme_shape_to_mask(mask.shape, doc["shapes"])[60, 70]     # inside the hole
    _, masks = labelme.read_labelme(doc)
    assert iou(masks[0], mask) >= MIN_IOU and masks[0][60, 80] and not masks[0][60, 68]
    assert iou(labelme_shape_to_mask(mask.shape, doc["shapes"]), mask) >= 0.95


def random_mask(rng, h, w, parts):
    mask = np.zeros((h, w), np.uint8)
    for _ in range(parts):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(2, w // 2 + 2)), int(rng.integers(2, h // 2 + 2)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    for _ in range(int(rng.integers(0, 3))):  # holes, or bites out of the edge
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(mask, centre, int(rng.integers(1, max(2, w // 6))), 0, -1)
    return mask.astype(bool)


def random_instances(masks):
    n = len(masks)
    return Instances(boxes=np.zeros((n, 4), np.float32), scores=np.linspace(1, 0.5, n, dtype=np.float32),
                     labels=np.zeros(n, np.int64), class_names=["a"], category_ids=[1], masks=np.stack(masks),
                     levels=np.full(n, 3, np.int64), box_levels=np.full(n, 3, np.int64))


def test_random_masks_round_trip(tmp_path):
    """LabelMe and CVAT: IoU >= 0.98 (MIN_IOU) for any mask; YOLO (one polygon per instance, parts
    joined by bridges) the same for a one-part mask, and for several parts every mask pixel is
    still covered."""
    rng = np.random.default_rng(2024)
    one_part = several = 0
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(8, 160, 2))
        masks = [m for m in (random_mask(rng, h, w, int(rng.integers(1, 4))) for _ in range(3)) if m.any()]
        if not masks:
            continue
        instances = random_instances(masks)
        keep = np.arange(len(masks))
        _, from_labelme = labelme.read_labelme(labelme.labelme_document(instances, keep, image_name="x.png",
                                                                         image_size=(h, w)))
        cvat.write_cvat(tmp_path / "x.xml", instances, keep, image_name="x.png", image_size=(h, w))
        _, from_cvat = cvat.read_cvat(tmp_path / "x.xml")
        lines = yolo.yolo_lines(instances, keep, image_size=(h, w))
        _, from_yolo = yolo.read_yolo("".join(line + "\n" for line in lines), (h, w))
        for k, mask in enumerate(masks):
            where = (trial, k, h, w)
            assert iou(from_labelme[k], mask) >= MIN_IOU, where
            assert iou(from_cvat[k], mask) >= MIN_IOU, where
            if len(trace(mask)) == 1:
                one_part += 1
                assert iou(from_yolo[k], mask) >= MIN_IOU, where
            else:
                several += 1
                recall = np.count_nonzero(from_yolo[k] & mask) / np.count_nonzero(mask)
                assert recall >= MIN_IOU, where
    assert one_part > 30 and several > 10  # both kinds were tried


def test_unsimplified_tracing_is_exact_and_simplification_cuts_vertices(predictions):
    _, _, result = predictions[1]
    crop = result.instances.masks.crops[0]
    _, exact = labelme.read_labelme(labelme.labelme_document(result.instances, np.arange(1), image_name="x",
                                                             image_size=result.image_size, tolerance=0))
    assert np.array_equal(exact[0], result.instances.masks[0])
    traced = sum(len(p.outer) for p in trace(crop))
    doc = labelme.labelme_document(result.instances, np.arange(1), image_name="x", image_size=result.image_size,
                                   tolerance=TOLERANCE)
    assert sum(len(s["points"]) for s in doc["shapes"]) < traced


def test_yolo_coordinates_land_on_the_same_pixel_truncated_or_rounded():
    rng = np.random.default_rng(7)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(50, 5000, 2))
        mask = np.zeros((h, w), bool)
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        mask[y:y + 3, x:x + 3] = True
        line = yolo.yolo_lines(random_instances([mask]), np.arange(1), image_size=(h, w))[0]
        xy = np.asarray([float(v) for v in line.split()[1:]]).reshape(-1, 2) * [w, h]
        assert np.array_equal(xy.astype(int), np.round(xy).astype(int))
        assert set(map(tuple, xy.astype(int))) <= {(x + i, y + j) for i in range(3) for j in range(3)}


def test_threshold_and_class_filter_choose_what_is_exported(tmp_path, predictions):
    name, rgb, result = predictions[1]
    names = result.instances.names
    wanted = names[0]
    threshold = float(np.median(result.instances.scores))
    files = write_result(result, rgb, tmp_path, image_name=name, formats=["labelme", "yolo", "cvat", "csv"],
                         score_threshold=threshold, classes=[wanted])
    expected = [i for i, (n, s) in enumerate(zip(names, result.instances.scores)) if n == wanted and s >= threshold]
    assert expected
    labelme_names, _ = labelme.read_labelme(files.exports["labelme"])
    assert labelme_names == [wanted] * len(expected)
    assert len(yolo.read_yolo(files.exports["yolo"], result.image_size)[0]) == len(expected)
    assert len(cvat.read_cvat(files.exports["cvat"])[0]) == len(expected)
    # COCO keeps every detection: it is what evaluation reads.
    assert len(json.loads(files.instances.read_text())) == len(result.instances)
    with pytest.raises(ValueError, match="unknown class name"):
        write_result(result, rgb, tmp_path, image_name=name, formats=["labelme"], classes=["unicorn"])
    with pytest.raises(ValueError, match="unknown export format"):
        write_result(result, rgb, tmp_path, image_name=name, formats=["labelme", "pascal"])


def test_cvat_document_declares_labels_and_groups_parts(tmp_path):
    rng = np.random.default_rng(3)
    two_parts = np.zeros((60, 90), bool)
    two_parts[5:20, 5:20] = two_parts[30:50, 50:80] = True
    cvat.write_cvat(tmp_path / "a.xml", random_instances([two_parts, random_mask(rng, 60, 90, 1)]), np.arange(2),
                    image_name="a.png", image_size=(60, 90))
    import xml.etree.ElementTree as ET

    root = ET.parse(tmp_path / "a.xml").getroot()
    assert root.findtext("version") == "1.1"
    assert [e.findtext("name") for e in root.iter("label")] == ["a"]
    image = root.find("image")
    assert (image.get("name"), image.get("width"), image.get("height")) == ("a.png", "90", "60")
    grouped = [p for p in image.iter("polygon") if p.get("group_id") == "1"]
    assert len(grouped) == 2 and all(p.find("attribute").get("name") == "score" for p in image.iter("polygon"))
