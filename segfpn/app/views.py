"""The app's views and their text, one function per tab, each drawing with :mod:`segfpn.viz`
(numpy in, numpy out) from a session's :class:`~segfpn.app.session.Run`. No gradio here.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from segfpn import viz
from segfpn.app.session import RETINANET, Run
from segfpn.model.levels import level_number, level_stride
from segfpn.viz import pyramid as pyramid_viz
from segfpn.viz.levels import RETINANET_LEVELS, anchor_level_rule_text

#: The pyramid levels of the two-stage models: bottom-up (ResNet res2..res5) and FPN outputs.
LEVELS = ("c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "p6")
#: Every level the inspector may offer: also RetinaNet's p7 (its FPN outputs are p3-p7). After a
#: run the inspector offers that run's own levels (:func:`run_levels`).
INSPECTOR_LEVELS = (*LEVELS, "p7")
#: The RoI levels of the two-stage models (their level rule clamps to these).
ROI_LEVELS = (2, 5)
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


def run_levels(run: Run) -> list[str]:
    """The levels the inspector offers for ``run``: those its model produced, bottom-up first."""
    return sorted(run.features, key=lambda name: (name[0] != "c", level_number(name)))


def nearest_level(run: Run, level: str | None) -> str:
    """``level`` when ``run`` has it, else its level of the same kind nearest in stride (p2 of a
    RetinaNet run: p3; p3 for no level)."""
    levels = run_levels(run)
    if level in levels:
        return level
    valid = bool(level) and level[0] in "cp" and level[1:].isdigit()
    prefix, wanted = (level[0], level_number(level)) if valid else ("p", 3)
    same_kind = [name for name in levels if name[0] == prefix] or levels
    return min(same_kind, key=lambda name: abs(level_number(name) - wanted))


def levels_info(levels) -> str:
    """The inspector's note on its levels: "c2–c5: bottom-up ResNet stages · p3–p7: FPN outputs"."""
    parts = []
    for prefix, what in (("c", "bottom-up ResNet stages"), ("p", "FPN outputs")):
        names = [name for name in levels if name.startswith(prefix)]
        if names:
            parts.append(f"{names[0]}–{names[-1]}: {what}")
    return " · ".join(parts)


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


#: The two rules a detection's level comes from, as the levels view's legend and rule line name them.
ROI_RULE, ANCHOR_RULE = "RoI level by size", "anchor level that fired"


def rule_line(run: Run | None = None, *, kind: str | None = None) -> str:
    """The levels view's rule line, for ``run``'s model (or a model of ``kind``): "**Rule: RoI level
    by size.** Each RoI of w×h pixels …" or "**Rule: anchor level that fired.** RetinaNet has no RoIs …"."""
    kind = run.model_kind if run is not None else kind
    if kind == RETINANET:
        return f"**Rule: {ANCHOR_RULE}.** {anchor_level_rule_text()}"
    text = f"**Rule: {ROI_RULE}.** {viz.level_rule_text()}"
    if run is not None:
        scale = run.result.input_size[0] / run.image.shape[0]
        text += f" (Here the network input is this image scaled by {scale:.2f}.)"
    return text


def levels_view(run: Run, *, score_threshold: float = 0.5, classes: Iterable[str] | None = None,
                source: str = "mask") -> tuple[np.ndarray, str]:
    """``(drawing, Markdown)``: every kept detection's box in the colour of its pyramid level,
    the count per level, and the rule. A two-stage model's level is its RoI's (``source`` "mask":
    the final box's, which the mask head pools; "box": the proposal's, which the box head pools);
    a RetinaNet's is the anchor level that fired (``source`` does not matter)."""
    instances = run.result.instances
    anchor = run.anchor_levels
    if anchor:
        source, title, level_range = "mask", ANCHOR_RULE, RETINANET_LEVELS
    else:
        title = f"{ROI_RULE} ({'final box' if source == 'mask' else 'proposal'})"
        level_range = ROI_LEVELS
    drawing = viz.draw_levels(run.image, instances, score_threshold=score_threshold, classes=_classes(classes),
                              source=source, title=title, level_range=level_range)
    keep = viz.visible_indices(instances, score_threshold=score_threshold, classes=_classes(classes))
    levels = (instances.levels if source == "mask" else instances.box_levels)[keep]
    counts = viz.level_counts(levels, min_level=level_range[0], max_level=level_range[1])
    per_level = " · ".join(f"**p{k}** (stride {2 ** k}): {n}" for k, n in counts.items())
    text = (f"{per_level} — {len(keep)} detections with score ≥ {score_threshold:.2f}, coloured by the "
            f"{title}.\n\n{rule_line(run)}")
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
    if run.box_only:
        found += " (boxes only)"
    t = run.timings
    heads = t.get("heads", 0.0) + t.get("semantic_head", 0.0)
    stages = [("preprocess", t.get("preprocess", 0.0)), ("backbone + FPN", t.get("backbone_fpn", 0.0)),
              ("heads", heads), ("postprocess", t.get("postprocess", 0.0))]
    if "drawing" in t:
        stages.append(("drawing", t["drawing"]))
    total = sum(v for _, v in stages)
    timing = " · ".join(f"{name} {seconds:.2f} s" for name, seconds in stages)
    state = "every view drawn" if views_drawn else "drawing the other views…"
    model = f"{run.model_kind} **{Path(run.model_name).name}**" if run.model_name else run.model_kind
    return (f"**{run.name}** · {size} (network input {in_w} × {in_h}) · {found}  \n"
            f"{timing} · **total {total:.2f} s** on **{run.device}** · {model} · {state}")


def notices(run: Run) -> dict[str, str]:
    """One line per view that ``run``'s model leaves empty, saying why ("" where nothing is
    missing): "semantic", "panoptic", "downloads" (the files it has no data for) and "roi"
    (explaining a detection and the what-if, which need RoIs)."""
    kind = run.model_kind
    lacks = (f"{kind} predicts boxes only (no masks, no semantic head)" if run.box_only
             else f"{kind} has no semantic head")
    semantic = panoptic = downloads = roi = ""
    if run.result.semantic is None:
        semantic = f"{lacks}: there is no semantic segmentation. A Panoptic FPN checkpoint has one."
    if run.result.panoptic is None:
        panoptic = f"{lacks}: there is no panoptic segmentation. A Panoptic FPN checkpoint has one."
        downloads = f"{lacks}: no panoptic files."
    if run.box_only:
        downloads = (f"{kind} predicts boxes only: the COCO results JSON has boxes and scores without "
                     "`segmentation`, there are no panoptic files, and exports that need masks are skipped.")
    if run.inspection is None:
        roi = (f"{kind} has no RoIs: each detection comes from an anchor on one level, p3–p7 (the levels view "
               "shows which), so there is no RoI to explain level by level and no RoI head to run again; the "
               "scale sweep and the scores per level work." if run.anchor_levels
               else f"{kind}: this run kept nothing to explain its detections with.")
    return {"semantic": semantic, "panoptic": panoptic, "downloads": downloads, "roi": roi}


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


# ---------------------------------------------------------------------------------------------
# The pyramid, explained (the Levels tab): one detection, what-if, the scale sweep, per level


#: Columns of the detection table of the Levels tab.
DETECTION_COLUMNS = ("#", "class", "score", "√(wh) px", "level", "box RoI level")
#: Columns of the what-if diff table.
WHAT_IF_COLUMNS = ("#", "status", "class", "score before", "score after", "level before", "level after",
                   "box IoU", "mask IoU")
#: Columns of the per-level metrics table.
LEVEL_METRIC_COLUMNS = ("level", "objects", "found", "recall", "detections", "correct", "precision")


def visible(run: Run, *, score_threshold: float, classes: Iterable[str] | None = None) -> np.ndarray:
    """int64 indices of the detections the views show (score and class filter), best first."""
    return viz.visible_indices(run.result.instances, score_threshold=score_threshold, classes=_classes(classes))


def detection_rows(run: Run, *, score_threshold: float, classes: Iterable[str] | None = None) -> list[list]:
    """One row per shown detection, columns :data:`DETECTION_COLUMNS`; the size is √(wh) of its
    box in network pixels, the number the level rule reads. A RetinaNet detection has no box RoI
    level ("—")."""
    instances = run.result.instances
    scale = run.result.input_size[0] / run.result.image_size[0]
    boxes = instances.boxes * scale
    sizes = np.sqrt(np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))
    names = instances.names
    anchor = run.anchor_levels
    return [[int(i), names[i], round(float(instances.scores[i]), 3), round(float(sizes[i]), 1),
             f"p{int(instances.levels[i])}", "—" if anchor else f"p{int(instances.box_levels[i])}"]
            for i in visible(run, score_threshold=score_threshold, classes=classes).tolist()]


def detection_at(run: Run, x: float, y: float, *, score_threshold: float,
                 classes: Iterable[str] | None = None) -> int | None:
    """The shown detection under the image point (x, y): of those whose box holds it, the one with
    the smallest box (the most specific); None when no box does."""
    boxes = run.result.instances.boxes
    best, best_area = None, np.inf
    for i in visible(run, score_threshold=score_threshold, classes=classes).tolist():
        x0, y0, x1, y1 = boxes[i]
        area = (x1 - x0) * (y1 - y0)
        if x0 <= x <= x1 and y0 <= y <= y1 and area < best_area:
            best, best_area = i, area
    return best


def explanation_view(explanation, *, grid_mode: str = "mean_abs") -> tuple[str, np.ndarray, np.ndarray | None,
                                                                             np.ndarray | None, list[dict]]:
    """``(Markdown, box grids image, mask grids image or None, mask probabilities image or None,
    bars)`` of a :class:`~segfpn.explain.DetectionExplanation`: the rule worked out for its mask
    and box RoIs, the RoIAlign grids on their levels and the neighbours (one colour scale), the
    28x28 mask, and ``bars`` (``{"level", "mean |activation|", "pooled from"}`` per pyramid
    level, for a bar chart)."""
    e = explanation
    box = ", ".join(f"{v:.1f}" for v in e.box.tolist())
    lines = [f"**#{e.index} {e.class_name}** · score {e.score:.3f} · box ({box}) in the image, "
             f"√(wh) = {e.size:.1f} px in the network input ({e.input_size[1]} × {e.input_size[0]})",
             (f"- mask head RoI (the final box): {e.mask_rule.text()}" if e.mask_grids is not None
              else f"- the final box (no mask head pools it): {e.mask_rule.text()}"),
             f"- box head RoI (its proposal): {e.box_rule.text()}",
             f"- grids, fine to coarse: {', '.join(f'p{int(k)}' for k in e.box_grids.levels)} "
             f"(box RoI 7 × 7, its level p{e.box_level})"
             + (f"; {', '.join(f'p{int(k)}' for k in e.mask_grids.levels)} (mask RoI 14 × 14, p{e.level})"
                if e.mask_grids is not None else "")]
    box_grids = pyramid_viz.grids_image(e.box_grids, mode=grid_mode, cell=20)
    mask_grids = pyramid_viz.grids_image(e.mask_grids, mode=grid_mode, cell=10) if e.mask_grids is not None else None
    mask_probs = pyramid_viz.mask_probs_image(e.mask_probs, cell=8) if e.mask_probs is not None else None
    bars = [{"level": f"p{int(k)}", "mean |activation|": float(v),
             "pooled from": "yes" if int(k) in (e.level, e.box_level) else "no"}
            for k, v in zip(e.pyramid_levels, e.box_activation)]
    return "\n".join(lines), box_grids, mask_grids, mask_probs, bars


def what_if_view(run: Run, whatif, *, score_threshold: float = 0.0) -> tuple[np.ndarray, str, list[list]]:
    """``(diff drawing, Markdown, rows)`` of a :class:`~segfpn.explain.WhatIf` of ``run``: kept /
    moved / lost / new boxes over the image, the counts with the rule used and the time the heads
    took, and the diff table (:data:`WHAT_IF_COLUMNS`). Only detections scoring at least
    ``score_threshold`` before (or, for new ones, after) are shown and counted, as in the other views."""
    rule = whatif.rule
    forced = rule.min_level == rule.max_level
    how = (f"every RoI on p{rule.min_level}" if forced else
           f"k = ⌊{rule.canonical_level} + log2(√(wh) / {rule.canonical_size:g})⌋, clamped to "
           f"{rule.min_level}…{rule.max_level}")
    shown_before = whatif.original.scores >= score_threshold
    shown_new = (whatif.new_status == "new") & (whatif.instances.scores >= score_threshold)
    statuses = list(whatif.status[shown_before]) + ["new"] * int(shown_new.sum())
    counts = " · ".join(f"**{k}** {statuses.count(k)}" for k in ("kept", "moved", "lost", "new"))
    text = (f"{how}: {counts} (score ≥ {score_threshold:.2f}) — the RoI heads alone took "
            f"{whatif.timings['heads']:.2f} s ({whatif.seconds:.2f} s with pasting and the diff; no backbone).")

    def number(value, digits=3):
        return None if value is None else round(float(value), digits)

    rows = [[r["index"] if r["index"] is not None else f"new {r['new_index']}", r["status"], r["class_name"],
             number(r["score_before"]), number(r["score_after"]),
             f"p{r['level_before']}" if r["level_before"] is not None else "—",
             f"p{r['level_after']}" if r["level_after"] is not None else "—",
             number(r["box_iou"]), number(r["mask_iou"])] for r in whatif.rows()
            if (r["index"] is not None and shown_before[r["index"]])
            or (r["index"] is None and shown_new[r["new_index"]])]
    drawing = pyramid_viz.draw_what_if(run.image, whatif, shown=shown_before, shown_new=shown_new)
    return drawing, text, rows


def sweep_tables(sweep) -> tuple[list[dict], list[dict], list[dict], str]:
    """Rows for the scale sweep's plots from a :class:`~segfpn.explain.ScaleSweep`: per object and
    size its level and score (``{"input size", "level", "score", "object"}``), per size and level
    the share of detections (``{"input size", "share", "level"}``), per size the count, and a
    Markdown summary."""
    objects = []
    for t in range(sweep.num_tracks):
        name = f"#{t} {sweep.track_names[t]}"
        for s, size in enumerate(sweep.sizes.tolist()):
            if sweep.track_levels[t, s] >= 0:
                objects.append({"input size": int(size), "level": int(sweep.track_levels[t, s]),
                                "score": float(sweep.track_scores[t, s]), "object": name})
    shares = [{"input size": int(size), "share": float(sweep.level_shares[s, k]), "level": f"p{int(level)}"}
              for s, size in enumerate(sweep.sizes.tolist()) for k, level in enumerate(sweep.levels.tolist())]
    counts = [{"input size": int(size), "detections": int(sweep.counts[s])}
              for s, size in enumerate(sweep.sizes.tolist())]
    moved = sum(1 for t in range(sweep.num_tracks) if len(set(sweep.track_levels[t][sweep.track_levels[t] >= 0])) > 1)
    text = (f"{len(sweep.sizes)} input sizes ({sweep.sizes[0]}…{sweep.sizes[-1]} px, shorter side), "
            f"{sweep.num_tracks} objects followed (score ≥ {sweep.score_threshold:g}, box IoU ≥ "
            f"{sweep.iou_threshold:g} from size to size), {moved} of them change level as the image grows; "
            f"{float(np.sum(sweep.seconds)):.1f} s in all.")
    return objects, shares, counts, text


def level_metric_rows(metrics, *, anchor_levels: bool = False) -> tuple[list[list], str]:
    """Rows (:data:`LEVEL_METRIC_COLUMNS`) and a Markdown note of a
    :class:`~segfpn.evaluation.by_level.LevelMetrics` (``anchor_levels``: of a RetinaNet)."""
    rows = []
    for row in metrics.table():
        rows.append([row["level"], row["objects"], row["found"],
                     None if row["recall"] is None else round(row["recall"], 3), row["detections"], row["correct"],
                     None if row["precision"] is None else round(row["precision"], 3)])
    source = "the level of the anchor that fired" if anchor_levels else "the level their RoI was pooled from"
    text = (f"Objects get the level their ground-truth box maps to under the model's rule at this input size; "
            f"detections {source}. A match: same class, box IoU ≥ "
            f"{metrics.iou_threshold:g}, score ≥ {metrics.score_threshold:g}.")
    return rows, text
