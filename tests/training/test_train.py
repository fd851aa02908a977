"""The training loop end to end on a tiny Panoptic FPN: losses fall, resume is exact, NaN stops,
evaluation keeps the best checkpoint, fine-tuning and ImageNet initialisation keep the right weights."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

import segfpn
from segfpn.checkpoints.errors import CheckpointError
from segfpn.config import BackboneConfig, ModelConfig
from segfpn.model.detector import SegFPN
from segfpn.training import TrainingDiverged, train
from segfpn.training.checkpoint import STATE_FILE, find_last_checkpoint
from segfpn.training.config import config_from_dict
from segfpn.training.initialization import CLASS_SPECIFIC_PREFIXES, load_imagenet_backbone
from segfpn.training.trainer import Trainer

LOSSES = ("loss_rpn_objectness", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "loss_semantic")


@pytest.fixture(scope="module")
def synthetic_pair(tmp_path_factory):
    from segfpn.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic_pair")
    generate(root, num_images=2, seed=11, image_size=(128, 128), max_things=4, min_object_size=10.0, progress=False)
    return root


def test_every_loss_falls(tiny_config_dict, synthetic_pair):
    # Two images at one scale, no flip: the model can fit them in a few dozen iterations. Every
    # anchor is kept as a proposal so that the box head sees regression targets from the start
    # (with the usual top-k the first RoIs are mostly the ground-truth boxes, whose targets are 0).
    data = tiny_config_dict(solver__max_iter=60, solver__base_lr=0.01, data__flip_prob=0.0, data__min_sizes=[128])
    data["data"]["train"] = {"root": str(synthetic_pair), "synthetic": {"num_images": 2, "seed": 11}}
    data["model"]["rpn"].update(pre_nms_topk_train=2000, post_nms_topk_train=2000)
    result = train(config_from_dict(data), progress=False)
    history = result.history
    assert [r["iteration"] for r in history] == list(range(1, 61))
    for name in LOSSES:
        values = [r[name] for r in history]
        first, last = np.mean(values[:10]), np.mean(values[-10:])
        assert last < first, f"{name} did not fall: first 10 iterations {first:.4f}, last 10 {last:.4f}"


def test_resume_repeats_an_uninterrupted_run(tiny_config_dict, tmp_path):
    straight = train(config_from_dict(tiny_config_dict(output_dir=str(tmp_path / "a"))), progress=False)

    interrupted = tiny_config_dict(output_dir=str(tmp_path / "b"), checkpoint_period=3, data__num_workers=1)
    interrupted["solver"]["max_iter"] = 3
    first = train(config_from_dict(interrupted), progress=False)
    assert first.iteration == 3
    interrupted["solver"]["max_iter"] = 6
    resumed = train(config_from_dict(interrupted), resume=True, progress=False)

    assert [r["iteration"] for r in resumed.history] == [4, 5, 6]
    for a, b in zip(straight.history[3:], resumed.history):
        assert {k: a[k] for k in LOSSES} == {k: b[k] for k in LOSSES}
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), name

    folder = find_last_checkpoint(tmp_path / "b")
    assert folder.name == "checkpoint_0000006"
    umask = os.umask(0)
    os.umask(umask)
    for path, mode in ((folder, 0o777), (folder / STATE_FILE, 0o666), (folder / "model.safetensors", 0o666)):
        assert path.stat().st_mode & 0o777 == mode & ~umask, path  # the usual permissions, not mkstemp's 0600
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["iteration"] == 6 and len(state["rng"]) == 1
    assert yaml.safe_load(state["config"])["solver"]["max_iter"] == 6
    predictor = segfpn.load(folder / "model.safetensors", device="cpu")
    assert predictor.categories.thing_names == ["circle", "square", "triangle", "star"]
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [1, 2, 3, 4, 5, 6]

    # Resuming with a longer schedule follows the new config's learning rates.
    interrupted["solver"].update(max_iter=8, steps=[6], gamma=0.5)
    extended = train(config_from_dict(interrupted), resume=True, progress=False)
    assert [r["iteration"] for r in extended.history] == [7, 8]
    assert [r["lr"] for r in extended.history] == pytest.approx([0.01, 0.01])
    assert straight.history[5]["lr"] == pytest.approx(0.02)


def test_nan_loss_stops_with_the_iteration_and_the_loss(tiny_config_dict, monkeypatch):
    original = SegFPN.losses
    calls = []

    def losses(self, images, targets):
        out = original(self, images, targets)
        calls.append(1)
        if len(calls) == 3:
            out["loss_mask"] = out["loss_mask"] * float("nan")
        return out

    monkeypatch.setattr(SegFPN, "losses", losses)
    with pytest.raises(TrainingDiverged, match=r"loss_mask is nan at iteration 3"):
        train(config_from_dict(tiny_config_dict()), progress=False)


def test_evaluation_keeps_the_best_checkpoint(tiny_config_dict, synthetic_tiny, tmp_path):
    data = tiny_config_dict(eval_period=3, solver__max_iter=4)
    data["data"]["val"] = data["data"]["train"]
    result = train(config_from_dict(data), progress=False)
    run = tmp_path / "run"
    assert {"bbox", "segm", "panoptic"} <= set(result.metrics)
    assert result.best["metric"] == "panoptic.All.pq" and result.best["iteration"] in (3, 4)
    best = json.loads((run / "best_metrics.json").read_text())
    assert best["iteration"] == result.best["iteration"]
    assert (run / "model_best.safetensors").is_file() and (run / "model_final.safetensors").is_file()
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval" in x]
    assert [e["iteration"] for e in evals] == [3, 4]


def test_mask_rcnn_only_on_coco_instances_with_broken_annotations(tiny_config_dict, coco_mini_dir, tmp_path, caplog):
    instances = json.loads((coco_mini_dir / "annotations" / "instances_val2017.json").read_text())
    instances["images"].append(dict(instances["images"][0], id=4242, file_name="missing.jpg"))
    instances["annotations"].append({"id": 777, "image_id": 4242, "category_id": 1, "bbox": [0, 0, 5, 5],
                                     "segmentation": [[0, 0, 5, 0, 5, 5]], "iscrowd": 0, "area": 12})
    instances["annotations"].append(dict(instances["annotations"][0], id=778, bbox=[1, 2]))
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(instances))
    data = tiny_config_dict(solver__max_iter=3, data__categories="auto", model__semantic_head=None)
    data["data"]["train"] = {"images_dir": str(coco_mini_dir / "images"), "instances_json": str(path)}
    with caplog.at_level("WARNING"):
        result = train(config_from_dict(data), progress=False)
    assert result.model.semantic_head is None and result.config.model.num_classes == 80
    assert "loss_semantic" not in result.history[-1]
    assert "missing.jpg" in caplog.text and "778" in caplog.text


def test_finetuning_reinitialises_only_the_class_specific_layers(tiny_config_dict, coco_mini_dir, tmp_path):
    source = train(config_from_dict(tiny_config_dict(solver__max_iter=1)), progress=False)
    checkpoint = tmp_path / "run" / "model_final.safetensors"
    data = tiny_config_dict(output_dir=str(tmp_path / "finetune"), solver__max_iter=1, data__categories="auto",
                            init={"kind": "checkpoint", "path": str(checkpoint)})
    data["model"] = {"preset": "checkpoint", "rpn": {"post_nms_topk_train": 64}}
    annotations = coco_mini_dir / "annotations"
    data["data"]["train"] = {"images_dir": str(coco_mini_dir / "images"),
                             "instances_json": str(annotations / "instances_val2017.json"),
                             "panoptic_json": str(annotations / "panoptic_val2017.json")}
    trainer = Trainer(config_from_dict(data), progress=False)
    assert trainer.model.config.num_classes == 80 and trainer.model.config.semantic_head.num_classes == 54
    assert trainer.model.config.rpn.post_nms_topk_train == 64
    before, after = source.model.state_dict(), trainer.model.state_dict()
    for key, value in after.items():
        if key.startswith(CLASS_SPECIFIC_PREFIXES):
            assert value.shape != before[key].shape
        else:
            assert torch.equal(value, before[key]), key
    assert trainer.run().iteration == 1

    # Same classes: nothing is re-initialised.
    same = tiny_config_dict(output_dir=str(tmp_path / "same"), solver__max_iter=1,
                            init={"kind": "checkpoint", "path": str(checkpoint)})
    del same["model"]
    again = Trainer(config_from_dict(same), progress=False).model.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in again.items())


def test_imagenet_backbone_from_a_torchvision_resnet(tmp_path):
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    config = ModelConfig(num_classes=3, backbone=BackboneConfig(depth=18, stem_channels=64, res2_out_channels=64))
    model = SegFPN(config)
    report = load_imagenet_backbone(model, path)
    assert len(report.matched) == sum(1 for k in resnet.state_dict() if not k.startswith("fc.")
                                      and not k.endswith("num_batches_tracked"))
    state = model.state_dict()
    assert torch.equal(state["backbone.stem.conv.weight"], resnet.conv1.weight)
    assert torch.equal(state["backbone.stages.c3.0.shortcut.conv.weight"], resnet.layer2[0].downsample[0].weight)
    assert torch.equal(state["backbone.stages.c5.1.conv2.norm.running_var"], resnet.layer4[1].bn2.running_var)

    narrow_backbone = BackboneConfig(depth=18, stem_channels=16, res2_out_channels=32)
    narrow = SegFPN(ModelConfig(num_classes=3, backbone=narrow_backbone))
    with pytest.raises(CheckpointError, match="depth-18 backbone of stem 16"):
        load_imagenet_backbone(narrow, path)


def test_cli(tiny_config_dict, tmp_path, capsys):
    import argparse

    from segfpn.training.cli import main, register_cli

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict()))
    assert main([str(path), "--set", "solver.max_iter=2", "--no-progress"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    assert (tmp_path / "run" / "config.yaml").is_file()
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["train", str(path), "--resume"])
    assert args.resume and callable(args.func)
