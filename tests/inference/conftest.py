"""Tiny random box-only models (Faster R-CNN, RetinaNet) saved as native files, for the CLI tests."""

import pytest


@pytest.fixture(scope="session")
def box_only_weights(tmp_path_factory):
    """{arch: path} of tiny random Faster R-CNN and RetinaNet .safetensors files (COCO's 80 classes,
    detection score threshold 0), built as tests/model/test_box_only.py builds them; Faster R-CNN
    keeps 100 proposals (not 1000), which makes its RoI pooling on a CPU ten times quicker."""
    import dataclasses

    import torch

    from segfpn.categories import coco_instance_categories
    from segfpn.checkpoints.loading import save_native
    from segfpn.config import ARCHITECTURES
    from segfpn.model.build import build_model

    from model.test_box_only import tiny

    folder = tmp_path_factory.mktemp("box_only_weights")
    paths = {}
    for arch in ("faster_rcnn_R_50_FPN", "retinanet_R_50_FPN"):
        torch.manual_seed(0)
        config = tiny(ARCHITECTURES[arch]())
        if config.rpn is not None:
            config = config.replace(rpn=dataclasses.replace(config.rpn, pre_nms_topk=200, post_nms_topk=100))
        model = build_model(config).eval()
        with torch.no_grad():  # spread the class scores, so that a score threshold has something to choose
            for name, p in model.named_parameters():
                if name.endswith(("cls_score.weight", "cls_score.bias")):
                    p.normal_(0, 0.5)
        paths[arch] = save_native(folder / f"{arch}.safetensors", model, coco_instance_categories(), arch=arch)
    return paths
