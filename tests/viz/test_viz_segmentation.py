import numpy as np
import pytest

from segfpn.categories import coco_panoptic_separated_stuff, coco_things
from segfpn.structures import PanopticSegmentation, Segment, SemanticSegmentation
from segfpn.viz import (class_color, draw_panoptic, draw_semantic, segment_colors,
                        semantic_colors)
from segfpn.viz.primitives import representative_point

H, W = 64, 96
PLAIN = dict(show_labels=False, show_contours=False)
STUFF = coco_panoptic_separated_stuff()
STUFF_NAMES = [c.name for c in STUFF]
SKY = STUFF_NAMES.index("sky-other-merged")
GRASS = STUFF_NAMES.index("grass-merged")


@pytest.fixture
def semantic() -> SemanticSegmentation:
    labels = np.full((H, W), SKY, np.uint8)
    labels[32:] = GRASS
    labels[40:50, 10:30] = 0  # the merged "things" class
    labels[:5, :5] = 255  # ignore
    return SemanticSegmentation(labels=labels, class_names=STUFF_NAMES,
                                category_ids=[c.id for c in STUFF])


def _segment(seg_id, name, **kw):
    things = {c.name: c for c in coco_things()}
    stuff = {c.name: c for c in STUFF}
    cat = things.get(name) or stuff[name]
    return Segment(id=seg_id, category_id=cat.id, label=0, class_name=name, isthing=cat.isthing,
                   area=0, **kw)


@pytest.fixture
def panoptic() -> PanopticSegmentation:
    ids = np.zeros((H, W), np.int32)  # void where nothing is set
    ids[:30] = 1  # sky
    ids[40:] = 2  # grass
    ids[10:50, 20:40] = 3  # a person over both
    ids[10:50, 50:70] = 4  # another person
    segments = [_segment(1, "sky-other-merged"), _segment(2, "grass-merged"),
                _segment(3, "person", score=0.9, instance=0, level=3),
                _segment(4, "person", score=0.8, instance=1, level=3)]
    return PanopticSegmentation(segment_ids=ids, segments=segments)


def test_semantic_alpha_one_paints_class_colors(image, semantic):
    out = draw_semantic(image, semantic, alpha=1.0, **PLAIN)
    sky_id = STUFF[SKY].id
    assert (out[10:30, 10:] == class_color(sky_id, "sky-other-merged")).all()
    assert (out[55:, 40:] == STUFF[GRASS].color).all()
    assert (out[40:50, 10:30] == (128, 128, 128)).all()  # "things": neutral grey
    np.testing.assert_array_equal(out[:5, :5], image[:5, :5])  # ignore label: untouched
    assert semantic_colors(semantic).shape == (54, 3)


def test_semantic_alpha_zero_and_color_override(image, semantic):
    np.testing.assert_array_equal(draw_semantic(image, semantic, alpha=0.0, **PLAIN), image)
    out = draw_semantic(image, semantic, alpha=1.0, colors={STUFF[SKY].id: (1, 2, 3)}, **PLAIN)
    assert (out[10:30, 10:] == (1, 2, 3)).all()


def test_semantic_labels_and_contours(image, semantic):
    out = draw_semantic(image, semantic, alpha=0.0, show_contours=False)
    changed = (out != image).any(axis=-1)
    assert changed[:32].any() and changed[32:].any()  # sky and grass both labelled
    out = draw_semantic(image, semantic, alpha=0.0, show_labels=False)
    edges = (out != image).any(axis=-1)
    assert edges[31, 50] and edges[32, 50] and not edges[20, 50]


def test_semantic_wrong_size(image, semantic):
    with pytest.raises(ValueError, match="original image size"):
        draw_semantic(image[:10], semantic)


def test_panoptic_alpha_one_paints_segment_colors_and_keeps_void(image, panoptic):
    out = draw_panoptic(image, panoptic, alpha=1.0, **PLAIN)
    colors = segment_colors(panoptic)
    for seg in panoptic.segments:
        assert (out[panoptic.segment_ids == seg.id] == colors[seg.id]).all()
    void = panoptic.segment_ids == 0
    np.testing.assert_array_equal(out[void], image[void])
    # Two people: both reddish, but told apart.
    assert colors[3] == class_color(1, "person") and colors[4] != colors[3]


def test_panoptic_large_segment_ids(image, panoptic):
    # COCO panoptic PNG ids (R + 256 G + 256^2 B) are large: the same drawing.
    big = {1: 5_000_001, 2: 9_999_999, 3: 12_345_678, 4: 16_000_000}
    ids = panoptic.segment_ids.copy()
    for old, new in big.items():
        ids[panoptic.segment_ids == old] = new
    segments = [_segment(big[s.id], s.class_name) for s in panoptic.segments]
    other = PanopticSegmentation(segment_ids=ids, segments=segments)
    np.testing.assert_array_equal(draw_panoptic(image, other), draw_panoptic(image, panoptic))


def test_panoptic_unlisted_ids_are_void(image, panoptic):
    panoptic.segment_ids[0, :] = 77
    out = draw_panoptic(image, panoptic, alpha=1.0, **PLAIN)
    np.testing.assert_array_equal(out[0], image[0])


def test_panoptic_highlight_dims_the_rest(image, panoptic):
    normal = draw_panoptic(image, panoptic, alpha=0.5, **PLAIN)
    out = draw_panoptic(image, panoptic, alpha=0.5, highlight_segment_id=3, **PLAIN)
    person = panoptic.segment_ids == 3
    inner = np.zeros_like(person)
    inner[20:40, 28:32] = True  # far from the thick outline
    np.testing.assert_array_equal(out[inner], normal[inner])
    rest = ~person
    assert (out[rest].astype(int) <= normal[rest].astype(int) * 0.4 + 1).all()
    assert (out[10:50, 20][:, None] == segment_colors(panoptic)[3]).all()  # outlined
    with pytest.raises(ValueError, match="not a segment"):
        draw_panoptic(image, panoptic, highlight_segment_id=99)


def test_panoptic_labels_sit_inside_their_regions():
    image = np.full((H, W, 3), 100, np.uint8)
    ids = np.zeros((H, W), np.int32)
    ids[8:56, 30:90] = 1
    pan = PanopticSegmentation(segment_ids=ids, segments=[_segment(1, "person")])
    out = draw_panoptic(image, pan, alpha=0.0, show_contours=False, min_label_area=1)
    ys, xs = np.nonzero((out != image).any(axis=-1))
    assert ys.size > 0
    assert 30 <= xs.min() and xs.max() < 90 and 8 <= ys.min() and ys.max() < 56
    assert abs(xs.mean() - 60) < 4 and abs(ys.mean() - 32) < 4


def test_representative_point():
    mask = np.zeros((H, W), bool)
    mask[10:31, 20:61] = True
    x, y, dist = representative_point(mask)
    assert (x, y) == (40, 20) and dist == pytest.approx(11, abs=0.5)
    # An L shape: the point is inside, in the thick part.
    mask = np.zeros((H, W), bool)
    mask[0:60, 0:10] = True
    mask[40:60, 0:90] = True
    x, y, _ = representative_point(mask)
    assert mask[y, x] and y >= 40
    assert representative_point(np.zeros((H, W), bool)) is None
