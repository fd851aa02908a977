"""segfpn.viz.pyramid: RoIAlign grids, PCA colours and mask probabilities as images, on one scale."""

import cv2
import numpy as np
import pytest

from segfpn.viz.pyramid import GRID_COLORMAP, grid_image, grids_image, mask_probs_image, pca_image


def colormap(value: int) -> np.ndarray:
    return cv2.cvtColor(cv2.applyColorMap(np.array([[value]], np.uint8), GRID_COLORMAP), cv2.COLOR_BGR2RGB)[0, 0]


def test_grid_image_maps_the_given_range_onto_the_colour_map():
    values = np.array([[0.0, 1.0], [2.0, 4.0]])
    image = grid_image(values, value_range=(0.0, 2.0), cell=3)
    assert image.shape == (6, 6, 3) and image.dtype == np.uint8
    assert np.array_equal(image[0, 0], colormap(0)) and np.array_equal(image[0, 3], colormap(128))
    assert np.array_equal(image[3, 0], colormap(255)) and np.array_equal(image[5, 5], colormap(255))  # 4 clipped
    assert np.all(image[:3, :3] == image[0, 0])  # one block per cell
    # Two grids on one scale: equal values, equal colours, whatever else each grid holds.
    a = grid_image(np.array([[1.0, 9.0]]), value_range=(0, 10), cell=1)
    b = grid_image(np.array([[1.0, 2.0]]), value_range=(0, 10), cell=1)
    assert np.array_equal(a[0, 0], b[0, 0])
    assert np.all(grid_image(np.ones((2, 2)), value_range=(1, 1)) == colormap(0))
    assert np.all(grid_image(np.array([[np.nan]]), value_range=(0, 1), cell=1) == 0)


def test_pca_image_scales_each_component_by_its_range():
    components = np.zeros((1, 2, 3))
    components[0, 1] = [1.0, -1.0, 0.5]
    ranges = np.array([[0.0, 1.0], [-1.0, 1.0], [0.0, 2.0]])
    image = pca_image(components, ranges=ranges, cell=1)
    assert image[0, 0].tolist() == [0, 128, 0] and image[0, 1].tolist() == [255, 0, 64]


def test_grids_image_puts_the_levels_side_by_side():
    class Grids:
        mean_abs = np.random.default_rng(0).random((3, 7, 7))
        value_range = (float(mean_abs.min()), float(mean_abs.max()))
        pca = np.random.default_rng(1).random((3, 7, 7, 3))
        pca_range = np.stack([pca.reshape(-1, 3).min(0), pca.reshape(-1, 3).max(0)], axis=1)

    strip = grids_image(Grids, mode="mean_abs", cell=4, gap=2)
    assert strip.shape == (28, 3 * 28 + 2 * 2, 3) and np.all(strip[:, 28:30] == 255)
    assert np.array_equal(strip[:, 30:58], grid_image(Grids.mean_abs[1], value_range=Grids.value_range, cell=4))
    assert grids_image(Grids, mode="pca", cell=2, gap=0).shape == (14, 42, 3)
    with pytest.raises(ValueError, match="mode"):
        grids_image(Grids, mode="max")


def test_mask_probabilities_and_bad_input():
    probs = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    image = mask_probs_image(probs, cell=2)
    assert image.shape == (56, 56, 3)
    assert np.array_equal(image[0, 0], colormap(0)) and np.array_equal(image[-1, -1], colormap(255))
    for kwargs in (dict(cell=0), dict(cell=1.5), dict(cell=True)):
        with pytest.raises(ValueError, match="cell"):
            grid_image(probs, value_range=(0, 1), **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        grid_image(np.zeros(3), value_range=(0, 1))
    with pytest.raises(ValueError, match=r"\[3, 2\]"):
        pca_image(np.zeros((2, 2, 3)), ranges=np.zeros((2, 2)))
