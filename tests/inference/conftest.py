"""Tiny random box-only models (Faster R-CNN, RetinaNet) saved as native files, for the CLI tests."""

import pytest


@pytest.fixture(scope="session")
def box_only_weights(tmp_path_factory):
    """{arch: path} of tiny random Faster R-CNN and RetinaNet .safetensors files (COCO's 80 classes,
    detection score threshold 0), built with tests/testdata.py's tiny detectors; Faster R-CNN
    keeps 100 proposals (not 1000), which makes its RoI pooling on a CPU ten times quicker."""
    import dataclasses

    from segfpn.config import ARCHITECTURES

    from testdata import save_random_detector, tiny_detector_config

    folder = tmp_path_factory.mktemp("box_only_weights")
    paths = {}
    for arch in ("faster_rcnn_R_50_FPN", "retinanet_R_50_FPN"):
        config = tiny_detector_config(ARCHITECTURES[arch]())
        if config.rpn is not None:
            config = config.replace(rpn=dataclasses.replace(config.rpn, pre_nms_topk=200, post_nms_topk=100))
        paths[arch] = save_random_detector(folder / f"{arch}.safetensors", config, arch=arch, class_score_spread=0.5)
    return paths
