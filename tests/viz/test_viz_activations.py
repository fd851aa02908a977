import cv2
import numpy as np
import pytest

from segfpn.viz import activation_map, overlay_activation, pca_components, valid_cells


def test_channel_mode_returns_the_only_nonzero_channel():
    feature = np.zeros((8, 4, 5), np.float32)
    feature[3] = np.arange(20, dtype=np.float32).reshape(4, 5) - 5
    raw = activation_map(feature, mode="channel", channel=3, normalize=False)
    np.testing.assert_array_equal(raw, feature[3])
    norm = activation_map(feature, mode="channel", channel=3)
    assert norm.dtype == np.float32 and norm.min() == 0.0 and norm.max() == 1.0
    np.testing.assert_allclose(norm, np.arange(20).reshape(4, 5) / 19, atol=1e-6)
    # Another channel is all zeros: a constant map normalises to zeros, not NaN.
    np.testing.assert_array_equal(activation_map(feature, mode="channel", channel=0), 0.0)
    # One non-zero channel: l2 is |f|, max is max(f, 0) summed with zeros.
    np.testing.assert_allclose(activation_map(feature, mode="l2", normalize=False), np.abs(feature[3]))
    np.testing.assert_allclose(activation_map(feature, mode="max", normalize=False),
                               np.maximum(feature[3], 0))


def test_mean_abs_max_l2_known_values():
    feature = np.array([[[1.0, -2.0]], [[-3.0, 0.0]], [[2.0, 4.0]]], np.float32)  # [3, 1, 2]
    np.testing.assert_allclose(activation_map(feature, mode="mean_abs", normalize=False),
                               [[2.0, 2.0]])
    np.testing.assert_allclose(activation_map(feature, mode="max", normalize=False), [[2.0, 4.0]])
    np.testing.assert_allclose(activation_map(feature, mode="l2", normalize=False),
                               [[np.sqrt(14), np.sqrt(20)]], rtol=1e-6)
    np.testing.assert_allclose(activation_map(feature, mode="l2"), [[0.0, 1.0]])
    # mean_abs normalised over a map with three different values.
    f = np.stack([np.array([[0.0, 1.0, -3.0]]), np.array([[0.0, -1.0, 1.0]])]).astype(np.float32)
    np.testing.assert_allclose(activation_map(f, mode="mean_abs"), [[0.0, 0.5, 1.0]])


def test_clip_percentile_ignores_an_outlier():
    f = np.tile(np.linspace(0, 1, 100, dtype=np.float32), (1, 1, 1)).reshape(1, 10, 10)
    f[0, 0, 0] = 1000.0
    robust = activation_map(f, mode="channel", channel=0, clip_percentile=2.0)
    plain = activation_map(f, mode="channel", channel=0)
    assert robust[5, 0] > 0.4 and plain[5, 0] < 0.01
    assert robust.max() == 1.0 and robust.min() == 0.0


def test_pca_puts_a_rank_one_structure_in_the_first_component():
    rng = np.random.default_rng(0)
    c, h, w = 16, 12, 10
    pattern = np.zeros((h, w), np.float32)
    pattern[3:8, 2:6] = 1.0
    direction = rng.normal(size=c).astype(np.float32)
    feature = direction[:, None, None] * pattern[None] * 5.0
    feature += rng.normal(scale=0.01, size=feature.shape).astype(np.float32)
    comps = pca_components(feature)
    assert comps.shape == (h, w, 3)
    corr = np.corrcoef(comps[:, :, 0].ravel(), pattern.ravel())[0, 1]
    assert corr > 0.999  # positive: the sign rule makes the strongest response bright
    # Same components as the SVD of the centred [h*w, C] matrix.
    x = feature.reshape(c, -1).T.astype(np.float64)
    x -= x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    for k in range(3):
        assert abs(np.corrcoef(comps[:, :, k].ravel(), u[:, k])[0, 1]) > 0.999
    rgb = activation_map(feature, mode="pca")
    assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3)
    assert rgb[5, 3, 0] == 255 and rgb[0, 9, 0] < 10


def test_pca_sign_is_deterministic_and_rank_deficient_maps_work():
    rng = np.random.default_rng(1)
    feature = rng.normal(size=(8, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(activation_map(feature, mode="pca"),
                                  activation_map(-feature, mode="pca"))
    # Two channels only: the third component is empty (zeros), not an error.
    comps = pca_components(feature[:2])
    np.testing.assert_array_equal(comps[:, :, 2], 0.0)
    assert activation_map(feature[:2], mode="pca").shape == (6, 7, 3)


def test_bad_channel_and_mode_raise_clear_errors():
    feature = np.zeros((256, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"256 channels.*0\.\.255"):
        activation_map(feature, mode="channel", channel=256)
    with pytest.raises(ValueError, match=r"0\.\.255"):
        activation_map(feature, mode="channel", channel=-1)
    with pytest.raises(ValueError, match="needs channel"):
        activation_map(feature, mode="channel")
    with pytest.raises(ValueError, match="unknown activation mode 'mean'.*mean_abs"):
        activation_map(feature, mode="mean")
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        activation_map(feature[0], mode="max")
    activation_map(feature, mode="max", channel=999)  # channel is ignored by other modes


def test_overlay_has_the_original_size_and_crops_the_padding():
    image = np.full((50, 75, 3), 200, np.uint8)  # original, resized to input 100 x 150
    input_size, stride = (100, 150), 8
    rows, cols = valid_cells(input_size, stride)
    assert (rows, cols) == (13, 19)
    # Padded to 112 x 160 -> a 14 x 20 map; the padding cells are red, the valid ones blue.
    act = np.zeros((14, 20, 3), np.uint8)
    act[...] = (255, 0, 0)
    act[:rows, :cols] = (0, 0, 255)
    for interpolation in ("nearest", "bilinear"):
        out = overlay_activation(image, act, input_size=input_size, stride=stride, alpha=1.0,
                                 interpolation=interpolation)
        assert out.shape == (50, 75, 3) and out.dtype == np.uint8
        assert (out == (0, 0, 255)).all()
    scalar = np.zeros((14, 20), np.float32)
    scalar[rows:] = 1.0
    scalar[:, cols:] = 1.0
    out = overlay_activation(image, scalar, input_size=input_size, stride=stride, alpha=1.0)
    cold = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    assert (out == cold).all()  # RGB, and no padding cell anywhere
    np.testing.assert_array_equal(
        overlay_activation(image, scalar, input_size=input_size, stride=stride, alpha=0.0), image)


def test_overlay_maps_cells_to_pixels():
    # No resize (original = input = 32 x 48), stride 4: pixel (y, x) shows cell (y // 4, x // 4).
    image = np.zeros((32, 48, 3), np.uint8)
    cells = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    out = overlay_activation(image, cells, input_size=(32, 48), stride=4, alpha=1.0)
    ys, xs = np.mgrid[0:32, 0:48]
    np.testing.assert_array_equal(out, cells[ys // 4, xs // 4])


def test_overlay_rejects_a_map_too_small_for_the_input():
    image = np.zeros((50, 75, 3), np.uint8)
    with pytest.raises(ValueError, match="13x19 cells, got 10x19"):
        overlay_activation(image, np.zeros((10, 19), np.float32), input_size=(100, 150), stride=8)
    with pytest.raises(ValueError, match="interpolation"):
        overlay_activation(image, np.zeros((13, 19), np.float32), input_size=(100, 150), stride=8,
                           interpolation="cubic")
