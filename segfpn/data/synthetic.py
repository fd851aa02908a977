"""A synthetic COCO-format data set: coloured shapes (things) on textured backgrounds (stuff).

Every image has 1-3 stuff regions (sky, grass, water, wall) split by wavy or irregular
boundaries, each filled with a noise texture (clouds, grass blades, waves, bricks) whose colours
vary from image to image and overlap between classes, so a semantic head has to learn texture as
well as colour. On top lie 1-8 things (circle, square, triangle, star) in random colours,
rotations and sizes, from about 12 px to 70 % of the shorter image side so that every FPN level
gets work once the model resizes the image (a 320 px image shown at 800 px puts RoIs on levels 2..5
of k = floor(4 + log2(sqrt(wh) / 224))). Shapes drawn later cover earlier ones; a thing keeps its
visible pixels as its mask and is dropped (its pixels become void) when less than 30 % of it, or
fewer than 40 px, stay visible.

:func:`generate` writes the set in the standard COCO layout::

    out_dir/images/000001.png ...
    out_dir/annotations/instances.json          COCO instances, compressed-RLE masks, iscrowd 0
    out_dir/annotations/panoptic.json           COCO panoptic (segments_info, isthing, color)
    out_dir/annotations/panoptic/000001.png ... segment ids as R + 256 G + 256^2 B, 0 = void

Everything is a function of ``seed`` (each image of ``(seed, index)``), so the same call writes
byte-identical files and the first N images of a longer run equal those of a shorter one.
"""

from __future__ import annotations

import colorsys
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from segfpn.categories import THINGS_CLASS_NAME, Category, CategorySet
from segfpn.atomic_files import write_json, write_png
from segfpn.export import encode_masks, id_to_rgb, segment_bboxes_and_areas

logger = logging.getLogger(__name__)

#: Thing classes: (name, COCO-style id, display colour).
THING_CLASSES = (("circle", 1, (220, 50, 60)), ("square", 2, (60, 110, 230)),
                 ("triangle", 3, (240, 200, 40)), ("star", 4, (170, 60, 200)))
#: Stuff classes: (name, COCO-style id, display colour).
STUFF_CLASSES = (("sky", 5, (120, 180, 240)), ("grass", 6, (70, 150, 50)),
                 ("water", 7, (20, 90, 160)), ("wall", 8, (170, 100, 70)))

#: A thing is dropped when less than this fraction of its full area stays visible ...
MIN_VISIBLE_FRACTION = 0.3
#: ... or when fewer pixels than this stay visible.
MIN_VISIBLE_PIXELS = 40
#: Instance annotation id = image id * this + the thing's index in the image (1-based).
_ANNOTATION_ID_STRIDE = 1000
_FILE_NAME = re.compile(r"^\d+\.png$")


def synthetic_categories() -> CategorySet:
    """The classes of the synthetic set, laid out for a Panoptic FPN.

    things: circle, square, triangle, star (COCO-style ids 1..4, labels 0..3).
    stuff: index 0 = the merged "things" class (id 0), then sky, grass, water, wall (ids 5..8,
    semantic labels 1..4).
    """
    things = tuple(Category(id=cid, name=name, isthing=True, color=color, supercategory="shape")
                   for name, cid, color in THING_CLASSES)
    stuff = tuple(Category(id=cid, name=name, isthing=False, color=color, supercategory="background")
                  for name, cid, color in STUFF_CLASSES)
    merged = Category(id=0, name=THINGS_CLASS_NAME, isthing=True, color=(0, 0, 0))
    return CategorySet(things=things, stuff=(merged, *stuff))


@dataclass(frozen=True)
class SyntheticPaths:
    """Where :func:`generate` wrote the set."""

    root: Path
    image_dir: Path
    instances_json: Path
    panoptic_json: Path
    panoptic_dir: Path
    num_images: int

    def dataset(self, *, panoptic: bool = True, skip_empty: bool = False):
        """The set as a :class:`segfpn.data.coco.CocoDataset` over :func:`synthetic_categories`
        (instances + panoptic, or instances only with ``panoptic=False``)."""
        from segfpn.data.coco import CocoDataset

        extra = dict(panoptic_json=self.panoptic_json, panoptic_dir=self.panoptic_dir) if panoptic else {}
        return CocoDataset(self.image_dir, categories=synthetic_categories(),
                           instances_json=self.instances_json, skip_empty=skip_empty, **extra)


@dataclass
class Scene:
    """One rendered image with its panoptic labels.

    image: uint8 [H, W, 3] RGB.
    segment_ids: int32 [H, W] panoptic segment ids, 0 = void (pixels of dropped things).
    segments: one ``{"id", "category_id", "isthing"}`` dict per id > 0 in ``segment_ids``: the
        stuff regions in class order, then the kept things in drawing order. Things also carry
        ``full_area``, the pixels the shape would cover with nothing in front of it and no image
        border (its visible area is what ``segment_ids`` holds).
    """

    image: np.ndarray
    segment_ids: np.ndarray
    segments: list[dict]


def generate(out_dir: str | os.PathLike, *, num_images: int, seed: int,
             image_size: tuple[int, int] = (320, 320),
             max_image_size: tuple[int, int] | None = None,
             min_things: int = 1, max_things: int = 8,
             min_object_size: float = 12.0, max_object_fraction: float = 0.7,
             overwrite: bool = False, progress: bool = True) -> SyntheticPaths:
    """Write ``num_images`` synthetic images with COCO instance and panoptic annotations.

    image_size: (H, W) of every image, or the smallest (H, W) when ``max_image_size`` is given;
        each image then draws H and W independently and uniformly from the two ranges.
    min_things / max_things: things drawn per image before occlusion drops any (at least one
        always survives).
    min_object_size: the smallest shape, as sqrt(w * h) of its box in px;
    max_object_fraction: the largest, as a fraction of the image's shorter side. Sizes are drawn
        log-uniformly in between.
    overwrite: replace an existing set in ``out_dir`` (its numbered PNGs that the new set does not
        have are deleted); without it an existing ``annotations/instances.json`` is an error.

    Image ids are 1..num_images, file names ``000001.png`` ...; category ids as in
    :func:`synthetic_categories`. Returns the paths written.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    sizes = _size_ranges(image_size, max_image_size)
    if not 1 <= min_things <= max_things < _ANNOTATION_ID_STRIDE:
        raise ValueError(f"need 1 <= min_things <= max_things < {_ANNOTATION_ID_STRIDE}, "
                         f"got min_things={min_things}, max_things={max_things}")
    if not 0 < max_object_fraction <= 1:
        raise ValueError(f"max_object_fraction must be in (0, 1], got {max_object_fraction}")
    if not 4 <= min_object_size <= max_object_fraction * min(sizes[0][0], sizes[1][0]):
        raise ValueError(f"min_object_size must be at least 4 px and at most max_object_fraction "
                         f"of the smallest image side, got {min_object_size}")

    root = Path(out_dir)
    paths = SyntheticPaths(root=root, image_dir=root / "images",
                           instances_json=root / "annotations" / "instances.json",
                           panoptic_json=root / "annotations" / "panoptic.json",
                           panoptic_dir=root / "annotations" / "panoptic", num_images=num_images)
    if paths.instances_json.exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a data set ({paths.instances_json}); pass "
                              "overwrite=True to replace it or choose another folder")
    paths.image_dir.mkdir(parents=True, exist_ok=True)
    paths.panoptic_dir.mkdir(parents=True, exist_ok=True)

    categories = synthetic_categories()
    images, annotations, panoptic_annotations = [], [], []
    for index in tqdm(range(num_images), desc="synthetic images", unit="img", disable=not progress):
        image_id = index + 1
        rng = np.random.default_rng([seed, index])
        height = int(rng.integers(sizes[0][0], sizes[0][1] + 1))
        width = int(rng.integers(sizes[1][0], sizes[1][1] + 1))
        scene = make_scene(rng, height=height, width=width, min_things=min_things,
                           max_things=max_things, min_object_size=min_object_size,
                           max_object_fraction=max_object_fraction)
        file_name = f"{image_id:06d}.png"
        write_png(paths.image_dir / file_name, scene.image, compress_level=1)  # noisy images barely compress
        write_png(paths.panoptic_dir / file_name, id_to_rgb(scene.segment_ids), compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        image_annotations, segments_info = _annotate(scene, image_id)
        annotations.extend(image_annotations)
        panoptic_annotations.append({"image_id": image_id, "file_name": file_name,
                                     "segments_info": segments_info})

    info = {"description": "segfpn synthetic shapes on textured backgrounds", "version": "1",
            "seed": int(seed)}
    things_json = [_category_json(c) for c in categories.things]
    write_json(paths.instances_json, {"info": info, "licenses": [], "images": images,
                                       "annotations": annotations, "categories": things_json})
    write_json(paths.panoptic_json, {
        "info": info, "licenses": [], "images": images, "annotations": panoptic_annotations,
        "categories": things_json + [_category_json(c) for c in categories.stuff[1:]]})
    if overwrite:
        _remove_stale_pngs(paths, {img["file_name"] for img in images})
    logger.info("wrote %d synthetic images (%d instances) to %s", num_images, len(annotations), root)
    return paths


def make_scene(rng: np.random.Generator, *, height: int, width: int, min_things: int = 1,
               max_things: int = 8, min_object_size: float = 12.0,
               max_object_fraction: float = 0.7) -> Scene:
    """Render one image and its panoptic segments (see :class:`Scene`) from ``rng``.

    Category ids are those of :func:`synthetic_categories`; segment ids are random distinct
    integers in [1, 2**24).
    """
    stuff_index = _stuff_layout(rng, height, width)
    regions = [int(v) for v in np.flatnonzero(np.bincount(stuff_index.ravel(),
                                                          minlength=len(STUFF_CLASSES)))]
    background = np.zeros((height, width, 3), dtype=np.float32)
    for cls in regions:
        texture = _TEXTURES[STUFF_CLASSES[cls][0]](rng, height, width)
        np.copyto(background, texture, where=(stuff_index == cls)[..., None])

    for _attempt in range(20):
        image = background.copy()
        owner = np.full((height, width), -1, dtype=np.int32)
        shapes = _draw_things(rng, image, owner, min_things=min_things, max_things=max_things,
                              min_size=min_object_size,
                              max_size=max_object_fraction * min(height, width))
        visible = np.bincount(owner.ravel() + 1, minlength=len(shapes) + 1)[1:]
        kept = [k for k, (_cls, full_area) in enumerate(shapes)
                if visible[k] >= MIN_VISIBLE_FRACTION * full_area and visible[k] >= MIN_VISIBLE_PIXELS]
        if kept:
            break
    else:  # pragma: no cover - 20 draws without one visible thing would need a broken setting
        raise RuntimeError("could not place a visible thing; check min_object_size and image_size")

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(3.0)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    # Segment ids through a lookup table: owner -1 -> the stuff class below, k -> thing k or void.
    ids = _distinct_ids(rng, len(regions) + len(kept))
    stuff_lut = np.zeros(len(STUFF_CLASSES), dtype=np.int32)
    thing_lut = np.zeros(len(shapes), dtype=np.int32)
    segments = []
    for seg_id, cls in zip(ids, regions):
        stuff_lut[cls] = seg_id
        segments.append({"id": seg_id, "category_id": STUFF_CLASSES[cls][1], "isthing": False})
    for seg_id, k in zip(ids[len(regions):], kept):
        thing_lut[k] = seg_id
        segments.append({"id": seg_id, "category_id": THING_CLASSES[shapes[k][0]][1], "isthing": True,
                         "full_area": shapes[k][1]})
    segment_ids = np.where(owner < 0, stuff_lut[stuff_index], thing_lut[np.maximum(owner, 0)])
    # A stuff region wholly covered by things has no pixel left: leave it out.
    stuff_visible = np.bincount(stuff_index[owner < 0], minlength=len(STUFF_CLASSES))
    segments = [s for s, cls in zip(segments, regions) if stuff_visible[cls] > 0] + segments[len(regions):]
    return Scene(image=image, segment_ids=segment_ids.astype(np.int32), segments=segments)


# -- annotations ----------------------------------------------------------------------------------

def _annotate(scene: Scene, image_id: int) -> tuple[list[dict], list[dict]]:
    """COCO instance annotations and panoptic ``segments_info`` of one scene."""
    stats = segment_bboxes_and_areas(scene.segment_ids)
    things = [s for s in scene.segments if s["isthing"]]
    masks = np.stack([scene.segment_ids == s["id"] for s in things])
    annotations = []
    for k, (seg, rle) in enumerate(zip(things, encode_masks(masks)), start=1):
        area, bbox = stats[seg["id"]]
        annotations.append({"id": image_id * _ANNOTATION_ID_STRIDE + k, "image_id": image_id,
                            "category_id": seg["category_id"], "segmentation": rle,
                            "area": area, "bbox": [float(v) for v in bbox], "iscrowd": 0})
    segments_info = []
    for seg in scene.segments:
        area, bbox = stats[seg["id"]]
        segments_info.append({"id": seg["id"], "category_id": seg["category_id"], "iscrowd": 0,
                              "bbox": bbox, "area": area})
    return annotations, segments_info


def _category_json(category: Category) -> dict:
    return {"id": category.id, "name": category.name, "supercategory": category.supercategory,
            "isthing": int(category.isthing), "color": list(category.color)}


def _distinct_ids(rng: np.random.Generator, count: int) -> list[int]:
    while True:
        ids = rng.integers(1, 256**3, size=count)
        if len(set(ids.tolist())) == count:
            return [int(v) for v in ids]


# -- things ---------------------------------------------------------------------------------------

def _draw_things(rng, image, owner, *, min_things, max_things, min_size, max_size):
    """Paint 1..max_things shapes onto ``image`` (float32 [H, W, 3]) and ``owner`` (int32 [H, W],
    index of the shape on top of each pixel, -1 = none). Returns ``(class index, full area px)``
    per shape in drawing order."""
    height, width = owner.shape
    count = int(rng.integers(min_things, max_things + 1))
    sizes = np.exp(rng.uniform(math.log(min_size), math.log(max_size), size=count))
    # Big shapes tend to lie behind small ones, but not always.
    order = np.argsort(-(np.log(sizes) + rng.normal(0.0, 0.6, size=count)), kind="stable")
    shapes = []
    for k, size in enumerate(sizes[order]):
        cls = int(rng.integers(len(THING_CLASSES)))
        margin = 0.2 * size
        cx = rng.uniform(margin, max(width - margin, margin + 1))
        cy = rng.uniform(margin, max(height - margin, margin + 1))
        (y0, x0), crop = _rasterize(THING_CLASSES[cls][0], rng, cx, cy, size)
        full_area = int(crop.sum())
        # Clip the shape's window to the image.
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + crop.shape[0], height), min(x0 + crop.shape[1], width)
        if bottom <= top or right <= left:
            shapes.append((cls, max(full_area, 1)))
            continue
        crop = crop[top - y0:bottom - y0, left - x0:right - x0]
        region = image[top:bottom, left:right]
        ys, xs = np.nonzero(crop)
        color = _thing_color(rng, region[ys, xs].mean(axis=0) if len(ys) else None)
        angle = rng.uniform(0, 2 * math.pi)
        ramp = ((xs + left - cx) * math.cos(angle) + (ys + top - cy) * math.sin(angle)) / max(size, 1.0)
        shade = ramp[:, None] * rng.uniform(20, 60) + rng.normal(0, 4, size=(len(ys), 1))
        region[ys, xs] = color[None, :] + shade
        owner[top:bottom, left:right][crop] = k
        shapes.append((cls, max(full_area, 1)))
    return shapes


def _rasterize(name: str, rng, cx: float, cy: float, size: float) -> tuple[tuple[int, int], np.ndarray]:
    """A shape whose box is about ``size`` x ``size`` px, centred at (cx, cy), randomly rotated.

    Returns ``((y0, x0), mask)``: bool [h, w] over the integer pixels of the shape's box, whose
    top-left pixel is (y0, x0) in image coordinates (may be negative); a pixel belongs to the
    shape when its centre does.
    """
    if name == "circle":
        radius = size / 2
        x0, y0 = math.floor(cx - radius), math.floor(cy - radius)
        x1, y1 = math.ceil(cx + radius), math.ceil(cy + radius)
        xs = np.arange(x0, x1) + 0.5 - cx
        ys = np.arange(y0, y1) + 0.5 - cy
        return (y0, x0), xs[None, :] ** 2 + ys[:, None] ** 2 <= radius**2
    if name == "square":
        angles, radii = np.arange(4) * (math.pi / 2), np.ones(4)
    elif name == "triangle":
        angles, radii = np.arange(3) * (2 * math.pi / 3), np.ones(3)
    elif name == "star":
        angles = np.arange(10) * (math.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.55))
    else:
        raise ValueError(f"unknown shape {name!r}")
    angles = angles + rng.uniform(0, 2 * math.pi)
    unit = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # [V, 2] as (x, y)
    extent = unit.max(axis=0) - unit.min(axis=0)
    vertices = unit * (size / math.sqrt(extent[0] * extent[1])) + np.array([cx, cy])
    x0, y0 = (math.floor(v) for v in vertices.min(axis=0))
    x1, y1 = (math.ceil(v) for v in vertices.max(axis=0))
    return (y0, x0), _polygon_mask(vertices, x0, y0, x1 - x0, y1 - y0)


def _polygon_mask(vertices: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """bool [height, width]: pixels (y0 + i, x0 + j) whose centre is inside the polygon
    ``vertices`` (float [V, 2] xy), by the even-odd rule."""
    px = (np.arange(width) + x0 + 0.5)[None, :]
    py = (np.arange(height) + y0 + 0.5)[:, None]
    inside = np.zeros((height, width), dtype=bool)
    for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        x_cross = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_cross)
    return inside


def _thing_color(rng, background: np.ndarray | None) -> np.ndarray:
    """float32 [3] RGB of a thing, kept away from the mean colour of what lies under it."""
    for _ in range(10):
        rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.35, 1.0),
                                           rng.uniform(0.35, 1.0)), dtype=np.float32) * 255
        if background is None or np.linalg.norm(rgb - background) > 90:
            break
    return rgb


# -- stuff ----------------------------------------------------------------------------------------

def _stuff_layout(rng, height: int, width: int) -> np.ndarray:
    """int64 [H, W] stuff class index (into STUFF_CLASSES) of every pixel, 1-3 regions."""
    count = int(rng.integers(1, 4))
    classes = [int(c) for c in rng.permutation(len(STUFF_CLASSES))[:count]]
    if count == 1:
        return np.full((height, width), classes[0], dtype=np.int64)
    sky = 0
    if sky in classes:  # the sky, when there is one, is on top
        classes.remove(sky)
        classes.insert(0, sky)
    vertical = count == 2 and sky not in classes and rng.random() < 0.4
    length, across = (height, width) if vertical else (width, height)
    starts = ([rng.uniform(0.3, 0.7)] if count == 2 else
              [rng.uniform(0.2, 0.4), rng.uniform(0.6, 0.8)])
    coord = np.arange(across, dtype=np.float32)[:, None]  # position across the boundaries
    region = np.zeros((across, length), dtype=np.int64)
    for start in starts:
        region += coord > _boundary(rng, length, across, start)[None, :]
    if vertical:
        region = region.T
    return np.asarray(classes, dtype=np.int64)[region]


def _boundary(rng, length: int, across: int, start: float) -> np.ndarray:
    """float32 [length]: a wavy or irregular boundary near ``start * across``."""
    t = np.arange(length, dtype=np.float32)
    amplitude = rng.uniform(0.0, 0.06) * across
    period = rng.uniform(0.3, 1.5) * length
    wave = amplitude * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
    rough = _smooth_noise_1d(rng, length, knots=int(rng.integers(4, 12))) * rng.uniform(0.0, 0.04) * across
    return (start * across + wave + rough).astype(np.float32)


def _smooth_noise_1d(rng, length: int, *, knots: int) -> np.ndarray:
    values = rng.standard_normal((1, knots)).astype(np.float32)
    return cv2.resize(values, (length, 1), interpolation=cv2.INTER_CUBIC)[0]


def _fbm(rng, height: int, width: int, *, cells: float, octaves: int = 4) -> np.ndarray:
    """float32 [H, W] smooth noise with unit standard deviation: ``octaves`` layers of upsampled
    Gaussian noise, the first with about ``cells`` cells across the longer side, each next one
    twice as fine and half as strong."""
    longest = max(height, width)
    total = np.zeros((height, width), dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        n = cells * 2**octave
        grid = rng.standard_normal((max(2, round(n * height / longest) + 1),
                                    max(2, round(n * width / longest) + 1))).astype(np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        amplitude *= 0.5
    return total / max(float(total.std()), 1e-6)


def _sky(rng, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.2:  # overcast
        top = np.full(3, rng.uniform(140, 190)) + rng.uniform(-8, 8, size=3)
        bottom = top + rng.uniform(10, 35)
    else:
        top = np.array([rng.uniform(30, 110), rng.uniform(100, 170), rng.uniform(190, 250)])
        bottom = np.minimum(top + np.array([rng.uniform(50, 110), rng.uniform(30, 70),
                                            rng.uniform(0, 15)]), 250)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    base = (1 - t) * top.astype(np.float32) + t * bottom.astype(np.float32)
    clouds = np.clip((_fbm(rng, height, width, cells=3, octaves=5) - rng.uniform(-0.3, 1.8)) * 0.9, 0, 1)
    white = np.float32(rng.uniform(225, 250))
    return base * (1 - clouds[..., None]) + white * clouds[..., None] * np.ones((1, 1, 3), np.float32)


def _grass(rng, height: int, width: int) -> np.ndarray:
    if rng.random() < 0.2:  # dry grass
        base = np.array([rng.uniform(140, 180), rng.uniform(140, 170), rng.uniform(50, 90)])
    else:
        base = np.array([rng.uniform(30, 110), rng.uniform(100, 180), rng.uniform(15, 70)])
    blades = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0),
                              sigmaX=0.6, sigmaY=rng.uniform(2.0, 4.0))
    blades /= max(float(blades.std()), 1e-6)
    patches = _fbm(rng, height, width, cells=4, octaves=3)
    shade = blades * rng.uniform(14, 26) + patches * rng.uniform(8, 20)
    return base.astype(np.float32) + shade[..., None] * np.array([0.7, 1.0, 0.5], np.float32)


def _water(rng, height: int, width: int) -> np.ndarray:
    base = np.array([rng.uniform(10, 70), rng.uniform(70, 140), rng.uniform(120, 200)], np.float32)
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    warp = _fbm(rng, height, width, cells=3, octaves=3) * rng.uniform(1.5, 4.0)
    frequency = rng.uniform(0.25, 0.6)
    waves = np.sin(y * frequency + warp + 0.8 * np.sin(x * rng.uniform(0.02, 0.08) + rng.uniform(0, 6.3)))
    glints = np.clip((waves - 0.75) / 0.25, 0, 1) * rng.uniform(30, 80)
    tone = _fbm(rng, height, width, cells=2, octaves=2) * 8
    return base + (waves * rng.uniform(8, 18) + glints + tone)[..., None]


def _wall(rng, height: int, width: int) -> np.ndarray:
    palette = int(rng.integers(3))
    if palette == 0:  # red brick
        brick = np.array([rng.uniform(140, 190), rng.uniform(50, 90), rng.uniform(35, 70)])
    elif palette == 1:  # grey stone
        brick = np.full(3, rng.uniform(100, 160)) + rng.uniform(-6, 6, size=3)
    else:  # sandstone
        brick = np.array([rng.uniform(175, 215), rng.uniform(150, 185), rng.uniform(105, 145)])
    mortar = np.full(3, rng.uniform(190, 225) if rng.random() < 0.7 else rng.uniform(40, 80),
                     dtype=np.float32)
    brick_h = int(rng.integers(8, 19))
    brick_w = int(round(brick_h * rng.uniform(1.8, 3.0)))
    joint = int(rng.integers(1, 3))
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    row = y // brick_h
    shifted = x + (row % 2) * (brick_w // 2)
    col = shifted // brick_w
    jitter = rng.normal(0, 12, size=(height // brick_h + 1, width // brick_w + 2, 3)).astype(np.float32)
    bricks = brick.astype(np.float32) + jitter[row, col]
    bricks += (_fbm(rng, height, width, cells=24, octaves=2) * 6)[..., None]
    is_joint = ((y % brick_h) < joint) | ((shifted % brick_w) < joint)
    return np.where(is_joint[..., None], mortar, bricks)


_TEXTURES = {"sky": _sky, "grass": _grass, "water": _water, "wall": _wall}


# -- files ----------------------------------------------------------------------------------------

def _size_ranges(image_size, max_image_size) -> tuple[tuple[int, int], tuple[int, int]]:
    """((min H, max H), (min W, max W)) from the two arguments, checked."""
    low = tuple(int(v) for v in image_size)
    high = low if max_image_size is None else tuple(int(v) for v in max_image_size)
    if len(low) != 2 or len(high) != 2:
        raise ValueError(f"image sizes are (H, W) pairs, got image_size={image_size}, "
                         f"max_image_size={max_image_size}")
    if min(low) < 32 or low[0] > high[0] or low[1] > high[1]:
        raise ValueError(f"need 32 <= image_size <= max_image_size per side, got "
                         f"image_size={image_size}, max_image_size={max_image_size}")
    return (low[0], high[0]), (low[1], high[1])


def _remove_stale_pngs(paths: SyntheticPaths, keep: set[str]) -> None:
    for folder in (paths.image_dir, paths.panoptic_dir):
        for path in folder.iterdir():
            if _FILE_NAME.match(path.name) and path.name not in keep:
                path.unlink()
