"""The ground truth of the bundled synthetic examples (examples/images/synthetic_shapes_*.png).

Those three images are images 1, 8 and 15 of ``segfpn.data.synthetic.generate(out,
num_images=100, seed=3, image_size=(288, 288), max_image_size=(352, 352))`` (the held-out set of
examples/images/PROVENANCE.md). This regenerates that set's first 15 images (the same as the
first 15 of 100: each image depends only on (seed, index)), checks that the three PNGs are those
images pixel for pixel, and writes their COCO instance annotations, file names changed to the
examples', to examples/images/synthetic_shapes.instances.json:

    python tests/explain/synthetic_examples_gt.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "images"
GROUND_TRUTH = EXAMPLES / "synthetic_shapes.instances.json"
#: Example file -> image id in the generated set.
IMAGE_IDS = {"synthetic_shapes_0.png": 1, "synthetic_shapes_1.png": 8, "synthetic_shapes_2.png": 15}
SETTINGS = dict(seed=3, image_size=(288, 288), max_image_size=(352, 352))


def build() -> dict:
    """The annotations document, regenerated."""
    from segfpn.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="segfpn-synthetic-") as tmp:
        paths = generate(tmp, num_images=max(IMAGE_IDS.values()), progress=False, **SETTINGS)
        data = json.loads(paths.instances_json.read_text())
        by_id = {image["id"]: image for image in data["images"]}
        images = []
        for name, image_id in IMAGE_IDS.items():
            generated = np.asarray(Image.open(paths.image_dir / by_id[image_id]["file_name"]).convert("RGB"))
            example = np.asarray(Image.open(EXAMPLES / name).convert("RGB"))
            if generated.shape != example.shape or not np.array_equal(generated, example):
                raise RuntimeError(f"{name} is not image {image_id} of the synthetic set {SETTINGS}")
            images.append({**by_id[image_id], "file_name": name})
    keep = set(IMAGE_IDS.values())
    info = {**data["info"], "description": "ground truth of segfpn's bundled synthetic examples: images 1, 8 and 15 "
                                           "of segfpn.data.synthetic.generate(out, num_images=100, seed=3, "
                                           "image_size=(288, 288), max_image_size=(352, 352)); regenerate with "
                                           "python tests/explain/synthetic_examples_gt.py"}
    return {"info": info, "licenses": [], "images": images,
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
            "categories": data["categories"]}


def main() -> int:
    from segfpn.atomic_files import write_json

    write_json(GROUND_TRUTH, build())
    print(f"wrote {GROUND_TRUTH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
