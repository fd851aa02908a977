"""Checkpoint files: every key of the real model-zoo layouts maps, hostile or broken files are refused
with a clear message, and segfpn's own safetensors format round-trips."""

import collections
import json
import os
import pickle

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


@pytest.mark.parametrize("manifest, arch, has_semantic", [
    ("d2_panoptic_fpn_R_50_keys.json", "panoptic_fpn_R_50", True),
    ("d2_mask_rcnn_R_50_FPN_keys.json", "mask_rcnn_R_50_FPN", False),
])
def test_every_key_of_the_full_size_model_zoo_file_maps(tmp_path, manifest, arch, has_semantic):
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
    weights = [e for e in entries if not e["key"].startswith("proposal_generator.anchor_generator.cell_anchors")]
    assert len(loaded.report.matched) == len(weights) == spec["num_keys_current_state_dict"]
    cfg = loaded.config
    assert (cfg.backbone.stem_channels, cfg.backbone.res2_out_channels, cfg.fpn.out_channels) == (64, 256, 256)
    assert cfg.box_head.fc_channels == (1024, 1024) and cfg.num_classes == 80
    assert (cfg.semantic_head is not None) == has_semantic
    state = loaded.model.state_dict()
    assert float(state["roi_heads.box_head.fcs.1.weight"][0, 0]) == pytest.approx(
        arrays["roi_heads.box_head.fc2.weight"][0, 0])
    assert float(state["backbone.stages.c4.5.conv3.norm.running_var"][0]) == pytest.approx(
        arrays["backbone.bottom_up.res4.5.conv3.norm.running_var"][0])


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
    with pytest.raises(CheckpointError, match="not of a torchvision Mask R-CNN or a detectron2"):
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
