"""The app's views and their text, one function per tab, each drawing with :mod:`segfpn.viz`
(numpy in, numpy out) from a session's :class:`~segfpn.app.session.Run`. No gradio here.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable

import cv2
import numpy as np

from segfpn import viz
from segfpn.app.session import Run
from segfpn.model.levels import level_stride

#: The pyramid levels the inspector offers: bottom-up (ResNet res2..res5) and FPN outputs.
LEVELS = ("c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "p6")
#: (label, value) of the inspector's summaries, values as in :data:`segfpn.viz.ACTIVATION_MODES`.
ACTIVATION_MODE_CHOICES = (("mean |activation|", "mean_abs"), ("max", "max"), ("L2 norm", "l2"),
                           ("single channel", "channel"), ("PCA: 3 components as RGB", "pca"))
_MODE_NAMES = {value: label for label, value in ACTIVATION_MODE_CHOICES}
#: Columns of the panoptic segment table.
SEGMENT_COLUMNS = ("id", "class", "kind", "score", "area (px)", "RoI level")
#: The panoptic view is sent to the browser at most this large (one PNG per segment).
PANOPTIC_VIEW_MAX_SIDE = 1024


def class_choices(run: Run) -> list[tuple[str, str]]:
    """(label, class name) of every class detected, most frequent first: ("person (12)", "person")."""
    counts = Counter(run.result.instances.names)
    return [(f"{name} ({n})", name) for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _classes(classes: Iterable[str] | None) -> list[str] | None:
    """The class filter: None (every class) when nothing is selected."""
    chosen = [c for c in (classes or []) if c]
    return chosen or None


def draw_instance_view(run: Run, *, score_threshold: float = 0.5, alpha: float = 0.5,
                       classes: Iterable[str] | None = None, show_boxes: bool = True,
                       show_labels: bool = True) -> np.ndarray:
    """uint8 [H, W, 3]: masks, boxes and "class score" labels of the kept detections."""
    return viz.draw_instances(run.image, run.result.instances, score_threshold=score_threshold,
                              classes=_classes(classes), alpha=alpha, show_boxes=show_boxes,
                              show_labels=show_labels)


def instance_summary(run: Run, *, score_threshold: float, classes: Iterable[str] | None) -> str:
    shown = len(viz.visible_indices(run.result.instances, score_threshold=score_threshold,
                                    classes=_classes(classes)))
    return f"{shown} of {len(run.result.instances)} detections shown (score ≥ {score_threshold:.2f})"


def draw_semantic_view(run: Run, *, alpha: float = 0.5) -> np.ndarray | None:
    """uint8 [H, W, 3] of the semantic segmentation, or None without a semantic branch."""
    if run.result.semantic is None:
        return None
    return viz.draw_semantic(run.image, run.result.semantic, alpha=alpha)


def _hex(color) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in color))


def segment_label(segment) -> str:
    """The label of a panoptic segment in the view's legend: "#3 person 0.93", "#7 sky"."""
    text = f"#{segment.id} {segment.class_name}"
    return f"{text} {segment.score:.2f}" if segment.isthing and segment.score is not None else text


def panoptic_view(run: Run, *, highlight: int | None = None,
                  max_side: int = PANOPTIC_VIEW_MAX_SIDE):
    """The panoptic view as ``(base image, [(mask, label), ...], {label: "#rrggbb"})`` for an
    annotated image, or None without a panoptic result.

    The base image carries each segment's outline and class label (readable on any
    background); each annotation is one segment's mask, bool [h, w] at the base's size.
    ``highlight``: a segment id to single out (the rest dimmed, only its mask annotated).
    Sent at most ``max_side`` px large: the view is for looking, the downloads are full size.
    """
    panoptic = run.result.panoptic
    if panoptic is None:
        return None
    base = viz.draw_panoptic(run.image, panoptic, alpha=0.0, highlight_segment_id=highlight)
    ids = panoptic.segment_ids
    h, w = ids.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        base = cv2.resize(base, size, interpolation=cv2.INTER_AREA)
        ids = cv2.resize(ids.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    colors = viz.segment_colors(panoptic)
    segments = [s for s in panoptic.segments if highlight is None or s.id == highlight]
    annotations = [(ids == s.id, segment_label(s)) for s in segments]
    color_map = {segment_label(s): _hex(colors[s.id]) for s in panoptic.segments}
    return base, annotations, color_map


def segment_rows(run: Run) -> list[list]:
    """One row per panoptic segment, columns :data:`SEGMENT_COLUMNS`."""
    panoptic = run.result.panoptic
    if panoptic is None:
        return []
    return [[s.id, s.class_name, "thing" if s.isthing else "stuff",
             round(float(s.score), 3) if s.score is not None else None, int(s.area),
             f"p{s.level}" if s.level is not None else "—"] for s in panoptic.segments]


def segment_details(run: Run, segment_id: int) -> str:
    """Markdown about one panoptic segment: class, kind, area, and for a thing score and level."""
    segment = next(s for s in run.result.panoptic.segments if s.id == segment_id)
    share = 100.0 * segment.area / run.result.panoptic.segment_ids.size
    kind = "thing" if segment.isthing else "stuff"
    text = (f"**#{segment.id} {segment.class_name}** ({kind}), {segment.area} px "
            f"({share:.1f} % of the image)")
    if segment.isthing:
        text += f", score {segment.score:.2f}, mask RoI pooled from **p{segment.level}**"
    return text


def level_channels(run: Run, level: str) -> int:
    return int(run.features[level].shape[0])


def activation_view(run: Run, level: str, mode: str = "mean_abs", channel: int = 0,
                    *, alpha: float = 0.65) -> tuple[np.ndarray, str, int]:
    """``(overlay uint8 [H, W, 3], Markdown about the level, channel actually shown)``.

    The level's map (float16 [C, h, w] from the run) is summarised by ``mode`` (see
    :func:`segfpn.viz.activation_map`; ``channel`` is clamped to the level's channels) and laid
    over the image, cell by cell. Raises ValueError for a level the model did not produce.
    """
    if level not in run.features:
        raise ValueError(f"this model has no level {level!r}; it has {', '.join(run.features)}")
    feature = run.features[level]
    num_channels, rows, cols = feature.shape
    channel = int(min(max(int(channel or 0), 0), num_channels - 1))
    stride = level_stride(level)
    activation = viz.activation_map(feature, mode=mode, channel=channel, clip_percentile=1.0)
    overlay = viz.overlay_activation(run.image, activation, input_size=run.result.input_size,
                                     stride=stride, alpha=alpha)
    in_h, in_w = run.result.input_size
    valid_rows, valid_cols = viz.valid_cells((in_h, in_w), stride)
    image_px = stride * run.image.shape[0] / in_h
    kind = "bottom-up ResNet stage" if level.startswith("c") else "FPN output"
    shown = _MODE_NAMES.get(mode, mode) + (f" {channel}" if mode == "channel" else "")
    cells = f"{rows} × {cols} cells"
    if (valid_rows, valid_cols) != (rows, cols):
        cells += f" ({valid_rows} × {valid_cols} over the image, the rest over padding)"
    info = (f"**{level}** · {kind} · {num_channels} channels · {cells} · "
            f"stride **{stride} px** of the {in_w} × {in_h} network input "
            f"(one cell ≈ {image_px:.1f} px of this image) · showing {shown}")
    return overlay, info, channel


def levels_view(run: Run, *, score_threshold: float = 0.5, classes: Iterable[str] | None = None,
                source: str = "mask") -> tuple[np.ndarray, str]:
    """``(drawing, Markdown)``: every kept detection's box in the colour of the pyramid level its
    RoI was pooled from (``source`` "mask": the mask head's RoI, "box": the box head's), the
    count per level, and the rule."""
    instances = run.result.instances
    drawing = viz.draw_levels(run.image, instances, score_threshold=score_threshold,
                              classes=_classes(classes), source=source)
    keep = viz.visible_indices(instances, score_threshold=score_threshold, classes=_classes(classes))
    levels = (instances.levels if source == "mask" else instances.box_levels)[keep]
    counts = viz.level_counts(levels)
    per_level = " · ".join(f"**p{k}** (stride {2 ** k}): {n}" for k, n in counts.items())
    scale = run.result.input_size[0] / run.image.shape[0]
    text = (f"{per_level} — {len(keep)} detections with score ≥ {score_threshold:.2f}.\n\n"
            f"{viz.level_rule_text()} (Here the network input is this image scaled by {scale:.2f}.)")
    return drawing, text


def run_summary(run: Run, *, views_drawn: bool = True) -> str:
    """Markdown: the image, its sizes, what was found, the time per stage and the device;
    ``views_drawn=False`` while the views beside the first are still being drawn."""
    r = run.result
    h, w = run.image.shape[:2]
    in_h, in_w = r.input_size
    size = f"{w} × {h} px"
    if run.downscaled:
        oh, ow = run.original_size
        size = f"{ow} × {oh} px, downscaled to {size}"
    found = f"{len(r.instances)} detections"
    if r.panoptic is not None:
        found += f", {len(r.panoptic.segments)} panoptic segments"
    t = run.timings
    heads = t.get("heads", 0.0) + t.get("semantic_head", 0.0)
    stages = [("preprocess", t.get("preprocess", 0.0)), ("backbone + FPN", t.get("backbone_fpn", 0.0)),
              ("heads", heads), ("postprocess", t.get("postprocess", 0.0))]
    if "drawing" in t:
        stages.append(("drawing", t["drawing"]))
    total = sum(v for _, v in stages)
    timing = " · ".join(f"{name} {seconds:.2f} s" for name, seconds in stages)
    state = "every view drawn" if views_drawn else "drawing the other views…"
    return (f"**{run.name}** · {size} (network input {in_w} × {in_h}) · {found}  \n"
            f"{timing} · **total {total:.2f} s** on **{run.device}** · {state}")


def semantic_legend(run: Run) -> str:
    """HTML: a swatch, the name and the share of the image of every class in the semantic view,
    largest first ("" without a semantic branch)."""
    semantic = run.result.semantic
    if semantic is None:
        return ""
    colors = viz.semantic_colors(semantic)
    counts = np.bincount(semantic.labels.ravel(), minlength=len(semantic.class_names))[:len(semantic.class_names)]
    total = max(int(counts.sum()), 1)
    items = []
    for label in np.argsort(-counts, kind="stable"):
        if counts[label] == 0:
            break
        share = 100.0 * counts[label] / total
        items.append(f'<span class="legend-swatch" style="background:{_hex(colors[label])}"></span>'
                     f"{html.escape(semantic.class_names[label])} {share:.1f} %")
    return "<div id='semantic-legend-items'>" + " ".join(items) + "</div>"
