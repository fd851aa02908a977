"""Box-only models (Faster R-CNN, RetinaNet) through every export format: LabelMe rectangles, YOLO
detection labels, CVAT boxes, opaque box cut-outs and the table. Seeded random boxes nobody
picked (inside the image, touching its border, flat, partly or wholly outside) go box -> file
-> box within each format's precision; the image size comes from the image."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from segfpn.formats import boxes_in_image, cutouts, cvat, labelme, table, yolo
from segfpn.outputs import write_exports, write_result
from segfpn.structures import Instances, Result

CLASS_NAMES = ["person", "bicycle", "car"]


def box_only_instances(boxes, *, seed=0, levels=None):
    rng = np.random.default_rng(seed)
    n = len(boxes)
    return Instances(boxes=np.asarray(boxes, np.float32).reshape(n, 4),
                     scores=np.sort(rng.uniform(0.05, 1, n)).astype(np.float32)[::-1].copy(),
                     labels=rng.integers(0, len(CLASS_NAMES), n), class_names=CLASS_NAMES, category_ids=[1, 2, 3],
                     masks=None, levels=np.asarray(levels if levels is not None else rng.integers(3, 8, n)),
                     box_levels=np.full(n, 3))


def box_only_result(image, instances):
    size = image.shape[:2]
    return Result(image_size=size, input_size=size, padded_size=size, instances=instances)


def random_boxes(rng, h, w, n):
    """float32 [n, 4] xyxy: most inside the image, some on its border, flat or sticking out."""
    x = np.sort(rng.uniform(0, w, (n, 2)), axis=1)
    y = np.sort(rng.uniform(0, h, (n, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    kind = rng.integers(0, 6, n)
    boxes[kind == 1, 0] = 0                                     # on the left and top edges
    boxes[kind == 1, 1] = 0
    boxes[kind == 2, 2] = w                                     # on the right and bottom edges
    boxes[kind == 2, 3] = h
    boxes[kind == 3] = [0, 0, w, h]                             # the whole image
    boxes[kind == 4, 2] = boxes[kind == 4, 0]                   # flat (RetinaNet keeps such boxes)
    outside = kind == 5                                         # sticking out, or wholly outside
    boxes[outside] += rng.uniform(-1.5, 1.5, (int(outside.sum()), 1)) * [w, h, w, h]
    return boxes.astype(np.float32)


def test_random_boxes_round_trip_through_labelme_yolo_and_cvat(tmp_path):
    rng = np.random.default_rng(2025)
    touching = clipped = 0
    for trial in range(40):
        h, w = (int(v) for v in rng.integers(1, 6000, 2))
        boxes = random_boxes(rng, h, w, int(rng.integers(1, 12)))
        instances = box_only_instances(boxes, seed=trial)
        keep = np.arange(len(boxes))
        expected = boxes_in_image(boxes, (h, w))
        touching += int(np.isin(expected, [0, w, h]).any())
        clipped += int((expected != boxes).any())
        where = (trial, h, w)

        document = labelme.labelme_document(instances, keep, image_name="x.png", image_size=(h, w))
        assert (document["imageHeight"], document["imageWidth"]) == (h, w)
        names, from_labelme = labelme.read_labelme_boxes(json.loads(json.dumps(document)))
        assert names == instances.names, where
        np.testing.assert_allclose(from_labelme, expected, rtol=0, atol=1e-9, err_msg=str(where))

        lines = yolo.yolo_lines(instances, keep, image_size=(h, w))
        values = np.asarray([[float(v) for v in line.split()[1:]] for line in lines])
        assert values.shape == (len(boxes), 4) and (values >= 0).all() and (values <= 1).all(), where
        labels, from_yolo = yolo.read_yolo_boxes("".join(line + "\n" for line in lines), (h, w))
        assert labels == instances.labels.tolist(), where
        # 7 decimals of a fraction of the width or height; under 0.001 px below 6000 px.
        np.testing.assert_allclose(from_yolo, expected, rtol=0, atol=1e-7 * max(h, w), err_msg=str(where))

        cvat.write_cvat(tmp_path / "x.xml", instances, keep, image_name="x.png", image_size=(h, w))
        names, from_cvat = cvat.read_cvat_boxes(tmp_path / "x.xml")
        assert names == instances.names, where
        np.testing.assert_allclose(from_cvat, expected, rtol=0, atol=0.005 + 1e-9, err_msg=str(where))
    assert touching > 20 and clipped > 10  # the border and the clipping were tried


def test_write_result_of_a_box_only_model_writes_every_format(tmp_path):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    boxes = [[10.25, 20.5, 60.75, 80.0], [0, 0, 130, 90], [100.4, 30.6, 140.0, 95.0], [5, 5, 5, 40]]
    instances = box_only_instances(boxes, seed=1, levels=[3, 7, 5, 6])
    result = box_only_result(image, instances)
    files = write_result(result, image, tmp_path, image_name="frame 1.png",
                         formats=["labelme", "yolo", "cvat", "cutouts", "csv", "parquet"], score_threshold=0.0)
    assert files.panoptic_png is None and files.panoptic_json is None
    assert set(files.exports) == {"labelme", "yolo", "yolo_names", "cvat", "cutouts", "csv", "parquet"}
    coco = json.loads(files.instances.read_text())
    assert len(coco) == 4 and all("segmentation" not in r for r in coco)

    document = json.loads(files.exports["labelme"].read_text())
    assert (document["imageHeight"], document["imageWidth"], document["imagePath"]) == (90, 130, "frame 1.png")
    assert [s["shape_type"] for s in document["shapes"]] == ["rectangle"] * 4
    assert [s["group_id"] for s in document["shapes"]] == [1, 2, 3, 4]
    assert document["shapes"][2]["points"] == [[pytest.approx(100.4), pytest.approx(30.6)], [130.0, 90.0]]
    assert document["shapes"][0]["description"] == f"score {float(instances.scores[0]):.3f}"

    labels, from_yolo = yolo.read_yolo_boxes(files.exports["yolo"], (90, 130))
    assert labels == instances.labels.tolist()
    np.testing.assert_allclose(from_yolo, boxes_in_image(instances.boxes, (90, 130)), atol=1e-4)
    assert "names:\n  0: \"person\"" in files.exports["yolo_names"].read_text()

    root = ET.parse(files.exports["cvat"]).getroot()
    assert {e.findtext("type") for e in root.iter("label")} == {"rectangle"}
    image_element = root.find("image")
    assert (image_element.get("width"), image_element.get("height")) == ("130", "90")
    cvat_boxes = list(image_element.iter("box"))
    assert len(cvat_boxes) == 4 and not list(image_element.iter("polygon"))
    assert [b.find("attribute").get("name") for b in cvat_boxes] == ["score"] * 4
    assert [float(b.find("attribute").text) for b in cvat_boxes] == pytest.approx(instances.scores.tolist(), abs=1e-4)
    assert (cvat_boxes[2].get("xbr"), cvat_boxes[2].get("ybr")) == ("130.00", "90.00")

    for fmt in ("csv", "parquet"):
        rows = table.read_table(files.exports[fmt])
        assert [r["level"] for r in rows] == [3, 7, 5, 6]
        b = np.asarray(boxes, np.float64)
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        assert [r["area"] for r in rows] == pytest.approx(areas.tolist(), rel=1e-5)
        assert [r["x1"] for r in rows] == pytest.approx(b[:, 2].tolist(), abs=1e-4)  # the model's box, not clipped


def test_box_cutouts_are_the_box_crop_fully_opaque(tmp_path):
    rng = np.random.default_rng(5)
    for trial in range(15):
        h, w = (int(v) for v in rng.integers(2, 300, 2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        boxes = random_boxes(rng, h, w, int(rng.integers(1, 8)))
        instances = box_only_instances(boxes, seed=trial)
        keep = np.arange(len(boxes))
        path = cutouts.write_cutouts(tmp_path / f"{trial}.zip", image, instances, keep)
        pngs = cutouts.read_cutouts(path)
        assert len(pngs) == len(boxes) and all(n.startswith("instances/") for n in pngs)
        for number, i in enumerate(keep.tolist(), start=1):
            name = f"instances/{number:03d}_{instances.names[i]}_{float(instances.scores[i]):.2f}.png"
            rgba = pngs[name]
            x0, y0, x1, y1 = np.round(boxes_in_image(boxes[i], (h, w))[0]).astype(int)
            x0, y0 = min(x0, w - 1), min(y0, h - 1)  # a flat box on the far edge: its last pixel
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)  # at least one pixel
            assert rgba.shape == (y1 - y0, x1 - x0, 4), (trial, i, boxes[i])
            assert (rgba[..., 3] == 255).all()
            np.testing.assert_array_equal(rgba[..., :3], image[y0:y1, x0:x1])


def test_readers_say_which_reader_takes_the_other_kind(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    files = write_result(box_only_result(image, box_only_instances([[1, 2, 30, 20]])), image, tmp_path,
                         image_name="a.png", formats=["labelme", "yolo", "cvat"])
    with pytest.raises(ValueError, match="read_labelme_boxes"):
        labelme.read_labelme(files.exports["labelme"])
    with pytest.raises(ValueError, match="read_yolo_boxes"):
        yolo.read_yolo(files.exports["yolo"], (40, 50))
    with pytest.raises(ValueError, match="read_cvat_boxes"):
        cvat.read_cvat(files.exports["cvat"])
    with pytest.raises(ValueError, match="read_yolo"):
        yolo.read_yolo_boxes("0 0.1 0.1 0.2 0.1 0.2 0.2\n", (40, 50))
    with pytest.raises(ValueError, match="polygons: read_labelme"):
        labelme.read_labelme_boxes({"shapes": [{"label": "a", "points": [[0, 0], [1, 0], [1, 1]],
                                                "shape_type": "polygon"}]})


def test_the_image_size_comes_from_the_image(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    result = box_only_result(image, box_only_instances([[1, 2, 30, 20]]))
    with pytest.raises(ValueError, match="the image is 60x40 but the result is of a 50x40 image"):
        write_exports(result, np.zeros((40, 60, 3), np.uint8), tmp_path, image_name="a.png", formats=["yolo"])
    assert not list(tmp_path.iterdir())  # refused before anything was written
