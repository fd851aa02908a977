"""The semantic and panoptic views: every region coloured by its class and labelled at its
most interior point."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from segfpn.structures import PanopticSegmentation, SemanticSegmentation
from segfpn.viz.colors import RGB, jitter_color, resolve_color
from segfpn.viz.primitives import (as_rgb_image, check_alpha, copy_where_, dim_, draw_label_,
                                   label_rect_at, line_thickness, outline_mask_,
                                   representative_point, text_style)

#: Regions smaller than this fraction of the image get no label (unless highlighted).
MIN_LABEL_AREA_FRACTION = 0.002


def _check_map(name: str, array: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    array = np.asarray(array)
    if array.shape != image_size:
        raise ValueError(f"{name} is {array.shape} but the image is {image_size}; it must be at "
                         "the original image size")
    return array


def _region_edges(index_map: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels with a 4-neighbour of a different value (both sides of a border)."""
    edges = np.zeros(index_map.shape, dtype=bool)
    horizontal = index_map[:, 1:] != index_map[:, :-1]
    vertical = index_map[1:, :] != index_map[:-1, :]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    return edges


def _paint_regions(image: np.ndarray, index_map: np.ndarray, palette: np.ndarray, alpha: float,
                   *, show_contours: bool) -> np.ndarray:
    """Blend ``palette[index_map]`` into ``image`` where ``index_map > 0`` (0 = leave as is).

    index_map: int [H, W] into palette: uint8 [K, 3] (row 0 unused).
    """
    color_image = np.take(palette, index_map, axis=0)
    out = cv2.addWeighted(image, 1.0 - alpha, color_image, alpha, 0.0)
    copy_where_(out, image, index_map == 0)
    if show_contours:
        copy_where_(out, color_image, _region_edges(index_map) & (index_map > 0))
    return out


def _label_regions_(out: np.ndarray, index_map: np.ndarray, regions: list[tuple[int, str, RGB]],
                    *, min_area: int, font_scale: float | None) -> None:
    """Label every region ``(index, text, color)`` of ``index_map`` with at least ``min_area``
    pixels at its most interior point."""
    h, w = index_map.shape
    style = text_style((h, w), font_scale=font_scale)
    areas = _region_areas(index_map, max((r[0] for r in regions), default=0) + 1)
    for index, text, color in regions:
        if areas[index] == 0 or areas[index] < min_area:
            continue
        mask = index_map == index
        point = representative_point(mask)
        if point is None:
            continue
        rect = label_rect_at(point[:2], style.label_size(text), (h, w))
        draw_label_(out, text, rect, background=color, style=style)


def _region_areas(index_map: np.ndarray, count: int) -> np.ndarray:
    """int64 [count]: pixels of each index, counted a band of rows at a time (bincount makes an
    int64 copy of what it counts: 190 MB for a whole 24-megapixel map)."""
    areas = np.zeros(count, dtype=np.int64)
    rows = max(1, (1 << 21) // max(index_map.shape[1], 1))
    for top in range(0, index_map.shape[0], rows):
        areas += np.bincount(index_map[top:top + rows].ravel(), minlength=count)[:count]
    return areas


def _min_area(min_label_area: int | None, image_size: tuple[int, int]) -> int:
    if min_label_area is not None:
        return int(min_label_area)
    return max(16, int(MIN_LABEL_AREA_FRACTION * image_size[0] * image_size[1]))


def semantic_colors(semantic: SemanticSegmentation, *,
                    colors: Mapping[int, RGB] | None = None) -> np.ndarray:
    """uint8 [K, 3]: the colour of every semantic class (COCO colour, ``colors`` override)."""
    return np.array([resolve_color(cid, name, colors)
                     for cid, name in zip(semantic.category_ids, semantic.class_names)],
                    dtype=np.uint8).reshape(-1, 3)


def draw_semantic(image_rgb: np.ndarray, semantic: SemanticSegmentation, *, alpha: float = 0.5,
                  colors: Mapping[int, RGB] | None = None, show_labels: bool = True,
                  show_contours: bool = True, min_label_area: int | None = None,
                  font_scale: float | None = None) -> np.ndarray:
    """Colour every pixel by its semantic class.

    image_rgb: uint8 [H, W, 3]; ``semantic.labels``: int [H, W] at the same size (values
    outside ``0..K-1``, e.g. 255 "ignore", are left uncoloured). Returns a new uint8 [H, W, 3].
    ``colors``: COCO category id -> RGB, overriding :func:`~segfpn.viz.colors.class_color`.
    Each class present with at least ``min_label_area`` pixels (default 0.2 % of the image) is
    labelled once, at the point of its area farthest from any border.
    """
    image = as_rgb_image(image_rgb)
    alpha = check_alpha(alpha)
    labels = _check_map("semantic.labels", semantic.labels, image.shape[:2])
    num_classes = len(semantic.class_names)
    # Shift by one so that 0 means "not a class" in the index map.
    index_map = labels.astype(np.int32) + 1
    index_map[(labels < 0) | (labels >= num_classes)] = 0
    palette = np.concatenate([np.zeros((1, 3), np.uint8), semantic_colors(semantic, colors=colors)])
    out = _paint_regions(image, index_map, palette, alpha, show_contours=show_contours)
    if show_labels:
        regions = [(k + 1, name, tuple(int(v) for v in palette[k + 1]))
                   for k, name in enumerate(semantic.class_names)]
        _label_regions_(out, index_map, regions, font_scale=font_scale,
                        min_area=_min_area(min_label_area, image.shape[:2]))
    return out


def segment_colors(panoptic: PanopticSegmentation, *,
                   colors: Mapping[int, RGB] | None = None) -> dict[int, RGB]:
    """``{segment id: RGB}``: stuff in its class colour, the k-th thing segment of a class in
    ``jitter_color(class colour, k)`` so neighbouring instances are told apart."""
    out: dict[int, RGB] = {}
    seen: dict[int, int] = {}
    for seg in panoptic.segments:
        base = resolve_color(seg.category_id, seg.class_name, colors)
        rank = seen.get(seg.category_id, 0) if seg.isthing else 0
        seen[seg.category_id] = seen.get(seg.category_id, 0) + 1
        out[seg.id] = jitter_color(base, rank)
    return out


def _compact_index_map(ids: np.ndarray, known: list[int]) -> np.ndarray:
    """int32 [H, W]: k + 1 where ``ids == known[k]``, 0 elsewhere (void and unlisted ids)."""
    if not known:
        return np.zeros(ids.shape, dtype=np.int32)
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < (1 << 22):  # small ids (the usual 1..N): one table lookup
        table = np.zeros(hi + 1, dtype=np.int32)
        for k, segment_id in enumerate(known):
            if 0 <= segment_id <= hi:
                table[segment_id] = k + 1
        table[0] = 0
        return table[ids]
    segment_ids = np.array(known, dtype=np.int64)
    sorter = np.argsort(segment_ids)
    flat = ids.ravel().astype(np.int64)
    pos = np.clip(np.searchsorted(segment_ids[sorter], flat), 0, len(known) - 1)
    match = segment_ids[sorter][pos] == flat
    return np.where(match & (flat != 0), sorter[pos] + 1, 0).astype(np.int32).reshape(ids.shape)


def draw_panoptic(image_rgb: np.ndarray, panoptic: PanopticSegmentation, *, alpha: float = 0.5,
                  colors: Mapping[int, RGB] | None = None, show_labels: bool = True,
                  show_contours: bool = True, highlight_segment_id: int | None = None,
                  min_label_area: int | None = None, font_scale: float | None = None) -> np.ndarray:
    """Colour every panoptic segment, stuff and things, and label it with its class name.

    image_rgb: uint8 [H, W, 3]; ``panoptic.segment_ids``: int32 [H, W] at the same size, 0 =
    void (left uncoloured); ids not listed in ``panoptic.segments`` are treated as void.
    Returns a new uint8 [H, W, 3].
    ``highlight_segment_id``: a segment to emphasise (always labelled, outlined thicker);
    everything else is dimmed. ``colors``: COCO category id -> RGB override.
    """
    image = as_rgb_image(image_rgb)
    alpha = check_alpha(alpha)
    ids = _check_map("panoptic.segment_ids", panoptic.segment_ids, image.shape[:2])
    known = [s.id for s in panoptic.segments]
    if highlight_segment_id is not None and highlight_segment_id not in known:
        raise ValueError(f"highlight_segment_id={highlight_segment_id} is not a segment of this "
                         f"result (ids: {known})")

    index_map = _compact_index_map(ids, known)
    by_id = segment_colors(panoptic, colors=colors)
    palette = np.zeros((len(known) + 1, 3), dtype=np.uint8)
    for k, seg in enumerate(panoptic.segments):
        palette[k + 1] = by_id[seg.id]
    out = _paint_regions(image, index_map, palette, alpha, show_contours=show_contours)

    regions = [(k + 1, seg.class_name, by_id[seg.id]) for k, seg in enumerate(panoptic.segments)]
    min_area = _min_area(min_label_area, image.shape[:2])
    if highlight_segment_id is None:
        if show_labels:
            _label_regions_(out, index_map, regions, min_area=min_area, font_scale=font_scale)
        return out

    # Everything but the highlighted segment is drawn, then dimmed; the segment goes on top.
    highlight = known.index(highlight_segment_id) + 1
    if show_labels:
        _label_regions_(out, index_map, regions[:highlight - 1] + regions[highlight:],
                        min_area=min_area, font_scale=font_scale)
    mask = index_map == highlight
    dim_(out, mask)
    outline_mask_(out, mask, by_id[highlight_segment_id], 2 * line_thickness(image.shape[:2]))
    if show_labels:
        _label_regions_(out, index_map, [regions[highlight - 1]], min_area=0,
                        font_scale=font_scale)
    return out
