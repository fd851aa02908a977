import numpy as np
import pytest

from segfpn.categories import coco_panoptic_categories
from segfpn.viz import class_color, contrast_ratio, instance_colors, jitter_color, text_color_for


def test_class_color_is_the_coco_color_when_known():
    assert class_color(1, "person") == (220, 20, 60)
    assert class_color(1) == (220, 20, 60)
    for c in coco_panoptic_categories():
        assert class_color(c.id, c.name) == c.color


def test_unknown_class_color_is_fixed_across_runs():
    # A golden value: Python's salted hash() would give a different colour in every process.
    assert class_color(999, "my-widget") == (203, 168, 67)
    # A COCO id with another name is a custom category: not the COCO colour.
    assert class_color(1, "not-person") != (220, 20, 60)
    assert class_color(0, "things") == (128, 128, 128)


def test_class_colors_are_distinct():
    colors = {class_color(c.id, c.name) for c in coco_panoptic_categories()}
    assert len(colors) == 133
    made_up = {class_color(1000 + i, f"class-{i}") for i in range(50)}
    assert len(made_up) == 50


def test_instance_colors_differ_within_a_class_and_stay_recognisable(make_instances):
    inst = make_instances(boxes=[[0, 0, 5, 5]] * 8, scores=np.linspace(0.9, 0.5, 8),
                          names=["person"] * 6 + ["dog"] * 2)
    colors = instance_colors(inst).astype(int)
    assert colors.dtype == np.int64 and colors.shape == (8, 3)
    assert tuple(colors[0]) == class_color(1, "person")  # first of a class: the class colour
    people = colors[:6]
    dists = np.linalg.norm(people[:, None] - people[None], axis=-1)
    assert dists[~np.eye(6, dtype=bool)].min() > 25
    assert tuple(colors[6]) == class_color(18, "dog")
    # Deterministic, and by="class" gives every detection its class colour.
    np.testing.assert_array_equal(instance_colors(inst), instance_colors(inst))
    assert (instance_colors(inst, by="class")[:6] == (220, 20, 60)).all()
    with pytest.raises(ValueError, match="by must be"):
        instance_colors(inst, by="rainbow")


def test_jitter_never_clips_to_the_same_color():
    for base in [(255, 255, 255), (0, 0, 0), (220, 20, 60)]:
        variants = {jitter_color(base, k) for k in range(10)}
        assert len(variants) == 10


def test_text_color_contrasts_with_any_background():
    assert text_color_for((255, 255, 255)) == (0, 0, 0)
    assert text_color_for((250, 240, 100)) == (0, 0, 0)
    assert text_color_for((0, 0, 0)) == (255, 255, 255)
    assert text_color_for((0, 0, 142)) == (255, 255, 255)
    rng = np.random.default_rng(1)
    for bg in rng.integers(0, 256, (300, 3)):
        bg = tuple(int(v) for v in bg)
        assert contrast_ratio(text_color_for(bg), bg) >= 4.5
