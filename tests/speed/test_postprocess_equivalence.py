"""The batched mask pasting and region-wise panoptic fusion give exactly what the straightforward
per-mask code gives (the code they replaced, kept here as the reference), for both pasting
semantics, with boxes at and across the image border, tiny boxes and large ones."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segfpn.model import mask_head, postprocess
from segfpn.model.fusion import fuse_panoptic
from segfpn.model.mask_head import paste_mask_crops, paste_masks
from segfpn.model.postprocess import semantic_classes_per_pass, semantic_labels_to_image, semantic_logits_to_image
from segfpn.model.semantic_head import upsample_logits
from segfpn.structures import InstanceMasks


def reference_paste_box_resize(mask, box, out, threshold):
    """torchvision's paste_mask_in_image, one mask at a time (pad, grow the box, resize, crop)."""
    m = mask.shape[-1]
    scale = (m + 2.0) / m
    padded = F.pad(mask, (1, 1, 1, 1))
    half_w = (box[2] - box[0]) * 0.5 * scale
    half_h = (box[3] - box[1]) * 0.5 * scale
    cx = (box[2] + box[0]) * 0.5
    cy = (box[3] + box[1]) * 0.5
    x0, y0, x1, y1 = (int(v) for v in torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h)).to(torch.int64))
    bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    resized = F.interpolate(padded[None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    ih, iw = out.shape
    cx0, cx1 = max(x0, 0), min(x1 + 1, iw)
    cy0, cy1 = max(y0, 0), min(y1 + 1, ih)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    out[cy0:cy1, cx0:cx1] = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] >= threshold


def reference_paste_grid_sample(mask, box, out, threshold):
    """detectron2's _do_paste_mask on CPU (skip_empty), one mask at a time."""
    ih, iw = out.shape
    x0 = max(int(torch.floor(box[0]).item()) - 1, 0)
    y0 = max(int(torch.floor(box[1]).item()) - 1, 0)
    x1 = min(int(torch.ceil(box[2]).item()) + 1, iw)
    y1 = min(int(torch.ceil(box[3]).item()) + 1, ih)
    if x1 <= x0 or y1 <= y0:
        return
    ys = torch.arange(y0, y1, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, dtype=torch.float32) + 0.5
    gy = (ys - box[1]) / (box[3] - box[1]) * 2 - 1
    gx = (xs - box[0]) / (box[2] - box[0]) * 2 - 1
    grid = torch.stack((gx[None, :].expand(len(gy), -1), gy[:, None].expand(-1, len(gx))), dim=2)
    sampled = F.grid_sample(mask[None, None].float(), grid[None], align_corners=False)[0, 0]
    out[y0:y1, x0:x1] = sampled >= threshold


REFERENCE = {"box_resize": reference_paste_box_resize, "grid_sample": reference_paste_grid_sample}


def reference_paste(masks, boxes, image_size, method, threshold=0.5):
    out = torch.zeros((len(masks), *image_size), dtype=torch.bool)
    for i in range(len(masks)):
        REFERENCE[method](masks[i], boxes[i], out[i], threshold)
    return out


def random_boxes(generator, n, image_size):
    h, w = image_size
    kinds = torch.randint(0, 5, (n,), generator=generator)
    x0 = torch.rand(n, generator=generator) * (w + 40) - 20
    y0 = torch.rand(n, generator=generator) * (h + 40) - 20
    size = torch.rand(n, 2, generator=generator)
    # Tiny (under a pixel), small, medium, image-sized, and boxes that stick out of the image.
    scale = torch.tensor([0.8, 12.0, 0.4 * max(h, w), 1.3 * max(h, w), 0.6 * max(h, w)])[kinds]
    bw, bh = size[:, 0] * scale + 0.05, size[:, 1] * scale + 0.05
    boxes = torch.stack((x0, y0, x0 + bw, y0 + bh), dim=1)
    # Some boxes exactly on the border, some on integer coordinates.
    boxes[::7, 0], boxes[::7, 1] = 0.0, 0.0
    boxes[1::7, 2], boxes[1::7, 3] = float(w), float(h)
    boxes[2::7] = boxes[2::7].round()
    return boxes


@pytest.mark.parametrize("method", ["box_resize", "grid_sample"])
@pytest.mark.parametrize("image_size", [(97, 131), (240, 180)])
def test_paste_equals_per_mask_reference(method, image_size):
    generator = torch.Generator().manual_seed(hash((method, image_size)) % 2**31)
    n = 150
    # Smooth-ish probabilities with exact 0.5 values present, the threshold's edge case.
    masks = torch.rand(n, 28, 28, generator=generator)
    masks = F.avg_pool2d(masks[:, None], 3, 1, 1)[:, 0]
    masks[:, 10:12, 10:12] = 0.5
    boxes = random_boxes(generator, n, image_size)
    if method == "grid_sample":  # detectron2 clips its boxes to the image first
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        masks, boxes = masks[keep], boxes[keep]
    ours = paste_masks(masks, boxes, image_size, method=method, threshold=0.5)
    expected = reference_paste(masks, boxes, image_size, method)
    assert ours.dtype == torch.bool and ours.shape == expected.shape
    assert ours.any() and torch.equal(ours, expected)
    # Each crop is its region of the full mask, and the regions hold every pixel of each mask.
    crops, regions = paste_mask_crops(masks, boxes, image_size, method=method, threshold=0.5)
    inside = torch.zeros_like(ours)
    for i, (crop, (y0, y1, x0, x1)) in enumerate(zip(crops, regions.tolist())):
        assert 0 <= y0 and y1 <= image_size[0] and 0 <= x0 and x1 <= image_size[1]
        assert tuple(crop.shape) == (max(y1 - y0, 0), max(x1 - x0, 0))
        if crop.numel():
            assert torch.equal(crop, ours[i, y0:y1, x0:x1])
            inside[i, y0:y1, x0:x1] = True
    assert not (ours & ~inside).any()


def test_grid_sample_paste_in_small_chunks_is_unchanged(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(40, 28, 28, generator=generator)
    boxes = random_boxes(generator, 40, (120, 160))
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 160)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 120)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    masks, boxes = masks[keep], boxes[keep]
    whole = paste_masks(masks, boxes, (120, 160), method="grid_sample", threshold=0.5)
    monkeypatch.setattr(mask_head, "PASTE_CHUNK_PIXELS", 500)
    chunked = paste_masks(masks, boxes, (120, 160), method="grid_sample", threshold=0.5)
    assert torch.equal(whole, chunked)
    assert torch.equal(whole, reference_paste(masks, boxes, (120, 160), "grid_sample"))


@pytest.mark.parametrize("method", ["box_resize", "grid_sample"])
def test_paste_no_masks(method):
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (10, 12), method=method, threshold=0.5)
    assert out.shape == (0, 10, 12) and out.dtype == torch.bool


def reference_fuse(masks, scores, semantic_labels, *, overlap_threshold, stuff_area_threshold,
                   instance_score_threshold, things_label):
    """detectron2's combine_semantic_and_instance_outputs, on full-image masks."""
    segment_ids = torch.zeros(semantic_labels.shape, dtype=torch.int32)
    segments = []
    for index in torch.argsort(-scores).tolist():
        score = float(scores[index])
        if score < instance_score_threshold:
            break
        mask = masks[index]
        area = int(mask.sum())
        if area == 0:
            continue
        free = segment_ids == 0
        taken = area - int((mask & free).sum())
        if taken / area > overlap_threshold:
            continue
        if taken > 0:
            mask = mask & free
        segment_ids[mask] = len(segments) + 1
        segments.append((len(segments) + 1, True, int(mask.sum()), index, score, None))
    for label in torch.unique(semantic_labels).tolist():
        if label == things_label:
            continue
        mask = (semantic_labels == label) & (segment_ids == 0)
        area = int(mask.sum())
        if area < stuff_area_threshold:
            continue
        segment_ids[mask] = len(segments) + 1
        segments.append((len(segments) + 1, False, area, None, None, label))
    return segment_ids, segments


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("stuff_area_threshold", [0, 30, 400])
@pytest.mark.parametrize("with_regions", [False, True], ids=["tight", "from_paste"])
def test_fusion_equals_reference(seed, stuff_area_threshold, with_regions):
    generator = torch.Generator().manual_seed(seed)
    size = (90, 120)
    n = 40
    boxes = random_boxes(generator, n, size)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
    crops, regions = paste_mask_crops(torch.rand(n, 28, 28, generator=generator), boxes, size,
                                      method="box_resize", threshold=0.5)
    crops[3] = torch.zeros_like(crops[3])  # an empty mask in a non-empty region
    masks = torch.zeros((n, *size), dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(regions.tolist()):
        masks[i, y0:y1, x0:x1] = crops[i]
    if not with_regions:  # crops cut to the pixels, as InstanceMasks.from_array makes them
        tight = InstanceMasks.from_array(masks.numpy())
        crops, regions = [torch.from_numpy(c) for c in tight.crops], torch.from_numpy(tight.regions)
    scores = torch.rand(n, generator=generator)
    scores[5] = scores[6]  # a tie
    coarse = torch.randint(0, 7, (1, 1, 9, 12), generator=generator).float()
    semantic = F.interpolate(coarse, size=size, mode="nearest")[0, 0].long()
    semantic[semantic == 6] = 9  # labels need not be contiguous
    kwargs = dict(overlap_threshold=0.5, stuff_area_threshold=stuff_area_threshold, instance_score_threshold=0.3,
                  things_label=0)
    ids, segments = fuse_panoptic(crops, regions, scores, semantic, **kwargs)
    ref_ids, ref_segments = reference_fuse(masks, scores, semantic, **kwargs)
    assert torch.equal(ids, ref_ids)
    assert [(s.id, s.isthing, s.area, s.instance, s.score, s.semantic_label) for s in segments] == ref_segments
    assert any(s.isthing for s in segments)
    assert stuff_area_threshold > 30 or any(not s.isthing for s in segments)


def test_crops_of_full_masks_bound_every_pixel():
    masks = np.zeros((3, 10, 12), dtype=bool)
    masks[0, 2:5, 3:4] = True
    masks[0, 7, 11] = True
    masks[2, 0, 0] = True
    cropped = InstanceMasks.from_array(masks)
    assert cropped.regions.tolist() == [[2, 8, 3, 12], [0, 0, 0, 0], [0, 1, 0, 1]]
    assert np.array_equal(np.asarray(cropped), masks) and cropped[0].shape == (10, 12)
    assert np.array_equal(np.asarray(cropped[[2, 0]]), masks[[2, 0]]) and cropped.areas().tolist() == [4, 0, 1]


@pytest.mark.parametrize("num_classes", [54, 70, 5])
@pytest.mark.parametrize("input_size,output_size", [((96, 120), (96, 120)), ((96, 120), (131, 163)),
                                                     ((90, 117), (61, 80))], ids=["same", "larger", "smaller"])
def test_semantic_labels_a_few_classes_at_a_time_equal_the_whole_argmax(num_classes, input_size, output_size):
    generator = torch.Generator().manual_seed(num_classes)
    coarse = torch.randn(1, num_classes, 24, 32, generator=generator)  # padded input 96x128, stride 4
    coarse[:, 3] += 0.5  # a class that wins often, so every pass takes part
    whole = semantic_logits_to_image(upsample_logits(coarse, 4), input_size, output_size).argmax(dim=1)[0]
    ours = semantic_labels_to_image(coarse, input_size, output_size, upsample=4)
    assert ours.shape == output_size and ours.dtype == torch.uint8
    assert torch.equal(ours.long(), whole)
    assert len(torch.unique(ours)) > min(num_classes, 5) // 2
    # Stride 1 (logits already at the input size) takes the same path.
    full = upsample_logits(coarse, 4)
    assert torch.equal(semantic_labels_to_image(full, input_size, output_size).long(), whole)


def test_large_outputs_take_fewer_classes_per_pass():
    assert semantic_classes_per_pass((800, 1200), 54) == 32
    assert semantic_classes_per_pass((2000, 2000), 54) == 16  # a multiple of the vector width
    assert semantic_classes_per_pass((4000, 6000), 54) == 1  # 384 MB hold 4 classes: one at a time
    assert semantic_classes_per_pass((4000, 6000), 3) == 3  # all three in 288 MB
    assert semantic_classes_per_pass((6000, 8000), 3) == 1
    assert semantic_classes_per_pass((100, 100), 5) == 5


@pytest.mark.parametrize("budget_classes", [1, 3, 7])
def test_semantic_labels_one_class_at_a_time_agree_with_the_whole_argmax(monkeypatch, budget_classes):
    # Passes of fewer than 16 classes may round the resize differently in the last bit: the
    # labels then differ at most where two classes are within float noise of each other.
    generator = torch.Generator().manual_seed(budget_classes)
    coarse = torch.randn(1, 54, 24, 32, generator=generator)
    input_size, output_size = (90, 117), (173, 229)
    logits = semantic_logits_to_image(upsample_logits(coarse, 4), input_size, output_size)[0]
    top2 = logits.topk(2, dim=0).values
    monkeypatch.setattr(postprocess, "SEMANTIC_PASS_BYTES", budget_classes * 4 * output_size[0] * output_size[1])
    assert semantic_classes_per_pass(output_size, 54) == 1
    ours = semantic_labels_to_image(coarse, input_size, output_size, upsample=4).long()
    confident = (top2[0] - top2[1]) > 1e-4
    assert torch.equal(ours[confident], logits.argmax(dim=0)[confident])
    assert confident.float().mean() > 0.99
