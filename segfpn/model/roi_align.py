"""RoIAlign on CPU as two small matrix products per RoI, on channels-last features.

Same arguments and values as ``torchvision.ops.roi_align`` (up to float rounding, ~1e-7);
several times faster on CPU, where torchvision's kernel runs on one thread. Used by
:class:`~segfpn.model.poolers.LevelRoIPooler` at inference; on CUDA and whenever gradients are
needed, torchvision's kernel runs.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align as tv_roi_align


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (same arguments, same values up to float rounding, ~1e-7).

    On CPU without autograd, bilinear sampling is separable: a RoI's output is ``Ay @ F @ Ax^T``
    with ``Ay`` [P, h], ``Ax`` [Q, w] the sampling weights of its rows and columns and ``F`` the
    [h, w, C] window of the feature map it touches. That is two small matrix products on a view of
    channels-last features, no gather, several times faster than torchvision's CPU kernel (which is
    single-threaded). Elsewhere (CUDA, or when gradients are needed) torchvision's kernel runs.

    features: [B, C, H, W] (channels-last is read in place); rois: [R, 5] (batch index, x0, y0,
    x1, y1) in input pixels. Returns [R, C, P, Q] in channels-last memory order.
    """
    if features.device.type != "cpu" or torch.is_grad_enabled() and (features.requires_grad or rois.requires_grad):
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    _, channels, height, width = features.shape
    out = features.new_zeros((rois.shape[0], ph, pw, channels), dtype=torch.float32)
    if rois.shape[0] == 0:
        return out.permute(0, 3, 1, 2).to(features.dtype)
    rois = rois.float()
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x0
    roi_h = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(x0, sampling_ratio, dtype=torch.int64)
    else:
        grid_h, grid_w = torch.ceil(roi_h / ph).to(torch.int64), torch.ceil(roi_w / pw).to(torch.int64)
    row_start, row_weights, rows = _axis_weights(y0, roi_h, ph, grid_h, height)
    col_start, col_weights, cols = _axis_weights(x0, roi_w, pw, grid_w, width)
    # Low-precision features (bf16 / fp16 modes) are read in float32: converting the level once
    # costs less than converting every window.
    nhwc = features.permute(0, 2, 3, 1).float()
    if not nhwc.is_contiguous():
        nhwc = nhwc.contiguous()
    jobs = list(zip(range(rois.shape[0]), rois[:, 0].to(torch.int64).tolist(), row_start.tolist(), rows.tolist(),
                    col_start.tolist(), cols.tolist()))
    jobs = [j for j in jobs if j[3] > 0 and j[5] > 0]
    # float32 throughout, even under bf16 autocast (small bf16 matrix products are slow on CPU).
    # The calling thread runs every RoI: a worker pool measured slower (hand-offs cost more than the
    # tiny products gain), and torch.set_num_threads() in a worker would change every new thread.
    with torch.autocast("cpu", enabled=False):
        for r, b, y, h, x, w in jobs:
            window = nhwc[b, y:y + h, x:x + w].reshape(h, w * channels)
            pooled_rows = torch.mm(row_weights[r, :, :h], window).view(ph, w, channels)
            torch.matmul(col_weights[r, :, :w], pooled_rows, out=out[r])
    return out.permute(0, 3, 1, 2).to(features.dtype)


def _axis_weights(start: torch.Tensor, size: torch.Tensor, pooled: int, grid: torch.Tensor,
                  length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RoIAlign's sampling along one axis, as weights over a window of the feature map.

    start, size: [R] the RoIs' extent along the axis in feature cells; grid: [R] samples per bin;
    length: the feature map's size. Sample positions, the border rules and the bilinear weights
    are torchvision's (``pre_calc_for_bilinear_interpolate``). Returns (window start [R] int64,
    weights [R, pooled, span] float32 with the 1/grid average folded in, window size [R] int64).
    """
    num = start.shape[0]
    most = max(int(grid.max()), 1)
    bin_size = size / pooled
    cell = torch.arange(pooled, dtype=start.dtype, device=start.device)
    sample = torch.arange(most, dtype=start.dtype, device=start.device)
    gridf = grid.to(start.dtype).clamp(min=1)
    # yy = roi_start + ph * bin_size + (iy + .5) * bin_size / grid, in torchvision's operation order.
    pos = (start[:, None, None] + cell[None, :, None] * bin_size[:, None, None]) \
        + (sample[None, None, :] + 0.5) * bin_size[:, None, None] / gridf[:, None, None]
    valid = (sample[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.to(torch.int64)  # truncation, as torchvision's (int) cast; pos >= 0 here
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    zero = torch.zeros((), dtype=pos.dtype, device=pos.device)
    w_low = torch.where(valid, (1.0 - frac) / gridf[:, None, None], zero)
    w_high = torch.where(valid, frac / gridf[:, None, None], zero)
    far = torch.full_like(low, 1 << 40)
    first = torch.where(valid, low, far).amin(dim=(1, 2))
    last = torch.where(valid, high, -far).amax(dim=(1, 2))
    extent = (last - first + 1).clamp(min=0)
    first = torch.where(extent > 0, first, torch.zeros_like(first))
    span = max(int(extent.max()), 1)
    weights = torch.zeros((num, pooled, span), dtype=pos.dtype, device=pos.device)
    weights.scatter_add_(2, (low - first[:, None, None]).clamp(0, span - 1), w_low)
    weights.scatter_add_(2, (high - first[:, None, None]).clamp(0, span - 1), w_high)
    return first, weights, extent
