"""Flip, multi-scale size choice and collate."""

import numpy as np
import pytest

from segfpn.data.sample import Sample
from segfpn.data.transforms import (DEFAULT_MIN_SIZES, choose_min_size, collate, horizontal_flip,
                                    random_horizontal_flip)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy")


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return np.float32([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


@pytest.fixture(scope="module")
def sample(synthetic_set):
    dataset = synthetic_set.dataset()
    # an image with several instances, its boxes being the tight boxes of the masks
    best = max((dataset[i] for i in range(8)), key=lambda s: s.num_instances)
    assert best.num_instances >= 4
    return best


def test_flipped_box_equals_box_of_flipped_mask(sample):
    for box, mask in zip(sample.boxes, sample.masks):
        np.testing.assert_array_equal(box, _tight_box(mask))
    flipped = horizontal_flip(sample)
    flipped.check()
    for box, mask in zip(flipped.boxes, flipped.masks):
        np.testing.assert_array_equal(box, _tight_box(mask))
    width = sample.image_size[1]
    np.testing.assert_array_equal(flipped.boxes[:, [0, 2]], width - sample.boxes[:, [2, 0]])
    np.testing.assert_array_equal(flipped.boxes[:, [1, 3]], sample.boxes[:, [1, 3]])


def test_flip_moves_everything_together(sample):
    flipped = horizontal_flip(sample)
    np.testing.assert_array_equal(flipped.image, sample.image[:, ::-1])
    np.testing.assert_array_equal(flipped.semantic, sample.semantic[:, ::-1])
    np.testing.assert_array_equal(flipped.labels, sample.labels)
    # the semantic "things" pixels still coincide with the instance masks
    assert np.array_equal(flipped.semantic == 0, flipped.masks.any(axis=0))
    twice = horizontal_flip(flipped)
    for name in ("image", "boxes", "labels", "masks", "semantic"):
        np.testing.assert_array_equal(getattr(twice, name), getattr(sample, name))
    assert flipped.image_id == sample.image_id and flipped.file_name == sample.file_name


def test_flip_leaves_the_input_alone_and_handles_no_instances():
    image = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    empty = Sample(image=image, boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64),
                   masks=np.zeros((0, 2, 5), bool), semantic=None, image_id=1, file_name="x.png")
    flipped = horizontal_flip(empty)
    flipped.check()
    assert flipped.semantic is None and flipped.boxes.shape == (0, 4)
    np.testing.assert_array_equal(empty.image, np.arange(30, dtype=np.uint8).reshape(2, 5, 3))

    one = Sample(image=image, boxes=np.float32([[1, 0, 3, 2]]), labels=np.int64([2]),
                 masks=np.zeros((1, 2, 5), bool), semantic=np.zeros((2, 5), np.int64),
                 image_id=2, file_name="y.png")
    one.masks[0, :, 1:3] = True
    out = horizontal_flip(one)
    np.testing.assert_array_equal(out.boxes, np.float32([[2, 0, 4, 2]]))
    np.testing.assert_array_equal(one.boxes, np.float32([[1, 0, 3, 2]]))
    assert out.masks[0, :, 2:4].all() and out.masks.sum() == 4


def test_random_flip_uses_the_generator(sample):
    rng = np.random.default_rng(0)
    assert random_horizontal_flip(sample, rng, probability=0.0) is sample
    assert random_horizontal_flip(sample, rng, probability=1.0) is not sample
    draws = [random_horizontal_flip(sample, np.random.default_rng(seed)) is sample for seed in range(40)]
    again = [random_horizontal_flip(sample, np.random.default_rng(seed)) is sample for seed in range(40)]
    assert draws == again and 5 < sum(draws) < 35
    with pytest.raises(ValueError, match="probability"):
        random_horizontal_flip(sample, rng, probability=1.5)


def test_choose_min_size():
    rng = np.random.default_rng(0)
    picks = [choose_min_size(rng) for _ in range(200)]
    assert set(picks) == set(DEFAULT_MIN_SIZES)
    assert all(isinstance(p, int) for p in picks)
    assert choose_min_size(rng, sizes=(512,)) == 512
    with pytest.raises(ValueError, match="empty"):
        choose_min_size(rng, sizes=())


def test_collate_keeps_a_list(sample):
    batch = collate((sample, sample))
    assert isinstance(batch, list) and len(batch) == 2 and batch[0] is sample
