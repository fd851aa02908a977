"""``segfpn data synthetic DIR``: a synthetic shapes set in COCO instance and panoptic format, the
data the bundled model was trained and scored on (:func:`segfpn.data.synthetic.generate`).

    segfpn data synthetic heldout --num-images 100 --seed 3 --size 288x288 --max-size 352x352
"""

from __future__ import annotations

import argparse


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` to a CLI's subparsers; the handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser("data", help="make data sets (a synthetic shapes set)")
    sub = parser.add_subparsers(dest="data_command", required=True)
    synthetic = sub.add_parser(
        "synthetic", help="write a synthetic shapes set with COCO instance and panoptic annotations",
        description="Images of circles, squares, triangles and stars on sky, grass, water and wall, with COCO "
                    "instances and panoptic annotations under DIR/annotations: the set the bundled model was "
                    "trained on (seeds 1 and 2) and scored on (seed 3).")
    synthetic.add_argument("dir", help="output folder (images/ and annotations/ go in it)")
    synthetic.add_argument("--num-images", type=int, default=100, help="default %(default)s")
    synthetic.add_argument("--seed", type=int, default=3, help="default %(default)s (the bundled model's held-out set)")
    synthetic.add_argument("--size", type=_size, default=(288, 288), metavar="WxH",
                           help="image size, or the smallest with --max-size (default 288x288)")
    synthetic.add_argument("--max-size", type=_size, default=(352, 352), metavar="WxH",
                           help="the largest image size: each image draws its width and height in between "
                                "(default 352x352)")
    synthetic.add_argument("--overwrite", action="store_true", help="replace a set already in DIR")
    synthetic.add_argument("--no-progress", action="store_true")
    synthetic.set_defaults(func=_run_synthetic)
    return parser


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (H, W), as generate() takes sizes."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    return height, width


def _run_synthetic(args) -> int:
    from segfpn.data.synthetic import generate

    try:
        paths = generate(args.dir, num_images=args.num_images, seed=args.seed, image_size=args.size,
                         max_image_size=args.max_size, overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileExistsError) as exc:
        from segfpn.cli import UsageError

        raise UsageError(str(exc)) from None
    print(f"{paths.num_images} images in {paths.image_dir}; annotations: {paths.instances_json}, "
          f"{paths.panoptic_json} + {paths.panoptic_dir}/")
    return 0
