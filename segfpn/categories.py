"""COCO category tables, and the one place where model indices meet COCO ids.

A model predicts *contiguous indices*: ``labels`` index into its ``thing_classes`` and
semantic labels index into its ``semantic_classes``. COCO files use *category ids* (1..90 for
things, 92..200 for stuff, with gaps). :class:`CategorySet` maps between the two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

#: Name used for the torchvision class slots that have no COCO category (ids 12, 26, ...).
UNUSED_CLASS_NAME = "N/A"
#: Name of the semantic class that merges every "thing" in a panoptic-separated semantic head.
THINGS_CLASS_NAME = "things"


@dataclass(frozen=True)
class Category:
    """One COCO category: ``id`` is the COCO id, ``color`` is RGB 0-255."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]
    supercategory: str = ""


@lru_cache(maxsize=1)
def coco_panoptic_categories() -> tuple[Category, ...]:
    """The 133 COCO panoptic categories (80 things, 53 stuff) sorted by COCO id."""
    text = resources.files("segfpn.assets").joinpath("coco_panoptic_categories.json").read_text()
    return tuple(
        Category(id=c["id"], name=c["name"], isthing=c["isthing"], color=tuple(c["color"]),
                 supercategory=c.get("supercategory", ""))
        for c in json.loads(text)["categories"]
    )


@dataclass(frozen=True)
class CategorySet:
    """The classes of one model.

    ``things``: the instance classes in predictor order (index = label).
    ``stuff``: the semantic classes in predictor order (index = semantic label); for a
    panoptic-separated head index 0 is the merged "things" class (``id`` 0, ``isthing`` True).
    """

    things: tuple[Category, ...]
    stuff: tuple[Category, ...] = ()

    @property
    def thing_names(self) -> list[str]:
        return [c.name for c in self.things]

    def thing_label(self, category_id: int) -> int:
        """Instance label of COCO category ``category_id`` (KeyError if the model has none)."""
        return _index_by_id(self.things)[category_id]

    def semantic_label(self, category_id: int) -> int:
        return _index_by_id(self.stuff)[category_id]

    def to_json(self) -> dict:
        def dump(cats):
            return [{"id": c.id, "name": c.name, "isthing": c.isthing, "color": list(c.color),
                     "supercategory": c.supercategory} for c in cats]
        return {"things": dump(self.things), "stuff": dump(self.stuff)}

    @classmethod
    def from_json(cls, data: dict) -> "CategorySet":
        def load(items):
            return tuple(Category(id=int(c["id"]), name=str(c["name"]), isthing=bool(c["isthing"]),
                                  color=tuple(int(v) for v in c["color"]),
                                  supercategory=str(c.get("supercategory", ""))) for c in items)
        return cls(things=load(data.get("things", [])), stuff=load(data.get("stuff", [])))


def _index_by_id(categories: tuple[Category, ...]) -> dict[int, int]:
    return {c.id: i for i, c in enumerate(categories)}


def coco_things() -> tuple[Category, ...]:
    """The 80 COCO thing categories, contiguous order (detectron2's order)."""
    return tuple(c for c in coco_panoptic_categories() if c.isthing)


def coco_stuff() -> tuple[Category, ...]:
    """The 53 COCO panoptic stuff categories, contiguous order."""
    return tuple(c for c in coco_panoptic_categories() if not c.isthing)


def torchvision_coco_things() -> tuple[Category, ...]:
    """torchvision's 90 foreground slots: slot i is COCO id i + 1, unused ids named "N/A"."""
    by_id = {c.id: c for c in coco_things()}
    return tuple(by_id.get(i, Category(id=i, name=UNUSED_CLASS_NAME, isthing=True, color=(0, 0, 0)))
                 for i in range(1, 91))


def coco_panoptic_separated_stuff() -> tuple[Category, ...]:
    """detectron2's 54 semantic classes: 0 = all things merged, then the 53 stuff classes."""
    things = Category(id=0, name=THINGS_CLASS_NAME, isthing=True, color=(0, 0, 0))
    return (things, *coco_stuff())


def coco_instance_categories() -> CategorySet:
    return CategorySet(things=coco_things())


def coco_panoptic_category_set() -> CategorySet:
    return CategorySet(things=coco_things(), stuff=coco_panoptic_separated_stuff())


def torchvision_category_set() -> CategorySet:
    return CategorySet(things=torchvision_coco_things())
