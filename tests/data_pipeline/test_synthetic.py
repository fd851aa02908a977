"""The synthetic set: determinism, variety (sizes, classes, occlusion) and valid COCO files."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segfpn.config import InputConfig
from segfpn.data.synthetic import (MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, generate, make_scene,
                                   synthetic_categories)
from segfpn.export import rgb_to_id, segment_bboxes_and_areas
from segfpn.viz.levels import level_for_box

# pycocotools' decode trips a numpy 2 DeprecationWarning of its own; nothing to fix on our side.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path):
    return json.loads(path.read_text())


def test_categories_follow_the_panoptic_fpn_layout():
    cats = synthetic_categories()
    assert cats.thing_names == ["circle", "square", "triangle", "star"]
    assert [c.id for c in cats.things] == [1, 2, 3, 4]
    assert all(c.isthing for c in cats.things)
    assert [c.name for c in cats.stuff] == ["things", "sky", "grass", "water", "wall"]
    assert [c.id for c in cats.stuff] == [0, 5, 6, 7, 8]
    assert not any(c.isthing for c in cats.stuff[1:])
    assert cats.thing_label(3) == 2 and cats.semantic_label(7) == 3


def test_same_seed_writes_byte_identical_files(tmp_path):
    a = generate(tmp_path / "a", num_images=4, seed=7, progress=False)
    b = generate(tmp_path / "b", num_images=4, seed=7, progress=False)
    files_a, files_b = _files(a.root), _files(b.root)
    assert len(files_a) == 4 + 4 + 2
    assert files_a == files_b
    c = generate(tmp_path / "c", num_images=4, seed=8, progress=False)
    assert _files(c.root)["images/000001.png"] != files_a["images/000001.png"]


def test_an_image_depends_on_seed_and_index_only(tmp_path, synthetic_set):
    short = generate(tmp_path / "short", num_images=3, seed=0, progress=False)
    for name in ("000001.png", "000002.png", "000003.png"):
        assert (short.image_dir / name).read_bytes() == (synthetic_set.image_dir / name).read_bytes()
        assert (short.panoptic_dir / name).read_bytes() == (synthetic_set.panoptic_dir / name).read_bytes()


def test_existing_set_is_not_overwritten_by_accident(tmp_path):
    paths = generate(tmp_path, num_images=3, seed=0, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(tmp_path, num_images=2, seed=1, progress=False)
    generate(tmp_path, num_images=2, seed=1, overwrite=True, progress=False)
    assert sorted(p.name for p in paths.image_dir.iterdir()) == ["000001.png", "000002.png"]
    assert sorted(p.name for p in paths.panoptic_dir.iterdir()) == ["000001.png", "000002.png"]


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="max_things"):
        generate(tmp_path, num_images=1, seed=0, min_things=3, max_things=2)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, num_images=1, seed=0, image_size=(300, 300), max_image_size=(200, 400))


def test_image_sizes_vary_within_the_range(tmp_path):
    paths = generate(tmp_path, num_images=8, seed=3, image_size=(256, 256),
                     max_image_size=(384, 384), progress=False)
    images = _load(paths.instances_json)["images"]
    heights = [img["height"] for img in images]
    widths = [img["width"] for img in images]
    assert min(heights + widths) >= 256 and max(heights + widths) <= 384
    assert len(set(heights)) > 1 and len(set(widths)) > 1
    for img in images:
        with Image.open(paths.image_dir / img["file_name"]) as pil:
            assert pil.size == (img["width"], img["height"]) and pil.mode == "RGB"


def test_object_sizes_reach_every_roi_level(synthetic_set):
    """At the model's default input size (shorter side 800) the boxes fall on levels 2..5."""
    data = _load(synthetic_set.instances_json)
    short_side = {img["id"]: min(img["height"], img["width"]) for img in data["images"]}
    scale = np.array([InputConfig().min_size / short_side[a["image_id"]] for a in data["annotations"]])
    boxes = np.array([a["bbox"] for a in data["annotations"]])
    levels = level_for_box(boxes[:, 2] * scale, boxes[:, 3] * scale)
    counts = Counter(levels.tolist())
    assert set(counts) == {2, 3, 4, 5}, counts
    assert min(np.sqrt(boxes[:, 2] * boxes[:, 3])) < 20  # tiny things exist
    assert all(counts[k] >= 3 for k in (2, 3, 4, 5)), counts


def test_every_class_appears_and_counts_per_image(synthetic_set):
    instances = _load(synthetic_set.instances_json)
    panoptic = _load(synthetic_set.panoptic_json)
    assert Counter(a["category_id"] for a in instances["annotations"]).keys() == {1, 2, 3, 4}
    stuff = Counter(s["category_id"] for a in panoptic["annotations"] for s in a["segments_info"]
                    if s["category_id"] > 4)
    assert stuff.keys() == {5, 6, 7, 8}
    per_image = Counter(a["image_id"] for a in instances["annotations"])
    assert set(per_image) == {img["id"] for img in instances["images"]}  # >= 1 thing everywhere
    assert max(per_image.values()) <= 8 and len(set(per_image.values())) >= 4
    regions = Counter(sum(s["category_id"] > 4 for s in a["segments_info"])
                      for a in panoptic["annotations"])
    assert set(regions) >= {1, 2, 3}


def test_occlusion_and_the_drop_rule():
    occluded = truncated = 0
    for index in range(30):
        scene = make_scene(np.random.default_rng([11, index]), height=256, width=256)
        stats = segment_bboxes_and_areas(scene.segment_ids)
        for seg in scene.segments:
            if not seg["isthing"]:
                continue
            area, (x, y, w, h) = stats[seg["id"]]
            assert area >= MIN_VISIBLE_PIXELS and area >= MIN_VISIBLE_FRACTION * seg["full_area"]
            inside = x > 0 and y > 0 and x + w < 256 and y + h < 256
            if area < seg["full_area"] - 2:  # 2 px slack: a pixel of the box may be off the image
                occluded += inside
                truncated += not inside
    assert occluded >= 5, "later shapes should partly cover earlier ones"
    assert truncated >= 1


def test_instances_json_is_valid_coco(synthetic_set, capsys):
    coco = COCO(str(synthetic_set.instances_json))
    capsys.readouterr()
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    assert len(coco.getImgIds()) == 50
    ann_ids = coco.getAnnIds()
    assert len(set(ann_ids)) == len(ann_ids) and 0 not in ann_ids
    for ann in coco.loadAnns(ann_ids):
        img = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        assert ann["area"] == int(mask.sum()) > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]


def test_panoptic_pngs_match_segments_info(synthetic_set):
    panoptic = _load(synthetic_set.panoptic_json)
    instances = _load(synthetic_set.instances_json)
    cats = {c["id"]: c for c in panoptic["categories"]}
    assert {k: v["isthing"] for k, v in cats.items()} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 0, 6: 0, 7: 0, 8: 0}
    assert all(len(c["color"]) == 3 for c in cats.values())
    things_per_image = Counter(a["image_id"] for a in instances["annotations"])
    void_images = 0
    for ann in panoptic["annotations"]:
        with Image.open(synthetic_set.panoptic_dir / ann["file_name"]) as pil:
            ids = rgb_to_id(np.asarray(pil.convert("RGB")))
        stats = segment_bboxes_and_areas(ids)
        void_images += bool((ids == 0).any())
        listed = {s["id"]: s for s in ann["segments_info"]}
        assert set(stats) == set(listed)
        for seg_id, seg in listed.items():
            assert (seg["area"], seg["bbox"]) == stats[seg_id]
            assert seg["iscrowd"] == 0 and seg["category_id"] in cats
        assert sum(cats[s["category_id"]]["isthing"] for s in listed.values()) == things_per_image[ann["image_id"]]
    assert void_images >= 2, "things covered too much should be dropped, their pixels void"


def test_dataset_over_the_synthetic_set(synthetic_set):
    dataset = synthetic_set.dataset()
    assert len(dataset) == 50
    for index in (0, 17, 49):
        sample = dataset[index]
        sample.check()
        assert sample.num_instances >= 1
        # Every thing pixel belongs to exactly one instance; dropped things are void (255).
        assert np.array_equal(sample.semantic == 0, sample.masks.any(axis=0))
        assert sample.masks.sum(axis=0).max() == 1
        assert set(np.unique(sample.semantic).tolist()) <= {0, 1, 2, 3, 4, 255}
        assert sample.labels.min() >= 0 and sample.labels.max() <= 3


def test_segfpn_data_synthetic_writes_a_set_and_refuses_to_overwrite(tmp_path, capsys):
    from segfpn.cli import main

    args = ["data", "synthetic", str(tmp_path / "set"), "--num-images", "3", "--seed", "5", "--size", "64x48",
            "--max-size", "80x64", "--no-progress"]
    assert main(args) == 0
    instances = json.loads((tmp_path / "set" / "annotations" / "instances.json").read_text())
    assert len(instances["images"]) == 3
    assert all(48 <= image["height"] <= 64 and 64 <= image["width"] <= 80 for image in instances["images"])
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "already holds a data set" in err[0]
