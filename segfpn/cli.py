"""``segfpn`` command line: thin wrappers over the library.

    segfpn predict IMAGE_OR_DIR --weights W [--out OUT]
    segfpn convert SRC DST [--arch A]
    segfpn weights list | download NAME | verify
    segfpn eval --weights W --images DIR --instances ANN.json [--panoptic ANN.json --panoptic-dir PNGS]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="segment an image or every image of a folder")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--weights", required=True, help="checkpoint file or known name (see `segfpn weights list`)")
    p.add_argument("--out", default="segfpn_out", help="output folder (default: segfpn_out)")
    p.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_predict)


def _run_predict(args) -> int:
    import segfpn
    from segfpn.inference import distributed_rank, merge_results, predict_folder, write_image_outputs

    source = Path(args.input)
    if not source.exists():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    rank, world_size = distributed_rank()
    device = args.device
    if device is None and world_size > 1:
        import torch

        device = f"cuda:{int(__import__('os').environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    predictor = segfpn.load(args.weights, arch=args.arch, device=device, precision=args.precision)
    out = Path(args.out)
    if source.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_image_outputs(predictor, source, out, image_id=1)
        print(f"wrote results for {source.name} to {out}/")
        return 0
    report = predict_folder(predictor, source, out, rank=rank, world_size=world_size, progress=not args.no_progress)
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if str(predictor.device).startswith("cuda") else "gloo")
        dist.barrier()
    if rank == 0:
        merged = merge_results(source, out)
        print(f"{len(report.done)} predicted, {len(report.skipped)} already done, {len(report.failed)} failed "
              f"(this process); merged results: {merged}")
    for name, reason in report.failed.items():
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 0 if not report.failed else 1


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a torchvision/detectron2 checkpoint to segfpn .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", default=None)
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from segfpn.checkpoints.loading import load_checkpoint, save_native

    loaded = load_checkpoint(args.src, arch=args.arch)
    path = save_native(args.dst, loaded.model, loaded.categories, arch=loaded.arch)
    print(json.dumps({"source": args.src, "source_format": loaded.source_format, "arch": loaded.arch,
                      "written": str(path), "report": loaded.report.summary()}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from segfpn.checkpoints import weights_cli
    from segfpn.evaluation.evaluate import register_cli as register_eval_cli

    parser = argparse.ArgumentParser(prog="segfpn", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_convert(sub)
    weights_cli.register_cli(sub)
    register_eval_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from segfpn.checkpoints.errors import CheckpointError
    from segfpn.imageio import ImageError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ImageError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
