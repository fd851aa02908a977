"""Checkpoint files: every key of the real model-zoo layouts maps, hostile or broken files are refused
with a clear message, and segfpn's own safetensors format round-trips."""

import collections
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch

import segfpn
from segfpn.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from segfpn.checkpoints.loading import load_checkpoint
from segfpn.cli import main as cli_main

from testdata import DATA, load_rgb


def _write_d2_pickle(path, arrays: dict) -> None:
    model = collections.OrderedDict((k, v) for k, v in arrays.items())
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=3)


@pytest.mark.parametrize("manifest, arch", [
    ("d2_panoptic_fpn_R_50_keys.json", "panoptic_fpn_R_50"),
    ("d2_mask_rcnn_R_50_FPN_keys.json", "mask_rcnn_R_50_FPN"),
    ("d2_faster_rcnn_R_50_FPN_keys.json", "faster_rcnn_R_50_FPN"),
    ("d2_retinanet_R_50_FPN_keys.json", "retinanet_R_50_FPN"),
])
def test_every_key_of_the_full_size_model_zoo_file_maps(tmp_path, manifest, arch):
    spec = json.loads((DATA / manifest).read_text())
    entries = [k for k in spec["keys"] if k["in_model_zoo_pkl"]]
    assert len(entries) == spec["num_keys_model_zoo_pkl"]
    # Each tensor gets a distinct constant so a swapped pair would show after loading.
    arrays = {e["key"]: np.full(e["shape"], i / 1000.0, dtype=np.float32) for i, e in enumerate(entries)}
    path = tmp_path / "model_final.pkl"
    _write_d2_pickle(path, arrays)
    loaded = load_checkpoint(path)
    assert loaded.arch == arch and loaded.source_format == "detectron2"
    assert loaded.report.ok
    weights = [e for e in entries if "anchor_generator.cell_anchors" not in e["key"]]
    assert len(loaded.report.matched) == len(weights) == spec["num_keys_current_state_dict"]
    assert len(loaded.report.ignored) == 0 and len(entries) - len(weights) == 5
    cfg = loaded.config
    assert (cfg.backbone.stem_channels, cfg.backbone.res2_out_channels, cfg.fpn.out_channels) == (64, 256, 256)
    assert cfg.num_classes == 80 and cfg.backbone.depth == 50
    assert (cfg.semantic_head is not None) == arch.startswith("panoptic")
    assert cfg.has_masks == arch.startswith(("panoptic", "mask"))
    state = loaded.model.state_dict()
    if cfg.detector == "rcnn":
        assert cfg.box_head.fc_channels == (1024, 1024)
        assert float(state["roi_heads.box_head.fcs.1.weight"][0, 0]) == pytest.approx(
            arrays["roi_heads.box_head.fc2.weight"][0, 0])
    else:
        assert cfg.fpn.top_block == "p6p7_from_c5" and cfg.retina_head.num_convs == 4
        for ours, theirs in [("head.cls_subnet.3.conv.weight", "head.cls_subnet.6.weight"),
                             ("head.bbox_pred.bias", "head.bbox_pred.bias"),
                             ("fpn.top_block.p6.weight", "backbone.top_block.p6.weight"),
                             ("fpn.lateral.p3.conv.weight", "backbone.fpn_lateral3.weight")]:
            assert float(state[ours].flatten()[0]) == pytest.approx(float(arrays[theirs].flatten()[0])), ours
    assert float(state["backbone.stages.c4.5.conv3.norm.running_var"][0]) == pytest.approx(
        arrays["backbone.bottom_up.res4.5.conv3.norm.running_var"][0])


def _torchvision_state(builder_name: str) -> dict[str, torch.Tensor]:
    """torchvision's ``builder_name`` state dict (built on the meta device) with a distinct
    constant in each tensor."""
    from torchvision.models import detection

    with torch.device("meta"):
        model = getattr(detection, builder_name)(weights=None, weights_backbone=None)
    return {k: torch.full(v.shape, i / 1000.0) for i, (k, v) in enumerate(model.state_dict().items())}


@pytest.mark.parametrize("builder_name", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
                                          "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_torchvision_detectors_are_recognised_and_every_key_maps(tmp_path, builder_name):
    state = _torchvision_state(builder_name)
    path = tmp_path / "model.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert loaded.arch == builder_name and loaded.source_format == "torchvision" and loaded.report.ok
    assert len(loaded.report.matched) == len([k for k in state if not k.endswith("num_batches_tracked")])
    assert loaded.config.num_classes == 90 and not loaded.config.has_masks
    assert loaded.categories.things[0].name == "person"


@pytest.mark.parametrize("builder_name, top_block", [("retinanet_resnet50_fpn", "p6p7_from_p5"),
                                                     ("retinanet_resnet50_fpn_v2", "p6p7_from_c5")])
def test_torchvision_retinanet_background_slot_is_dropped_and_p6_source_read(tmp_path, builder_name, top_block):
    """torchvision scores 91 classes per anchor, slot 0 the unused background: channel a * 91 + k.
    segfpn keeps the 90 others in the same order (channel a * 90 + k - 1)."""
    state = _torchvision_state(builder_name)
    state["head.classification_head.cls_logits.bias"] = torch.arange(9 * 91, dtype=torch.float32)
    path = tmp_path / "model.pth"
    torch.save(state, path)
    loaded = load_checkpoint(path)
    assert loaded.config.fpn.top_block == top_block
    bias = loaded.model.state_dict()["head.cls_score.bias"]
    expected = torch.tensor([a * 91 + k for a in range(9) for k in range(1, 91)], dtype=torch.float32)
    assert torch.equal(bias, expected)


def test_torchvision_retinanet_of_before_0_13_maps(tmp_path):
    """The COCO_V1 RetinaNet file predates torchvision 0.13's layout: its subnets are
    ``conv.<0,2,4,6>.weight`` (torchvision renames them on load, ``_v1_to_v2_weights``)."""
    state = _torchvision_state("retinanet_resnet50_fpn")
    old = {re.sub(r"(head\.\w+_head\.conv)\.(\d)\.0\.", lambda m: f"{m[1]}.{2 * int(m[2])}.", k): v
           for k, v in state.items()}
    assert "head.classification_head.conv.6.weight" in old and "head.regression_head.conv.0.0.weight" not in old
    path = tmp_path / "model.pth"
    torch.save(old, path)
    loaded = load_checkpoint(path)
    assert loaded.arch == "retinanet_resnet50_fpn" and loaded.report.ok
    assert torch.equal(loaded.model.state_dict()["head.bbox_subnet.3.conv.weight"],
                       state["head.regression_head.conv.3.0.weight"])


def test_arch_may_choose_among_the_files_own_kind(tmp_path, d2_mini_checkpoint):
    """A Mask R-CNN file as Faster R-CNN (strict: its mask head is unexpected; not strict: a
    box-only model); a RetinaNet architecture for it is refused, naming the architectures that fit."""
    state = pickle.loads(d2_mini_checkpoint.read_bytes(), encoding="latin1")["model"]
    state = {k: v for k, v in state.items() if not k.startswith("sem_seg_head.")}
    path = tmp_path / "mask_rcnn.pkl"
    _write_d2_pickle(path, state)
    with pytest.raises(CheckpointError, match="unexpected in the checkpoint: roi_heads.mask_head"):
        load_checkpoint(path, arch="faster_rcnn_R_50_FPN")
    boxes_only = load_checkpoint(path, arch="faster_rcnn_R_50_FPN", strict=False)
    assert boxes_only.config.mask_head is None and boxes_only.model.roi_heads.mask_head is None
    with pytest.raises(CheckpointError, match=r"detectron2 checkpoint \(mask_rcnn_R_50_FPN\); "
                                              r"arch='retinanet_R_50_FPN' is not a detectron2 R-CNN architecture "
                                              r"\(those are mask_rcnn_R_50_FPN"):
        load_checkpoint(path, arch="retinanet_R_50_FPN")


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = marker
    _RunsCode.marker = marker
    path = tmp_path / "model_final_evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": evil}}))
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle (posix|os).system"):
        segfpn.load(path, device="cpu")
    assert not marker.exists()


def test_torch_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _RunsCode.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"backbone.body.conv1.weight": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        segfpn.load(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, this is not a checkpoint\n", "not a checkpoint"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "not a checkpoint"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        segfpn.load(path, device="cpu")


def test_truncated_checkpoints(tmp_path, d2_mini_checkpoint):
    data = d2_mini_checkpoint.read_bytes()
    cut = tmp_path / "truncated.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        segfpn.load(cut, device="cpu")
    zipped = tmp_path / "truncated.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "full.pth")
    zipped.write_bytes((tmp_path / "full.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        segfpn.load(zipped, device="cpu")


def test_missing_and_unexpected_keys_are_named(tmp_path, d2_mini_checkpoint):
    state = pickle.loads(d2_mini_checkpoint.read_bytes(), encoding="latin1")["model"]
    del state["roi_heads.box_head.fc2.bias"]
    state["roi_heads.box_head.fc9.weight"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "broken.pkl"
    _write_d2_pickle(path, state)
    with pytest.raises(CheckpointError) as err:
        segfpn.load(path, device="cpu")
    assert "missing from the checkpoint: roi_heads.box_head.fcs.1.bias" in str(err.value)
    assert "unexpected in the checkpoint: roi_heads.box_head.fcs.8.weight" in str(err.value)


def test_checkpoint_for_another_architecture(d2_mini_checkpoint):
    with pytest.raises(CheckpointError, match="detectron2 checkpoint \\(panoptic_fpn_R_50\\).*maskrcnn_resnet50_fpn"):
        segfpn.load(d2_mini_checkpoint, arch="maskrcnn_resnet50_fpn", device="cpu")
    with pytest.raises(CheckpointError, match="unknown arch 'resnet'"):
        segfpn.load(d2_mini_checkpoint, arch="resnet", device="cpu")


def test_torch_state_dict_of_another_model(tmp_path):
    path = tmp_path / "classifier.pth"
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, path)
    with pytest.raises(CheckpointError, match="not of a torchvision detection model .* or a detectron2"):
        segfpn.load(path, device="cpu")


def test_convert_to_safetensors_round_trip(tmp_path, d2_mini_checkpoint):
    target = tmp_path / "mini.safetensors"
    assert cli_main(["convert", str(d2_mini_checkpoint), str(target)]) == 0
    assert target.read_bytes()[8:9] == b"{" and not list(tmp_path.glob("*.part"))
    original = segfpn.load(d2_mini_checkpoint, device="cpu")
    converted = segfpn.load(target, device="cpu")
    assert converted.arch == original.arch and converted.config == original.config
    assert converted.categories == original.categories
    image = load_rgb("voc2007_000001_portrait.jpg")
    a, b = original.predict(image), converted.predict(image)
    assert np.array_equal(a.instances.boxes, b.instances.boxes)
    assert np.array_equal(a.panoptic.segment_ids, b.panoptic.segment_ids)


@pytest.mark.parametrize("fixture, arch", [("d2_retinanet_mini/retinanet_mini.pkl", "retinanet_R_50_FPN"),
                                           ("d2_faster_rcnn_mini/faster_rcnn_mini.pkl", "faster_rcnn_R_50_FPN")])
def test_box_only_models_convert_to_safetensors(tmp_path, fixture, arch):
    target = tmp_path / "mini.safetensors"
    assert cli_main(["convert", str(DATA / fixture), str(target)]) == 0
    original, converted = segfpn.load(DATA / fixture, device="cpu"), segfpn.load(target, device="cpu")
    assert converted.arch == original.arch == arch and converted.config == original.config
    assert converted.categories == original.categories
    image = load_rgb("voc2007_000001_portrait.jpg")
    a, b = original.predict(image).instances, converted.predict(image).instances
    assert a.masks is None and b.masks is None and len(a) > 0
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.levels, b.levels)


def test_torch_load_is_only_called_weights_only():
    import ast
    import pathlib

    for path in pathlib.Path(segfpn.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load" \
                    and getattr(node.func.value, "id", None) == "torch":
                kwargs = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kwargs and kwargs["weights_only"].value is True, f"{path}:{node.lineno}"


def test_legacy_torch_save_format_loads(tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False): a pickle stream, not a zip."""
    from segfpn.checkpoints.loading import read_state

    path = tmp_path / "legacy.pth"
    torch.save({"backbone.body.conv1.weight": torch.ones(2, 3)}, path, _use_new_zipfile_serialization=False)
    tensors, _ = read_state(path)
    assert torch.equal(tensors["backbone.body.conv1.weight"], torch.ones(2, 3))
