"""The pyramid inspector: one feature map [C, h, w] summarised as an image and laid over the photo.

A level-l map has stride 2**l relative to the *resized* network input, and covers the *padded*
input (sides rounded up to a multiple of the largest stride), so its last rows and columns may
lie over padding. :func:`overlay_activation` crops those away before upsampling.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from segfpn.viz.primitives import as_rgb_image, check_alpha

#: The summaries :func:`activation_map` knows.
ACTIVATION_MODES = ("mean_abs", "max", "l2", "channel", "pca")


def _normalize(x: np.ndarray, clip_percentile: float = 0.0) -> np.ndarray:
    """Min-max to [0, 1] (float32), or between the p-th and (100-p)-th percentiles with values
    beyond them clipped; a constant map becomes all zeros."""
    if clip_percentile > 0.0:
        lo, hi = (float(v) for v in np.percentile(x, [clip_percentile, 100.0 - clip_percentile]))
    else:
        lo, hi = float(np.min(x)), float(np.max(x))
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float32)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def pca_components(feature: np.ndarray, *, num_components: int = 3,
                   max_samples: int = 4096) -> np.ndarray:
    """float32 [h, w, num_components]: the projection of every position's C-vector onto the
    first principal components of the positions' vectors.

    The components are the leading right singular vectors of the centred [h*w, C] matrix X,
    computed as the eigenvectors of the C x C matrix X^T X (the same vectors, far cheaper when
    h*w >> C). On large maps they are fitted on at most ``max_samples`` positions taken on a
    regular grid (deterministic), then every position is projected. Each component's sign is
    fixed so that its largest-magnitude projection is positive; components beyond the rank of
    X are zero.
    """
    c, h, w = feature.shape
    x = feature.reshape(c, h * w)
    step = max(1, -(-(h * w) // max_samples))
    sample = x[:, ::step].T.astype(np.float64)
    mean = sample.mean(axis=0)
    sample -= mean
    eigenvalues, eigenvectors = np.linalg.eigh(np.dot(sample.T, sample))  # ascending
    order = np.argsort(eigenvalues)[::-1][:num_components]
    scale = max(float(eigenvalues.max(initial=0.0)), 1e-30)
    out = np.zeros((num_components, h * w), dtype=np.float32)
    for k, j in enumerate(order):
        if eigenvalues[j] <= 1e-10 * scale:
            continue  # no variance left in this direction: leave the component at zero
        axis = eigenvectors[:, j].astype(np.float32)
        scores = np.dot(axis, x) - np.float32(axis @ mean)
        if scores[np.argmax(np.abs(scores))] < 0:
            scores = -scores
        out[k] = scores
    return out.reshape(num_components, h, w).transpose(1, 2, 0)


def activation_map(feature: np.ndarray, *, mode: str = "mean_abs", channel: int | None = None,
                   normalize: bool = True, clip_percentile: float = 0.0) -> np.ndarray:
    """Summarise a feature map float32 [C, h, w] as an image.

    mode:
      "mean_abs": mean over channels of |f|;  "max": max over channels of f;
      "l2": Euclidean norm over channels;     "channel": f[channel] alone;
      "pca": the first three principal components over channels as RGB.
    ``channel`` is ignored by the other modes (so a UI can always pass its slider's value).
    ``clip_percentile`` p > 0 normalises between the p-th and (100-p)-th percentiles instead
    of min and max (clipping outliers, which otherwise squash the rest of the map to one colour).
    Returns float32 [h, w], min-max normalised to [0, 1] (a constant map gives zeros; raw
    values with ``normalize=False``), or for "pca" uint8 [h, w, 3], each component min-max
    normalised to 0..255.
    Raises ValueError for an unknown mode, a missing or out-of-range channel, a bad shape.
    """
    f = np.asarray(feature)
    if f.ndim != 3:
        raise ValueError(f"feature must be [C, h, w], got shape {f.shape}")
    if not 0.0 <= clip_percentile < 50.0:
        raise ValueError(f"clip_percentile must be in [0, 50), got {clip_percentile}")
    if mode not in ACTIVATION_MODES:
        raise ValueError(f"unknown activation mode {mode!r}; choose one of {ACTIVATION_MODES}")
    num_channels = f.shape[0]
    if mode == "channel":
        if channel is None:
            raise ValueError(f"mode 'channel' needs channel= (0..{num_channels - 1})")
        if not 0 <= int(channel) < num_channels:
            raise ValueError(f"channel {channel} is out of range: this feature map has "
                             f"{num_channels} channels, valid indices are 0..{num_channels - 1}")
    f = f.astype(np.float32, copy=False)

    if mode == "pca":
        comps = pca_components(f)
        channels = [np.rint(_normalize(comps[:, :, k], clip_percentile) * 255.0) for k in range(3)]
        return np.stack(channels, axis=-1).astype(np.uint8)
    if mode == "mean_abs":
        out = np.abs(f).mean(axis=0)
    elif mode == "max":
        out = f.max(axis=0)
    elif mode == "l2":
        out = np.sqrt(np.square(f).sum(axis=0))
    else:
        out = f[int(channel)]
    return _normalize(out, clip_percentile) if normalize else out.astype(np.float32)


def valid_cells(input_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(rows, cols) of a stride-``stride`` map that lie over the resized input of ``input_size``
    (h, w) rather than over padding: ceil(h / stride) x ceil(w / stride)."""
    return math.ceil(input_size[0] / stride), math.ceil(input_size[1] / stride)


def overlay_activation(image_rgb: np.ndarray, activation: np.ndarray, *,
                       input_size: tuple[int, int], stride: int, alpha: float = 0.5,
                       colormap: int = cv2.COLORMAP_JET,
                       interpolation: str = "nearest") -> np.ndarray:
    """Blend an :func:`activation_map` over the original image.

    image_rgb: uint8 [H, W, 3], the original image. activation: float [h, w] in [0, 1] (colour
    mapped with the OpenCV ``colormap``) or uint8 [h, w, 3] RGB (e.g. "pca"), at the feature
    map's resolution over the padded input. input_size: (h, w) of the resized network input
    before padding; stride: the map's stride in input pixels (4 for p2 ... 64 for p6).
    Only the valid ceil(h/stride) x ceil(w/stride) cells are used; cell (i, j) covers input
    pixels [i*stride, (i+1)*stride), mapped back to the original image.
    interpolation: "nearest" shows every cell as a block (the level's true resolution),
    "bilinear" smooths. Returns uint8 [H, W, 3].
    """
    image = as_rgb_image(image_rgb)
    alpha = check_alpha(alpha)
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    act = np.asarray(activation)
    if not (act.ndim == 2 or (act.ndim == 3 and act.shape[2] == 3)):
        raise ValueError(f"activation must be [h, w] or RGB [h, w, 3], got shape {act.shape}")
    rows, cols = valid_cells(input_size, stride)
    if act.shape[0] < rows or act.shape[1] < cols:
        raise ValueError(f"a stride-{stride} map over an input of {tuple(input_size)} needs at "
                         f"least {rows}x{cols} cells, got {act.shape[0]}x{act.shape[1]}; "
                         "check input_size and stride")
    act = np.ascontiguousarray(act[:rows, :cols])

    height, width = image.shape[:2]
    # Original pixel centre x -> input x_in = (x + .5) * in_w / W - .5 -> cell (x_in + .5) / s - .5
    sx = input_size[1] / (width * stride)
    sy = input_size[0] / (height * stride)
    matrix = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
    flags = cv2.INTER_NEAREST if interpolation == "nearest" else cv2.INTER_LINEAR
    flags |= cv2.WARP_INVERSE_MAP
    if act.ndim == 2:
        scalar = np.clip(act.astype(np.float32), 0.0, 1.0)
        up = cv2.warpAffine(scalar, matrix, (width, height), flags=flags,
                            borderMode=cv2.BORDER_REPLICATE)
        heat_bgr = cv2.applyColorMap(np.rint(up * 255.0).astype(np.uint8), colormap)
        heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    else:
        if act.dtype != np.uint8:
            raise ValueError(f"an RGB activation must be uint8, got {act.dtype}")
        heat = cv2.warpAffine(act, matrix, (width, height), flags=flags,
                              borderMode=cv2.BORDER_REPLICATE)
    return cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
