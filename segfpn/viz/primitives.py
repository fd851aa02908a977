"""Drawing primitives shared by the views: input checks, label boxes, mask fills and outlines.

Images are uint8 [H, W, 3] RGB. Functions ending in ``_`` draw in place into ``out``; every
fill works on the bounding rectangle of its mask only, so a hundred small masks on a large
image cost little more than one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segfpn.viz.colors import RGB, text_color_for

#: Factor applied to everything outside a highlighted object or segment.
DIM_FACTOR = 0.4

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def as_rgb_image(image: np.ndarray, *, name: str = "image_rgb") -> np.ndarray:
    """The image as uint8 [H, W, 3] RGB: gray [H, W] is repeated, an alpha channel dropped.

    Raises ValueError for other shapes or dtypes.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0-255), got {image.dtype}; convert floats in 0..1 "
                         "with (x * 255).round().astype(np.uint8)")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)  # OpenCV rejects views such as image[:, :, ::-1]
    raise ValueError(f"{name} must be an RGB image [H, W, 3] (or gray [H, W], RGBA [H, W, 4]), "
                     f"got shape {image.shape}")


def check_masks(masks: np.ndarray, image_size: tuple[int, int]) -> None:
    """Raise ValueError unless ``masks`` is bool [N, H, W] at ``image_size``."""
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image_size):
        raise ValueError(f"masks are {tuple(masks.shape)} but the image is {tuple(image_size)}; "
                         "masks must be bool [N, H, W] at the original image size")
    if masks.dtype != bool:
        raise ValueError(f"masks must be bool [N, H, W], got {masks.dtype}; threshold mask "
                         "probabilities first (e.g. masks > 0.5)")


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


@dataclass(frozen=True)
class TextStyle:
    """Font settings for labels: OpenCV Hershey simplex ``font_scale`` and stroke ``thickness``,
    ``pad`` pixels between the text and the edge of its filled box."""

    font_scale: float
    thickness: int
    pad: int

    def label_size(self, text: str) -> tuple[int, int]:
        """(width, height) in pixels of the filled box around ``text``."""
        (tw, th), baseline = cv2.getTextSize(text, _FONT, self.font_scale, self.thickness)
        return tw + 2 * self.pad, th + baseline + 2 * self.pad


def text_style(image_size: tuple[int, int], *, font_scale: float | None = None) -> TextStyle:
    """Label font for an image of ``image_size`` (H, W): about 10 px tall text on a 512x512
    image, 18 px on 1333x800; ``font_scale`` overrides the automatic size."""
    h, w = image_size
    if font_scale is None:
        font_scale = min(max(math.sqrt(h * w) / 1000.0 * 0.8, 0.4), 2.0)
    thickness = 1 if font_scale < 0.8 else 2
    return TextStyle(font_scale=float(font_scale), thickness=thickness,
                     pad=max(2, round(font_scale * 4)))


def line_thickness(image_size: tuple[int, int]) -> int:
    """Box and outline thickness in pixels: 1 on small images, 2 around 1333x800."""
    h, w = image_size
    return max(1, round(math.sqrt(h * w) / 600.0))


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(v, hi))


def label_rect_for_box(box: np.ndarray, label_size: tuple[int, int],
                       image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the label of an xyxy ``box`` goes: (x0, y0, x1, y1), ends exclusive.

    Just above the box's top-left corner when it fits there, otherwise inside the box at its
    top; then shifted so that the whole label lies inside the image (a label wider or taller
    than the image starts at its left / top edge).
    """
    lw, lh = label_size
    h, w = image_size
    x0 = int(math.floor(float(box[0])))
    y0 = int(math.floor(float(box[1]))) - lh
    if y0 < 0:
        y0 = int(math.floor(float(box[1])))
    x0 = _clamp(x0, 0, max(w - lw, 0))
    y0 = _clamp(y0, 0, max(h - lh, 0))
    return x0, y0, x0 + lw, y0 + lh


def label_rect_at(center: tuple[float, float], label_size: tuple[int, int],
                  image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A label centred on ``center`` (x, y), shifted inside the image: (x0, y0, x1, y1)."""
    lw, lh = label_size
    h, w = image_size
    x0 = _clamp(int(round(center[0] - lw / 2)), 0, max(w - lw, 0))
    y0 = _clamp(int(round(center[1] - lh / 2)), 0, max(h - lh, 0))
    return x0, y0, x0 + lw, y0 + lh


def draw_label_(out: np.ndarray, text: str, rect: tuple[int, int, int, int], *,
                background: RGB, style: TextStyle) -> None:
    """Fill ``rect`` with ``background`` and write ``text`` in black or white, whichever reads
    better on it."""
    x0, y0, x1, y1 = rect
    out[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = background
    (_, th), _ = cv2.getTextSize(text, _FONT, style.font_scale, style.thickness)
    cv2.putText(out, text, (x0 + style.pad, y0 + style.pad + th), _FONT, style.font_scale,
                text_color_for(background), style.thickness, cv2.LINE_AA)


def draw_box_(out: np.ndarray, box: np.ndarray, color: RGB, thickness: int) -> None:
    """Outline an xyxy box (continuous pixel coordinates) clipped to the image."""
    h, w = out.shape[:2]
    x0 = _clamp(int(math.floor(float(box[0]))), 0, w - 1)
    y0 = _clamp(int(math.floor(float(box[1]))), 0, h - 1)
    x1 = _clamp(int(math.ceil(float(box[2]))) - 1, 0, w - 1)
    y1 = _clamp(int(math.ceil(float(box[3]))) - 1, 0, h - 1)
    cv2.rectangle(out, (x0, y0), (x1, y1), tuple(int(v) for v in color), thickness, cv2.LINE_8)


def mask_bounds(mask: np.ndarray) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the bounding rectangle of a bool [H, W] mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return slice(y0, y1), slice(int(cols[0]), int(cols[-1]) + 1)


def solid(shape: tuple[int, ...], color: RGB) -> np.ndarray:
    """uint8 [h, w, 3] filled with ``color`` (OpenCV's fill is far faster than numpy's
    broadcasting assignment of a 3-tuple)."""
    out = np.empty(shape, dtype=np.uint8)
    cv2.rectangle(out, (0, 0), (shape[1] - 1, shape[0] - 1), tuple(int(v) for v in color), -1)
    return out


def copy_where_(dst: np.ndarray, src: np.ndarray, where: np.ndarray) -> None:
    """``dst[where] = src[where]`` for uint8 [h, w, 3] images (``dst`` may be a crop view) and a
    bool [h, w] mask, using OpenCV's masked copy."""
    res = cv2.copyTo(src, where.view(np.uint8), dst)
    if not np.shares_memory(res, dst):  # OpenCV could not write through the view
        np.copyto(dst, res)


def fill_mask_(out: np.ndarray, mask: np.ndarray, color: RGB, alpha: float, *,
               source: np.ndarray | None = None, bounds: tuple[slice, slice] | None = None) -> None:
    """Blend ``color`` into ``out`` inside ``mask``: ``(1 - alpha) * source + alpha * color``.

    ``source`` (default ``out``) is the image the blend starts from. Pixels outside the mask are
    untouched; alpha 0 leaves the source, alpha 1 writes ``color`` exactly.
    """
    if bounds is None:
        bounds = mask_bounds(mask)
        if bounds is None:
            return
    src = (out if source is None else source)[bounds]
    blended = cv2.addWeighted(src, 1.0 - alpha, solid(src.shape, color), alpha, 0.0)
    copy_where_(out[bounds], blended, mask[bounds])


def inner_outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """bool mask of the pixels of ``mask`` within ``thickness`` px of its edge (the image border
    counts as an edge). Never marks a pixel outside ``mask``."""
    m = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), iterations=thickness,
                       borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return m > eroded


def outline_mask_(out: np.ndarray, mask: np.ndarray, color: RGB, thickness: int, *,
                  bounds: tuple[slice, slice] | None = None) -> None:
    """Paint the inner outline of ``mask`` (``thickness`` px) with ``color``; pixels outside the
    mask are untouched."""
    if bounds is None:
        bounds = mask_bounds(mask)
        if bounds is None:
            return
    # One pixel of margin so the crop edge is not mistaken for the mask edge.
    rows = slice(max(bounds[0].start - 1, 0), bounds[0].stop + 1)
    cols = slice(max(bounds[1].start - 1, 0), bounds[1].stop + 1)
    edge = inner_outline(mask[rows, cols], thickness)
    dst = out[rows, cols]
    copy_where_(dst, solid(dst.shape, color), edge)


def representative_point(mask: np.ndarray, *, bounds: tuple[slice, slice] | None = None
                         ) -> tuple[int, int, float] | None:
    """(x, y, distance) of a point deep inside the mask, where a label sits best in an irregular
    region; None for an empty mask.

    Takes the pixels whose distance to the mask's edge (the image border counts as one) is at
    least 80 % of the largest distance, and returns the one nearest to their centroid: the
    middle of the thickest part, not one end of a plateau.
    """
    if bounds is None:
        bounds = mask_bounds(mask)
        if bounds is None:
            return None
    crop = np.pad(mask[bounds].astype(np.uint8), 1)
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, 5)
    ys, xs = np.nonzero(dist >= 0.8 * float(dist.max()))
    best = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    iy, ix = int(ys[best]), int(xs[best])
    return bounds[1].start + ix - 1, bounds[0].start + iy - 1, float(dist[iy, ix])


def dim_(out: np.ndarray, keep: np.ndarray | None = None, *, factor: float = DIM_FACTOR) -> None:
    """Darken ``out`` by ``factor`` everywhere except where the bool [H, W] ``keep`` is set."""
    dimmed = cv2.convertScaleAbs(out, alpha=factor)
    if keep is None:
        out[...] = dimmed
    else:
        np.copyto(out, dimmed, where=~keep[:, :, None])
