"""Training data: COCO samples -> augmented network inputs and :class:`Targets`, in a fixed order.

The order of the images and every random choice of the augmentation are functions of
``(seed, epoch, index)``, never of a global random state or of the DataLoader's workers, so a
resumed run sees exactly the batches an uninterrupted run would have seen:

* :class:`TrainingSampler` deals an endless stream of ``(index, epoch)`` keys: each epoch is a
  permutation drawn from ``(seed, epoch)``, split round-robin over the processes; it can start
  at any position.
* :class:`TrainingSet` turns a key into a :class:`TrainExample`: it reads the sample, draws the
  shorter side and the flip from ``(seed, epoch, index)``, resizes, normalises and converts
  the annotations. An image that cannot be read is skipped with a warning (the next image
  takes its place).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from segfpn.categories import THINGS_CLASS_NAME, Category, CategorySet
from segfpn.config import InputConfig
from segfpn.data import transforms
from segfpn.data.sample import Sample
from segfpn.model.losses import Targets
from segfpn.model.preprocess import ImageBatch, batch_images, preprocess_image

logger = logging.getLogger(__name__)

#: How many following images :class:`TrainingSet` tries when an image cannot be read.
MAX_SKIPS = 20


@dataclass
class TrainExample:
    """One augmented training image.

    image: float32 [3, h, w], normalised, in the network's channel order (not padded).
    targets: in the resized image's pixels. original_size: (H, W) of the file.
    """

    image: torch.Tensor
    targets: Targets
    image_id: int
    original_size: tuple[int, int]


@dataclass
class TrainBatch:
    images: ImageBatch
    targets: list[Targets]
    image_ids: list[int]

    def to(self, device: torch.device) -> "TrainBatch":
        images = dataclasses.replace(self.images, tensor=self.images.tensor.to(device, non_blocking=True))
        return TrainBatch(images, [t.to(device) for t in self.targets], self.image_ids)


def sample_to_example(sample: Sample, input_config: InputConfig, *, flip: bool = False,
                      use_semantic: bool = True) -> TrainExample:
    """Flip (optionally), resize to ``input_config`` and convert to network-input targets.

    Boxes are scaled with the image; masks are resized bilinearly and thresholded at 0.5; the
    semantic map is resized with exact nearest-neighbour sampling. Instances whose box becomes
    empty are dropped.
    """
    if flip:
        sample = transforms.horizontal_flip(sample)
    image, (h, w) = preprocess_image(sample.image, input_config)
    height, width = sample.image_size
    scale = torch.tensor([w / width, h / height, w / width, h / height], dtype=torch.float32)
    boxes = torch.from_numpy(np.ascontiguousarray(sample.boxes, dtype=np.float32)).reshape(-1, 4) * scale
    labels = torch.from_numpy(np.ascontiguousarray(sample.labels, dtype=np.int64)).reshape(-1)
    masks = torch.from_numpy(np.ascontiguousarray(sample.masks, dtype=bool))
    if masks.shape[0] and (h, w) != (height, width):
        masks = F.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0] >= 0.5
    elif not masks.shape[0]:
        masks = torch.zeros((0, h, w), dtype=torch.bool)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & masks.flatten(1).any(dim=1)
    semantic = None
    if use_semantic and sample.semantic is not None:
        semantic = torch.from_numpy(np.ascontiguousarray(sample.semantic, dtype=np.int64))
        if (h, w) != (height, width):
            semantic = F.interpolate(semantic[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
    targets = Targets(boxes=boxes[keep], labels=labels[keep], masks=masks[keep], semantic=semantic)
    return TrainExample(image=image, targets=targets, image_id=int(sample.image_id),
                        original_size=(height, width))


class TrainingSet:
    """Map-style data set over ``(index, epoch)`` keys (see :class:`TrainingSampler`).

    dataset: anything with ``__len__`` and ``__getitem__(int) -> Sample`` (e.g. ``CocoDataset``).
    input_config: the model's; its ``min_size`` is replaced by one of ``min_sizes`` per image and
    its ``max_size`` by ``max_size``.
    """

    def __init__(self, dataset, input_config: InputConfig, *, min_sizes: tuple[int, ...], max_size: int,
                 flip_prob: float, seed: int, use_semantic: bool = True):
        if not min_sizes:
            raise ValueError("min_sizes must list at least one shorter-side length")
        self.dataset = dataset
        self.input_config = input_config
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.use_semantic = use_semantic
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> TrainExample:
        index, epoch = key
        for attempt in range(min(MAX_SKIPS, len(self.dataset))):
            i = (int(index) + attempt) % len(self.dataset)
            if i in self._bad:
                continue
            try:
                sample = self.dataset[i]
            except (OSError, ValueError, KeyError) as exc:
                self._bad.add(i)
                logger.warning("training image #%d skipped: %s", i, exc)
                continue
            rng = np.random.default_rng([self.seed, int(epoch), int(index)])
            min_size = transforms.choose_min_size(rng, sizes=self.min_sizes)
            flip = bool(rng.random() < self.flip_prob)
            config = dataclasses.replace(self.input_config, min_size=min_size, max_size=self.max_size)
            return sample_to_example(sample, config, flip=flip, use_semantic=self.use_semantic)
        raise RuntimeError(f"{MAX_SKIPS} training images in a row from #{index} could not be read; "
                           "see the warnings above")


class TrainingSampler(torch.utils.data.Sampler):
    """Endless ``(index, epoch)`` stream for one process of ``world_size``.

    Epoch e is ``torch.randperm(size)`` under seed ``seed + e`` (padded by wrapping round to a
    multiple of world_size); process ``rank`` takes every world_size-th entry from ``rank``.
    ``start``: how many keys this process has already consumed (to resume).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        if size <= 0:
            raise ValueError("the training set is empty")
        self.size, self.seed, self.rank, self.world_size = size, int(seed), rank, world_size
        self.start, self.shuffle = int(start), shuffle
        self.per_rank = -(-size // world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        order = (order * (1 + self.per_rank * self.world_size // self.size))[: self.per_rank * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        epoch, offset = divmod(self.start, self.per_rank)
        while True:
            order = self.epoch_order(epoch)
            for index in order[offset:]:
                yield index, epoch
            epoch, offset = epoch + 1, 0


def collate(examples: list[TrainExample], *, size_divisibility: int) -> TrainBatch:
    tensor = batch_images([e.image for e in examples], size_divisibility)
    images = ImageBatch(tensor=tensor, image_sizes=[tuple(e.image.shape[-2:]) for e in examples],
                        original_sizes=[e.original_size for e in examples])
    return TrainBatch(images=images, targets=[e.targets for e in examples], image_ids=[e.image_id for e in examples])


class _Collate:
    """Picklable collate function for DataLoader workers."""

    def __init__(self, size_divisibility: int):
        self.size_divisibility = size_divisibility

    def __call__(self, examples):
        return collate(examples, size_divisibility=self.size_divisibility)


def build_train_loader(training_set: TrainingSet, *, batch_size: int, seed: int, rank: int, world_size: int,
                       start: int, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader of :class:`TrainBatch` that never ends; ``start`` = keys already consumed here.

    The loader has its own generator, so creating it leaves the global torch random state alone.
    """
    sampler = TrainingSampler(len(training_set), seed=seed, rank=rank, world_size=world_size, start=start)
    return torch.utils.data.DataLoader(
        training_set, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=_Collate(training_set.input_config.size_divisibility), generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0, pin_memory=False)


# ---------------------------------------------------------------------------------------------
# Categories

_DEFAULT_COLOR = (128, 128, 128)


def categories_from_annotations(*, instances: dict | None, panoptic: dict | None) -> CategorySet:
    """Classes of a COCO data set: things from the instances file (or the panoptic file's
    ``isthing`` entries), stuff from the panoptic file with the merged "things" class first."""
    def category(c: dict, isthing: bool) -> Category:
        color = tuple(int(v) for v in c.get("color", _DEFAULT_COLOR))
        return Category(id=int(c["id"]), name=str(c["name"]), isthing=isthing, color=color,
                        supercategory=str(c.get("supercategory", "")))

    if instances is not None:
        things = [category(c, True) for c in sorted(instances.get("categories", []), key=lambda c: c["id"])]
    else:
        things = [category(c, True) for c in sorted(panoptic.get("categories", []), key=lambda c: c["id"])
                  if c.get("isthing", 1)]
    stuff = ()
    if panoptic is not None:
        stuff_categories = [category(c, False) for c in sorted(panoptic.get("categories", []), key=lambda c: c["id"])
                            if not c.get("isthing", 1)]
        stuff = (Category(id=0, name=THINGS_CLASS_NAME, isthing=True, color=(0, 0, 0)), *stuff_categories)
    if not things:
        raise ValueError("the training annotations define no thing categories")
    return CategorySet(things=tuple(things), stuff=tuple(stuff))
