"""CocoDataset on the real coco_mini set and on hand-made broken annotations."""

import json
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segfpn.categories import Category, CategorySet, coco_instance_categories, coco_panoptic_category_set
from segfpn.data.coco import CocoDataset, decode_segmentation
from segfpn.export import rgb_to_id

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")

CROWD_ID = 3153362  # the crowd "person" region of image 142238 (instances and panoptic)


def _json(path):
    return json.loads(path.read_text())


def _panoptic_ids(coco_mini_paths, image_id):
    ann = next(a for a in _json(coco_mini_paths["panoptic_json"])["annotations"] if a["image_id"] == image_id)
    png = coco_mini_paths["panoptic_json"].with_suffix("") / ann["file_name"]
    with Image.open(png) as pil:
        return rgb_to_id(np.asarray(pil.convert("RGB"))), ann["segments_info"]


@pytest.fixture(scope="module")
def instance_only(coco_mini_paths):
    return CocoDataset(coco_mini_paths["image_dir"], categories=coco_panoptic_category_set(),
                       instances_json=coco_mini_paths["instances_json"])


@pytest.fixture(scope="module")
def instance_and_panoptic(coco_mini_paths):
    return CocoDataset(coco_mini_paths["image_dir"], categories=coco_panoptic_category_set(),
                       instances_json=coco_mini_paths["instances_json"],
                       panoptic_json=coco_mini_paths["panoptic_json"])


def test_instances_of_coco_mini(instance_only, coco_mini_paths):
    cats = coco_panoptic_category_set()
    assert len(instance_only) == 2 and instance_only.image_ids == [142238, 39769]
    anns = _json(coco_mini_paths["instances_json"])["annotations"]

    rle_image = instance_only[0]
    rle_image.check()
    assert rle_image.image_id == 142238 and rle_image.file_name == "000000142238.jpg"
    assert rle_image.image.shape == (427, 640, 3) and rle_image.semantic is None
    expected = [a for a in anns if a["image_id"] == 142238 and not a["iscrowd"]]
    assert rle_image.num_instances == len(expected) == 14
    assert rle_image.labels.tolist() == [cats.thing_label(a["category_id"]) for a in expected]
    assert rle_image.masks.sum(axis=(1, 2)).tolist() == [a["area"] for a in expected]
    x, y, w, h = expected[0]["bbox"]
    np.testing.assert_array_equal(rle_image.boxes[0], np.float32([x, y, x + w, y + h]))

    polygon_image = instance_only[1]
    polygon_image.check()
    assert polygon_image.image_id == 39769 and polygon_image.num_instances == 6
    expected = [a for a in anns if a["image_id"] == 39769]
    assert polygon_image.labels.tolist() == [cats.thing_label(a["category_id"]) for a in expected]
    areas = polygon_image.masks.sum(axis=(1, 2))
    np.testing.assert_allclose(areas, [a["area"] for a in expected], rtol=0.02)
    # Each mask lies inside its box.
    for box, mask in zip(polygon_image.boxes, polygon_image.masks):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= np.floor(box[0]) and xs.max() < np.ceil(box[2]) + 1
        assert ys.min() >= np.floor(box[1]) and ys.max() < np.ceil(box[3]) + 1


def test_crowd_is_no_target_and_ignored_in_semantic(instance_and_panoptic, coco_mini_paths):
    anns = _json(coco_mini_paths["instances_json"])["annotations"]
    crowd = next(a for a in anns if a["id"] == CROWD_ID)
    assert crowd["iscrowd"] == 1
    crowd_mask = decode_segmentation(crowd["segmentation"], height=427, width=640)
    sample = instance_and_panoptic[0]
    sample.check()
    assert sample.num_instances == 14
    assert not any(np.array_equal(m, crowd_mask) for m in sample.masks)

    ids, segments = _panoptic_ids(coco_mini_paths, 142238)
    assert (sample.semantic[ids == CROWD_ID] == 255).all()
    assert (sample.semantic[ids == 0] == 255).all()
    assert int((sample.semantic == 255).sum()) == 2712 + 24295  # void + crowd
    cats = coco_panoptic_category_set()
    for seg in segments:
        values = np.unique(sample.semantic[ids == seg["id"]]).tolist()
        if seg["iscrowd"]:
            assert values == [255]
        elif seg["category_id"] in {c.id for c in cats.things}:
            assert values == [0]
        else:
            assert values == [cats.semantic_label(seg["category_id"])]


def test_semantic_of_the_polygon_image(instance_and_panoptic, coco_mini_paths):
    sample = instance_and_panoptic[1]
    ids, segments = _panoptic_ids(coco_mini_paths, 39769)
    assert (sample.semantic[ids == 0] == 255).sum() == 10752
    stuff = [s for s in segments if s["category_id"] > 91]
    assert len(stuff) == 1
    label = coco_panoptic_category_set().semantic_label(stuff[0]["category_id"])
    assert label > 0 and (sample.semantic[ids == stuff[0]["id"]] == label).all()
    assert set(np.unique(sample.semantic).tolist()) == {0, label, 255}


def test_panoptic_only_derives_instances_from_segments(coco_mini_paths):
    cats = coco_panoptic_category_set()
    dataset = CocoDataset(coco_mini_paths["image_dir"], categories=cats,
                          panoptic_json=coco_mini_paths["panoptic_json"])
    first, second = dataset[0], dataset[-1]
    first.check()
    second.check()
    assert first.num_instances == 14  # 15 thing segments, one of them crowd
    assert second.num_instances == 5  # the panoptic file has no "bed"
    ids, segments = _panoptic_ids(coco_mini_paths, 39769)
    things = [s for s in segments if s["category_id"] in {c.id for c in cats.things}]
    for seg, mask, box, label in zip(things, second.masks, second.boxes, second.labels):
        assert np.array_equal(mask, ids == seg["id"])
        x, y, w, h = seg["bbox"]
        np.testing.assert_array_equal(box, np.float32([x, y, x + w, y + h]))
        assert label == cats.thing_label(seg["category_id"])
    assert np.array_equal(second.semantic == 0, second.masks.any(axis=0))


def test_indexing(instance_only):
    assert instance_only[-1].image_id == 39769
    with pytest.raises(IndexError):
        instance_only[2]
    with pytest.raises(TypeError):
        instance_only["0"]
    assert [s.image_id for s in instance_only] == [142238, 39769]


# -- broken annotations ------------------------------------------------------------------------

HEIGHT, WIDTH = 24, 32
CATEGORIES = CategorySet(things=(Category(id=1, name="a", isthing=True, color=(255, 0, 0)),
                                 Category(id=2, name="b", isthing=True, color=(0, 255, 0))))


def _blob():
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[5:15, 20:27] = 1
    mask[8:10, 10:14] = 1
    return mask


def _uncompressed_counts(mask):
    flat = mask.ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def _compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


SQUARE = [4, 4, 12, 4, 12, 12, 4, 12]
VALID = {
    1: {"category_id": 1, "segmentation": [SQUARE], "bbox": [4, 4, 8, 8]},
    2: {"category_id": 2, "segmentation": {"size": [HEIGHT, WIDTH], "counts": _uncompressed_counts(_blob())},
        "bbox": [10, 5, 17, 10]},
    3: {"category_id": 1, "segmentation": _compressed(_blob()), "bbox": [10, 5, 17, 10]},
}
BROKEN = {
    10: ({"category_id": 1, "bbox": [4, 4, 8, 8]}, "no segmentation"),
    11: ({"category_id": 1, "segmentation": [], "bbox": [4, 4, 8, 8]}, "no segmentation"),
    12: ({"category_id": 1, "segmentation": [SQUARE], "bbox": [4, 4, 0, 8]}, "zero or negative"),
    13: ({"category_id": 1, "segmentation": [SQUARE], "bbox": [4, 4, 8, -3]}, "zero or negative"),
    14: ({"category_id": 1, "segmentation": [[100, 100, 110, 100, 110, 110]], "bbox": [2, 2, 5, 5]},
         "empty mask"),
    15: ({"category_id": 99, "segmentation": [SQUARE], "bbox": [4, 4, 8, 8]}, "category id 99"),
    16: ({"category_id": 1, "segmentation": {"size": [HEIGHT, WIDTH + 1], "counts": [0, 5, 763]},
          "bbox": [4, 4, 8, 8]}, "RLE size"),
    17: ({"category_id": 1, "segmentation": {"size": [HEIGHT, WIDTH], "counts": "garbage~~"},
          "bbox": [4, 4, 8, 8]}, "cannot be decoded"),
    18: ({"category_id": 1, "segmentation": [[1, 1, 5, 5]], "bbox": [1, 1, 4, 4]}, "at least 3 points"),
    19: ({"category_id": 1, "segmentation": [SQUARE], "bbox": [50, 40, 4, 4]}, "outside"),
    20: ({"category_id": 1, "segmentation": {"size": [HEIGHT, WIDTH], "counts": [0, 5, 10]},
          "bbox": [4, 4, 8, 8]}, "cover 15 pixels"),
    21: ({"category_id": 1, "segmentation": [SQUARE], "bbox": [4, 4, 8]}, "four finite numbers"),
}


@pytest.fixture()
def broken_set(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for image_id in (7, 8, 9):
        name = f"{image_id}.png"
        Image.fromarray(np.full((HEIGHT, WIDTH, 3), 20 * image_id, dtype=np.uint8)).save(images / name)
        entries.append({"id": image_id, "file_name": name, "height": HEIGHT, "width": WIDTH})
    anns = [{"id": i, "image_id": 7, "iscrowd": 0, "area": 1, **a} for i, a in VALID.items()]
    anns += [{"id": i, "image_id": 7, "iscrowd": 0, "area": 1, **a} for i, (a, _) in BROKEN.items()]
    anns.append({"id": 4, "image_id": 7, "iscrowd": 1, "category_id": 1, "area": 1,
                 "segmentation": _compressed(_blob()), "bbox": [10, 5, 17, 10]})
    anns.append({"id": 30, "image_id": 8, "iscrowd": 0, "category_id": 1, "bbox": [1, 1, 3, 3]})
    anns.append({"id": 31, "image_id": 9, "iscrowd": 1, "category_id": 1, "area": 1,
                 "segmentation": _compressed(_blob()), "bbox": [10, 5, 17, 10]})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": entries, "annotations": anns,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    return images, path


def test_broken_annotations_are_skipped_with_a_warning(broken_set, caplog):
    images, path = broken_set
    dataset = CocoDataset(images, categories=CATEGORIES, instances_json=path)
    with caplog.at_level(logging.WARNING, logger="segfpn.data.coco"):
        sample = dataset[0]
    sample.check()
    assert sample.image_id == 7 and sample.num_instances == 3
    assert sample.labels.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(sample.masks[1], _blob().astype(bool))
    np.testing.assert_array_equal(sample.masks[2], _blob().astype(bool))
    np.testing.assert_array_equal(sample.boxes[1], np.float32([10, 5, 27, 15]))
    messages = [r.getMessage() for r in caplog.records]
    for ann_id, (_ann, reason) in BROKEN.items():
        hits = [m for m in messages if m.startswith(f"image 7, annotation {ann_id}:")]
        assert len(hits) == 1, (ann_id, messages)
        assert reason in hits[0], (ann_id, hits[0])
    assert not any("annotation 4:" in m for m in messages)  # crowd: dropped silently
    assert len(messages) == len(BROKEN)


def test_images_left_empty(broken_set):
    images, path = broken_set
    dataset = CocoDataset(images, categories=CATEGORIES, instances_json=path)
    assert dataset.image_ids == [7, 8, 9]
    for empty in (dataset[1], dataset[2]):
        empty.check()
        assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
        assert empty.masks.shape == (0, HEIGHT, WIDTH)
    skipping = CocoDataset(images, categories=CATEGORIES, instances_json=path, skip_empty=True)
    assert skipping.image_ids == [7]


def test_decode_segmentation_formats():
    blob = _blob().astype(bool)
    counts = _compressed(blob.astype(np.uint8))["counts"]
    for segmentation in ({"size": [HEIGHT, WIDTH], "counts": counts},
                         {"size": [HEIGHT, WIDTH], "counts": counts.encode("ascii")},
                         {"size": [HEIGHT, WIDTH], "counts": _uncompressed_counts(blob.astype(np.uint8))}):
        np.testing.assert_array_equal(decode_segmentation(segmentation, height=HEIGHT, width=WIDTH), blob)
    square = decode_segmentation([SQUARE], height=HEIGHT, width=WIDTH)
    assert square.dtype == bool and square[6:11, 6:11].all() and not square[14:, :].any()
    flat = decode_segmentation(SQUARE, height=HEIGHT, width=WIDTH)  # one polygon, not nested
    np.testing.assert_array_equal(flat, square)
    # "03O" holds the runs 0, 3, -1: their total fits a 1x2 image, but a run cannot be negative
    with pytest.raises(ValueError, match="negative run"):
        decode_segmentation({"size": [1, 2], "counts": "03O"}, height=1, width=2)
    # compressed strings whose runs do not add up are refused before pycocotools reads them
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((HEIGHT, WIDTH)) < rng.random()).astype(np.uint8)
        rle = _compressed(mask)
        np.testing.assert_array_equal(decode_segmentation(rle, height=HEIGHT, width=WIDTH), mask.astype(bool))
        with pytest.raises(ValueError):
            decode_segmentation(rle, height=HEIGHT, width=WIDTH + 1)
        with pytest.raises(ValueError, match="cover"):
            decode_segmentation({"size": [HEIGHT + 1, WIDTH], "counts": rle["counts"]},
                                height=HEIGHT + 1, width=WIDTH)


def test_setup_errors_name_the_problem(tmp_path, coco_mini_paths, broken_set):
    images, path = broken_set
    with pytest.raises(ValueError, match="instances_json, panoptic_json or both"):
        CocoDataset(images, categories=CATEGORIES)
    with pytest.raises(ValueError, match="merged 'things' class"):
        CocoDataset(coco_mini_paths["image_dir"], categories=coco_instance_categories(),
                    panoptic_json=coco_mini_paths["panoptic_json"])
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDataset(images, categories=CATEGORIES, instances_json=not_coco)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CocoDataset(images, categories=CATEGORIES, instances_json=tmp_path / "missing.json")

    data = _json(path)
    data["images"][0]["width"] = WIDTH + 1
    data["images"][1]["file_name"] = "gone.png"
    path.write_text(json.dumps(data))
    dataset = CocoDataset(images, categories=CATEGORIES, instances_json=path)
    with pytest.raises(ValueError, match="image 7: .* is 32x24 but its JSON entry says 33x24"):
        dataset[0]
    with pytest.raises(FileNotFoundError, match="image 8: .*gone.png does not exist"):
        dataset[1]


def test_panoptic_problems_become_ignore_pixels(synthetic_set, tmp_path, caplog):
    data = _json(synthetic_set.panoptic_json)
    ann = data["annotations"][0]
    data["annotations"] = [ann]
    data["images"] = data["images"][:1]
    stuff = [s for s in ann["segments_info"] if s["category_id"] > 4]
    things = [s for s in ann["segments_info"] if s["category_id"] <= 4]
    assert stuff and len(things) >= 2, "the first synthetic image should have stuff and 2+ things"
    unlisted, unknown, crowd = stuff[0], things[0], things[1]
    ann["segments_info"] = [s for s in ann["segments_info"] if s is not unlisted]
    unknown["category_id"] = 99
    crowd["iscrowd"] = 1
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(data))

    dataset = CocoDataset(synthetic_set.image_dir, categories=synthetic_set.dataset().categories,
                          panoptic_json=path, panoptic_dir=synthetic_set.panoptic_dir)
    with caplog.at_level(logging.WARNING, logger="segfpn.data.coco"):
        sample = dataset[0]
    sample.check()
    ids, _ = _panoptic_ids({"panoptic_json": synthetic_set.panoptic_dir.with_suffix(".json")}, 1)
    for seg in (unlisted, unknown, crowd):
        assert (sample.semantic[ids == seg["id"]] == 255).all()
    assert sample.num_instances == len(things) - 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"image 1, segment {unlisted['id']}: the id is in the panoptic PNG")
               for m in messages), messages
    assert any(m.startswith(f"image 1, segment {unknown['id']}: category id 99") for m in messages), messages
    assert not any(str(crowd["id"]) in m for m in messages)
