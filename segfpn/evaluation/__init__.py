"""Evaluation: COCO box/mask AP (pycocotools) and panoptic quality, image by image."""

from segfpn.evaluation.coco_ap import (COCO_METRIC_NAMES, coco_ap, coco_box_and_mask_ap,
                                       format_ap_table, load_coco_gt)
from segfpn.evaluation.evaluate import (evaluate, evaluate_files, format_metrics, register_cli,
                                        run_eval_command)
from segfpn.evaluation.panoptic_quality import (CategoryStats, PanopticQuality, format_pq_table,
                                                match_segments, pq_compute_files,
                                                read_panoptic_png)

__all__ = [
    "COCO_METRIC_NAMES", "CategoryStats", "PanopticQuality", "coco_ap", "coco_box_and_mask_ap",
    "evaluate", "evaluate_files", "format_ap_table", "format_metrics", "format_pq_table",
    "load_coco_gt", "match_segments", "pq_compute_files", "read_panoptic_png", "register_cli",
    "run_eval_command",
]
