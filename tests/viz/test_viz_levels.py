import pathlib

import numpy as np
import pytest

import segfpn.viz
from segfpn.viz import (LEVEL_COLORS, draw_levels, level_counts, level_for_box,
                        level_rule_text)

H, W = 64, 96
NO_EXTRAS = dict(show_labels=False, show_legend=False)


@pytest.mark.parametrize("side, level", [(224, 4), (112, 3), (56, 2), (448, 5), (10, 2),
                                         (2000, 5), (0, 2), (223, 3), (447, 4)])
def test_level_for_square_boxes(side, level):
    assert int(level_for_box(side, side)) == level


def test_level_for_box_matches_the_models_epsilon():
    # floor(4 + log2(s / 224) + 1e-6), as torchvision and segfpn.model.poolers: a box a hair
    # under 224 px still reads p4.
    side = 224 * (1 - 1e-7)
    assert int(level_for_box(side, side)) == 4
    assert int(level_for_box(side, side, eps=0.0)) == 3


def test_level_for_box_is_vectorised_and_uses_sqrt_area():
    w = np.array([224, 448, 112, 50])
    h = np.array([224, 112, 448, 50])
    np.testing.assert_array_equal(level_for_box(w, h), [4, 4, 4, 2])
    assert level_for_box(w, h).dtype == np.int64


def test_level_counts():
    assert level_counts([2, 3, 3, 5, 5, 5]) == {2: 1, 3: 2, 4: 0, 5: 3}
    assert level_counts(np.array([], np.int64)) == {2: 0, 3: 0, 4: 0, 5: 0}
    assert level_counts([6]) == {2: 0, 3: 0, 4: 0, 5: 0, 6: 1}


def test_level_rule_text():
    text = level_rule_text()
    assert "\n" not in text and "224" in text and "log2" in text and "p2" in text and "p5" in text


def test_boxes_are_drawn_in_their_level_color(image, instances):
    out = draw_levels(image, instances, score_threshold=0.0, **NO_EXTRAS)
    for (x0, y0, x1, y1), level in zip(instances.boxes.astype(int), instances.levels):
        assert (out[(y0 + y1) // 2, x0] == LEVEL_COLORS[int(level)]).all()  # left edge
        assert (out[y0, (x0 + x1) // 2] == LEVEL_COLORS[int(level)]).all()  # top edge
    centre = out[20, 25]
    np.testing.assert_array_equal(centre, image[20, 25])  # boxes only, no fill


def test_box_levels_and_custom_colors(image, instances):
    instances.box_levels[:] = 4
    out = draw_levels(image, instances, source="box", colors={4: (1, 2, 3)}, **NO_EXTRAS)
    assert (out[20, 10] == (1, 2, 3)).all()
    with pytest.raises(ValueError, match="source"):
        draw_levels(image, instances, source="roi")


def test_threshold_and_mask_fill(image, instances):
    out = draw_levels(image, instances, score_threshold=0.5, mask_alpha=1.0, **NO_EXTRAS)
    cat = instances.masks[2]  # score 0.3
    np.testing.assert_array_equal(out[cat], image[cat])
    assert (out[instances.masks[0]] == LEVEL_COLORS[2]).all()


def test_legend_shows_every_level(instances):
    image = np.full((H * 3, W * 3, 3), 255, np.uint8)
    instances.boxes[:] = [[150, 100, 200, 150]] * 3  # far from the top-left corner
    instances.masks = np.zeros((3, H * 3, W * 3), bool)
    out = draw_levels(image, instances, score_threshold=0.0, show_labels=False)
    corner = out[: H * 3 // 2, : W * 3 // 2]
    for color in LEVEL_COLORS.values():  # a swatch per level, even for levels with no RoI
        assert (corner == color).all(axis=-1).sum() >= 9
    assert (corner < 128).all(axis=-1).any()  # the dark panel


def test_viz_does_not_import_torch_or_gradio():
    for path in pathlib.Path(segfpn.viz.__file__).parent.glob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "import gradio" not in source, path


def test_public_api():
    for name in segfpn.viz.__all__:
        assert hasattr(segfpn.viz, name), name
