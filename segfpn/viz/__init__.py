"""Drawing: numpy images in, numpy images out (uint8 [H, W, 3] RGB). No torch, no gradio.

Views: :func:`draw_instances`, :func:`draw_semantic`, :func:`draw_panoptic`; the pyramid
inspector :func:`activation_map` + :func:`overlay_activation`; RoI levels :func:`draw_levels`,
:func:`level_counts`, :func:`level_for_box`, :func:`level_rule_text`.
"""

from segfpn.viz.activations import (ACTIVATION_MODES, activation_map, overlay_activation,
                                    pca_components, valid_cells)
from segfpn.viz.colors import (class_color, colors_from_categories, contrast_ratio,
                               instance_colors, jitter_color, text_color_for)
from segfpn.viz.instances import draw_instances, instance_label, visible_indices
from segfpn.viz.levels import (LEVEL_COLORS, draw_levels, level_counts, level_for_box,
                               level_rule_text)
from segfpn.viz.segmentation import draw_panoptic, draw_semantic, segment_colors, semantic_colors

__all__ = [
    "ACTIVATION_MODES", "LEVEL_COLORS",
    "activation_map", "class_color", "colors_from_categories", "contrast_ratio", "draw_instances",
    "draw_levels", "draw_panoptic", "draw_semantic", "instance_colors", "instance_label",
    "jitter_color", "level_counts", "level_for_box", "level_rule_text", "overlay_activation",
    "pca_components", "segment_colors", "semantic_colors", "text_color_for", "valid_cells",
    "visible_indices",
]
