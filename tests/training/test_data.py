"""Training data: targets conversion, augmentation, deterministic order, broken images."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch

from segfpn.config import InputConfig
from segfpn.data.coco import CocoDataset
from segfpn.data.sample import Sample
from segfpn.training.data import (TrainingSampler, TrainingSet, categories_from_annotations, collate,
                                  sample_to_example)

INPUT = InputConfig(min_size=64, max_size=128)


def _sample() -> Sample:
    """A 40x60 image with one 10x20 box-shaped instance at x 5..25, y 10..20 and a semantic map."""
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[10:20, 5:25] = 255
    masks = np.zeros((1, 40, 60), dtype=bool)
    masks[0, 10:20, 5:25] = True
    semantic = np.ones((40, 60), dtype=np.int64)
    semantic[masks[0]] = 0
    semantic[:, 50:] = 255
    return Sample(image=image, boxes=np.array([[5, 10, 25, 20]], dtype=np.float32), labels=np.array([2]),
                  masks=masks, semantic=semantic, image_id=7, file_name="x.png")


def test_targets_follow_the_resize():
    example = sample_to_example(_sample(), INPUT)
    assert example.image.shape == (3, 64, 96)
    t = example.targets
    torch.testing.assert_close(t.boxes, torch.tensor([[8.0, 16.0, 40.0, 32.0]]))
    assert t.masks.shape == (1, 64, 96) and t.masks.dtype == torch.bool
    ys, xs = torch.nonzero(t.masks[0], as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (8, 40, 16, 32)
    assert t.semantic.shape == (64, 96) and t.semantic.dtype == torch.int64
    assert set(t.semantic.unique().tolist()) == {0, 1, 255}
    assert (t.semantic[:, 80:] == 255).all() and (t.semantic[t.masks[0]] == 0).all()
    assert t.labels.tolist() == [2]


def test_flip_moves_boxes_masks_and_semantic_together():
    plain = sample_to_example(_sample(), INPUT)
    flipped = sample_to_example(_sample(), INPUT, flip=True)
    torch.testing.assert_close(flipped.targets.boxes, torch.tensor([[96 - 40.0, 16.0, 96 - 8.0, 32.0]]))
    assert torch.equal(flipped.targets.masks, plain.targets.masks.flip(-1))
    assert torch.equal(flipped.targets.semantic, plain.targets.semantic.flip(-1))
    torch.testing.assert_close(flipped.image, plain.image.flip(-1), atol=1e-5, rtol=0)


def test_collate_pads_and_keeps_sizes():
    a = sample_to_example(_sample(), INPUT)
    b = sample_to_example(_sample(), dataclasses.replace(INPUT, min_size=32))
    batch = collate([a, b], size_divisibility=32)
    assert batch.images.tensor.shape == (2, 3, 64, 96)
    assert batch.images.image_sizes == [(64, 96), (32, 48)]
    assert batch.image_ids == [7, 7]


def test_sampler_splits_epochs_over_ranks_and_resumes():
    ranks = [TrainingSampler(10, seed=4, rank=r, world_size=2) for r in range(2)]
    streams = [[next(it) for _ in range(10)] for it in (iter(s) for s in ranks)]
    epoch0 = [i for s in streams for i, e in s[:5]]
    assert sorted(epoch0) == list(range(10))  # the two ranks share epoch 0 without overlap
    assert all(e == 1 for s in streams for _, e in s[5:])
    resumed = iter(TrainingSampler(10, seed=4, rank=1, world_size=2, start=7))
    assert [next(resumed) for _ in range(3)] == streams[1][7:10]
    assert TrainingSampler(10, seed=5).epoch_order(0) != TrainingSampler(10, seed=4).epoch_order(0)


def test_augmentation_is_a_function_of_seed_epoch_and_index(synthetic_tiny):
    from segfpn.data.synthetic import synthetic_categories

    dataset = CocoDataset(synthetic_tiny / "images", categories=synthetic_categories(),
                          instances_json=synthetic_tiny / "annotations" / "instances.json")
    training = TrainingSet(dataset, INPUT, min_sizes=(64, 96, 128), max_size=200, flip_prob=0.5, seed=1)
    first = [training[(i, 0)].image.shape for i in range(8)]
    assert first == [training[(i, 0)].image.shape for i in range(8)]
    assert len({s[-2:] for s in first}) > 1  # several scales drawn
    assert first != [training[(i, 1)].image.shape for i in range(8)]


def test_broken_images_and_annotations_are_skipped_with_warnings(tmp_path, caplog, coco_mini_dir):
    COCO_MINI = coco_mini_dir
    instances = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    images = instances["images"]
    good = images[0]
    missing = dict(good, id=999, file_name="does_not_exist.jpg")
    instances["images"] = [missing, *images]
    bad_ann = dict(instances["annotations"][0], id=123456, segmentation={"size": [1, 1], "counts": "x"})
    instances["annotations"].append(bad_ann)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    categories = categories_from_annotations(instances=instances, panoptic=None)
    dataset = CocoDataset(COCO_MINI / "images", categories=categories, instances_json=path)
    training = TrainingSet(dataset, InputConfig(min_size=96, max_size=128), min_sizes=(96,), max_size=128,
                           flip_prob=0.0, seed=0, use_semantic=False)
    with caplog.at_level(logging.WARNING):
        example = training[(0, 0)]  # image 999 is missing: the next one takes its place
        training[(images.index(good) + 1, 0)]
    assert example.image_id == good["id"] and len(example.targets.boxes) > 0
    text = caplog.text
    assert "does_not_exist.jpg" in text and "skipped" in text
    assert "123456" in text


def test_categories_from_coco_files(coco_mini_dir):
    COCO_MINI = coco_mini_dir
    instances = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    panoptic = json.loads((COCO_MINI / "annotations" / "panoptic_val2017.json").read_text())
    categories = categories_from_annotations(instances=instances, panoptic=panoptic)
    assert len(categories.things) == 80 and len(categories.stuff) == 54
    assert categories.stuff[0].id == 0 and categories.stuff[0].isthing
    with pytest.raises(ValueError):
        categories_from_annotations(instances={"categories": []}, panoptic=None)
