import dataclasses
import time

import numpy as np
import pytest

from segfpn.viz import draw_instances, instance_colors, instance_label, visible_indices
from segfpn.viz.primitives import label_rect_for_box, text_style

H, W = 64, 96  # the conftest image size

MASK_ONLY = dict(show_boxes=False, show_labels=False, show_contours=False)


def test_alpha_zero_leaves_the_image_unchanged(image, instances):
    original = image.copy()
    out = draw_instances(image, instances, alpha=0.0, score_threshold=0.0, **MASK_ONLY)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(image, original)  # the input is never modified
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)


def test_alpha_one_paints_the_mask_color_exactly(image, instances):
    colors = instance_colors(instances)
    out = draw_instances(image, instances, alpha=1.0, score_threshold=0.0, show_boxes=False,
                         show_labels=False)  # the outline is the mask colour too
    for mask, color in zip(instances.masks, colors):
        assert (out[mask] == color).all()


def test_half_alpha_blends(image, instances):
    out = draw_instances(image, instances, alpha=0.5, **MASK_ONLY)
    m = instances.masks[0]
    expected = image[m] * 0.5 + instance_colors(instances)[0] * 0.5
    assert np.abs(out[m].astype(float) - expected).max() <= 1.0


def test_pixels_outside_every_mask_are_unchanged(image, instances):
    out = draw_instances(image, instances, alpha=0.7, score_threshold=0.0, show_boxes=False,
                         show_labels=False, show_contours=True)
    outside = ~np.asarray(instances.masks).any(axis=0)
    np.testing.assert_array_equal(out[outside], image[outside])
    assert not np.array_equal(out, image)


def test_outline_is_drawn_inside_the_mask(image, instances):
    out = draw_instances(image, instances, alpha=0.0, score_threshold=0.0, show_boxes=False,
                         show_labels=False)
    changed = (out != image).any(axis=-1)
    assert changed.any()
    assert not (changed & ~np.asarray(instances.masks).any(axis=0)).any()
    # The border pixel of mask 0 (rows 10..29, cols 10..39) is outlined, its centre is not.
    assert (out[10, 20] == instance_colors(instances)[0]).all()
    np.testing.assert_array_equal(out[20, 25], image[20, 25])


def test_score_threshold_removes_instances(image, instances):
    cat = instances.masks[2]  # score 0.3
    out = draw_instances(image, instances, score_threshold=0.5, alpha=1.0, **MASK_ONLY)
    np.testing.assert_array_equal(out[cat], image[cat])
    assert not np.array_equal(out[instances.masks[1]], image[instances.masks[1]])
    out = draw_instances(image, instances, score_threshold=0.2, alpha=1.0, **MASK_ONLY)
    assert (out[cat] == instance_colors(instances)[2]).all()
    assert visible_indices(instances, score_threshold=0.5).tolist() == [0, 1]
    assert visible_indices(instances, score_threshold=0.95).tolist() == []


def test_class_filter_removes_instances(image, instances):
    out = draw_instances(image, instances, classes=["dog"], alpha=1.0, **MASK_ONLY)
    person, dog = instances.masks[0], instances.masks[1]
    np.testing.assert_array_equal(out[person], image[person])
    assert (out[dog] == instance_colors(instances)[1]).all()
    assert visible_indices(instances, score_threshold=0.0, classes=["cat", "person"]).tolist() == [0, 2]
    assert visible_indices(instances, classes=[]).tolist() == []
    with pytest.raises(ValueError, match="unknown class name.*persn"):
        draw_instances(image, instances, classes=["persn"])


def test_higher_scores_are_drawn_on_top(image, make_instances):
    inst = make_instances(boxes=[[10, 10, 50, 50], [30, 30, 70, 60]], scores=[0.9, 0.8],
                          names=["person", "person"])
    out = draw_instances(image, inst, alpha=1.0, **MASK_ONLY)
    assert (out[35, 35] == instance_colors(inst)[0]).all()


@pytest.mark.parametrize("background, dark_text", [((250, 250, 235), True), ((20, 20, 70), False)])
def test_label_text_contrasts_with_its_box(background, dark_text, make_instances):
    image = np.full((H, W, 3), 128, np.uint8)
    inst = make_instances(boxes=[[20, 30, 60, 60]], scores=[0.93], names=["cat"])
    out = draw_instances(image, inst, show_masks=False, show_boxes=False,
                         colors={17: background})  # 17: COCO id of "cat"
    text = instance_label(inst, 0)
    assert text == "cat 0.93"
    x0, y0, x1, y1 = label_rect_for_box(inst.boxes[0], text_style((H, W)).label_size(text), (H, W))
    patch = out[y0:y1, x0:x1].astype(int)
    is_background = (patch == background).all(axis=-1)
    assert is_background.mean() > 0.5  # a filled box in the label colour...
    luminance = patch[~is_background].mean(axis=-1)
    assert luminance.size > 10  # ...with text on it
    if dark_text:
        assert luminance.min() < 40
    else:
        assert luminance.max() > 215
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    assert (out[outside] == 128).all()


@pytest.mark.parametrize("box", [[0, 0, 30, 20], [70, 0, 96, 15], [0, 50, 40, 64], [-10, -5, 200, 100]])
def test_labels_stay_inside_the_image_for_boxes_at_the_border(image, box, make_instances):
    inst = make_instances(boxes=[box], scores=[0.88], names=["person"],
                          masks=np.zeros((1, H, W), bool))
    style = text_style((H, W))
    x0, y0, x1, y1 = label_rect_for_box(inst.boxes[0], style.label_size("person 0.88"), (H, W))
    assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
    out = draw_instances(image, inst, show_boxes=False, show_masks=False)
    color = instance_colors(inst)[0]
    # The filled label box is there, corners included.
    for y, x in [(y0, x0), (y0, x1 - 1), (y1 - 1, x0), (y1 - 1, x1 - 1)]:
        assert (out[y, x] == color).all()


def test_label_goes_above_the_box_when_there_is_room():
    x0, y0, x1, y1 = label_rect_for_box(np.array([20.0, 40.0, 60.0, 60.0]), (30, 12), (H, W))
    assert (x0, y1) == (20, 40) and y0 == 28
    x0, y0, x1, y1 = label_rect_for_box(np.array([20.0, 5.0, 60.0, 60.0]), (30, 12), (H, W))
    assert y0 == 5  # no room above: inside the box


def test_highlight_dims_everything_else(image, instances):
    out = draw_instances(image, instances, highlight=1, alpha=0.5, **MASK_ONLY)
    outside = ~np.asarray(instances.masks).any(axis=0)
    assert (out[outside].astype(int) <= image[outside].astype(int) * 0.4 + 1).all()
    dog = instances.masks[1]
    normal = draw_instances(image, instances, alpha=0.5, **MASK_ONLY)
    np.testing.assert_array_equal(out[dog], normal[dog])
    # A highlighted detection below the threshold is still drawn.
    out = draw_instances(image, instances, highlight=2, alpha=1.0, **MASK_ONLY)
    assert (out[instances.masks[2]] == instance_colors(instances)[2]).all()
    with pytest.raises(ValueError, match="not a detection index"):
        draw_instances(image, instances, highlight=3)


def test_bad_inputs_give_clear_errors(image, instances):
    with pytest.raises(ValueError, match="original image size"):
        draw_instances(image[:32], instances)
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(image.astype(np.float32), instances)
    with pytest.raises(ValueError, match="alpha"):
        draw_instances(image, instances, alpha=1.5)
    with pytest.raises(ValueError, match="masks must be bool"):
        dataclasses.replace(instances, masks=np.asarray(instances.masks).astype(np.float32))
    gray = draw_instances(image[:, :, 0], instances, show_masks=False)
    assert gray.shape == (H, W, 3)


def test_views_with_negative_strides_are_accepted(image, instances):
    bgr_view = image[:, :, ::-1]  # what OpenCV's cv2.imread(...)[:, :, ::-1] gives
    out = draw_instances(bgr_view, instances)
    np.testing.assert_array_equal(out, draw_instances(np.ascontiguousarray(bgr_view), instances))


def test_empty_instances(image, make_instances):
    inst = make_instances(boxes=np.zeros((0, 4)), scores=[], names=[])
    np.testing.assert_array_equal(draw_instances(image, inst), image)


def test_hundred_masks_on_a_large_image_draw_quickly(make_instances):
    # A loose bound (the target is ~50 ms on 2 cores): it catches per-pixel Python loops.
    h, w, n = 800, 1333, 100
    rng = np.random.default_rng(0)
    xy = rng.integers(0, [w - 300, h - 300], (n, 2))
    size = rng.integers(20, 300, (n, 2))
    boxes = np.concatenate([xy, xy + size], axis=1)
    masks = np.zeros((n, h, w), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    inst = make_instances(boxes=boxes, scores=np.linspace(0.99, 0.6, n), names=["person"] * n,
                          masks=masks, image_size=(h, w))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    draw_instances(image, inst)
    start = time.perf_counter()
    draw_instances(image, inst)
    assert time.perf_counter() - start < 1.0
