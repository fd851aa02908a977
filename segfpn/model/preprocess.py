"""Image -> network input: resize (shorter side to min_size, longer at most max_size), normalise, pad."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segfpn.config import InputConfig
from segfpn.imageio import ImageError


@dataclass
class ImageBatch:
    """tensor: float [B, 3, Hp, Wp], zero-padded at the bottom/right to a multiple of the divisibility.
    image_sizes: (h, w) of each resized image before padding; original_sizes: (H, W) of the inputs."""

    tensor: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    @property
    def padded_size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[-2:])


def resized_size(height: int, width: int, config: InputConfig) -> tuple[int, int]:
    """(h, w) after scaling the shorter side to ``min_size`` with the longer side at most ``max_size``.

    Each rule is the reference's own arithmetic, because a one-pixel difference in the input
    size changes every feature map and so every detection:

    * "floor" (torchvision, ``GeneralizedRCNNTransform`` in eager mode): one scale, a Python
      float (double), ``min(min_size / short, max_size / long)``; ``F.interpolate`` then makes
      each side ``int(side * scale)``. (torchvision's float32 scale is its tracing path only;
      float32 here gave 799 instead of 800 for about half of all image sizes.)
    * "round" (detectron2, ``ResizeShortestEdge.get_output_shape``): the shorter side becomes
      ``min_size`` itself and the longer ``scale * side``, both multiplied by
      ``max_size / longer`` when the longer is above ``max_size``; then ``int(x + 0.5)``.

    Raises :class:`~segfpn.imageio.ImageError` when a side would become 0 pixels (an image far
    thinner than any the model can see, e.g. 50000x2).
    """
    if config.size_rounding == "floor":
        scale = min(config.min_size / min(height, width), config.max_size / max(height, width))
        new_h, new_w = int(height * scale), int(width * scale)
    else:
        short = float(config.min_size)
        scale = short / min(height, width)
        h, w = (short, scale * width) if height < width else (scale * height, short)
        if max(h, w) > config.max_size:
            shrink = config.max_size * 1.0 / max(h, w)
            h, w = h * shrink, w * shrink
        new_h, new_w = int(h + 0.5), int(w + 0.5)
    if new_h < 1 or new_w < 1:
        raise ImageError(f"image is {width}x{height} pixels: too thin for this model, whose input would "
                         f"be {new_w}x{new_h} pixels (shorter side to {config.min_size}, longer at most "
                         f"{config.max_size}); crop it to a less extreme aspect ratio")
    return new_h, new_w


def _normalise_(x: torch.Tensor, config: InputConfig) -> torch.Tensor:
    """``(x - mean) / std`` in place (``x`` float [3, H, W], freshly made by the caller): one
    full-resolution float copy of a large photo is 290 MB at 24 megapixels, so no second one."""
    mean = torch.tensor(config.pixel_mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(config.pixel_std, dtype=x.dtype, device=x.device)[:, None, None]
    return x.sub_(mean).div_(std)


def _float_chw(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A new float32 [3, H, W] copy of an RGB [H, W, 3] array (the normalisation works in place on it)."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).to(torch.float32, copy=True)


def _to_channel_order(x: torch.Tensor, config: InputConfig) -> torch.Tensor:
    return x.flip(0) if config.channel_order == "bgr" else x


def preprocess_image(image: np.ndarray, config: InputConfig, *,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 [H, W, 3] -> (normalised float32 [3, h, w] in the network's channel order, (h, w))."""
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, config)
    if not image.flags.writeable:
        image = image.copy()  # torch.from_numpy wants a writable array (e.g. not PIL's read-only view)
    scale_to_range = config.pixel_range / 255.0
    if config.resize_method == "pil_bilinear":
        if (new_h, new_w) != (height, width):
            image = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        x = _to_channel_order(_float_chw(image, device), config)
        if scale_to_range != 1.0:
            x.mul_(scale_to_range)
        return _normalise_(x, config), (new_h, new_w)
    # torchvision's order: normalise the full-size float image, then resize it.
    x = _to_channel_order(_float_chw(image, device), config)
    if config.pixel_range == 1.0:
        x.div_(255.0)
    else:
        x.mul_(scale_to_range)
    x = _normalise_(x, config)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
    return x, (new_h, new_w)


def batch_images(images: list[torch.Tensor], divisibility: int) -> torch.Tensor:
    """Zero-pad [3, h_i, w_i] images at the bottom/right into one [B, 3, Hp, Wp] tensor."""
    max_h = max(x.shape[1] for x in images)
    max_w = max(x.shape[2] for x in images)
    max_h = -(-max_h // divisibility) * divisibility
    max_w = -(-max_w // divisibility) * divisibility
    out = images[0].new_zeros((len(images), 3, max_h, max_w))
    for i, x in enumerate(images):
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out


def preprocess(images: list[np.ndarray], config: InputConfig, *, device: torch.device | str = "cpu") -> ImageBatch:
    """A list of RGB uint8 [H, W, 3] arrays -> :class:`ImageBatch`."""
    tensors, sizes = [], []
    for image in images:
        x, size = preprocess_image(image, config, device=device)
        tensors.append(x)
        sizes.append(size)
    return ImageBatch(tensor=batch_images(tensors, config.size_divisibility), image_sizes=sizes,
                      original_sizes=[tuple(im.shape[:2]) for im in images])
