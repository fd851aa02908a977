"""``segfpn`` command line: thin wrappers over the library.

    segfpn predict IMAGE_OR_DIR [--weights W] [--out OUT]
    segfpn convert SRC DST [--arch A]
    segfpn weights list | download NAME | verify
    segfpn eval --weights W --images DIR --instances ANN.json [--panoptic ANN.json --panoptic-dir PNGS]
    segfpn train CONFIG [--resume] [--set KEY=VALUE]
    segfpn data synthetic DIR [--num-images N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="segment an image, a folder of images, a video or an image URL",
        description="Segment an image, every image of a folder, a video or an image at an http(s) URL: overlay "
                    "PNG, COCO results JSON and panoptic PNG + JSON per image (plus the --formats asked for), one "
                    "merged COCO results file for a folder, images already done skipped; for a video an H.264 "
                    "MP4 with the overlay and one JSON of per-frame COCO results, resumed where an interrupted "
                    "run stopped. Under `torchrun --nproc_per_node=N` a folder is split across the N processes "
                    "(one GPU each, or CPU processes).")
    p.add_argument("input", help="an image file, a folder of images, a video file (.mp4, .mov, .mkv, .webm, "
                                 ".avi, ... or recognised by its content) or an http(s) URL of an image")
    p.add_argument("--weights", default=None,
                   help="checkpoint file or known name (`segfpn weights list`), several separated by commas and "
                        "tried in order; default: the catalogue's default checkpoint, downloaded on first use, "
                        "or when it cannot be had the bundled offline model (the same as the app)")
    p.add_argument("--out", default="segfpn_out", help="output folder (default: segfpn_out)")
    p.add_argument("--arch", default=None, help="override the architecture read from the checkpoint")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default) gives the reference outputs; bf16 (CPU or GPU) and fp16 (GPU) are faster")
    p.add_argument("--batch-size", type=_positive_int, default=1,
                   help="images per forward pass (more than 1 pays on a GPU)")
    p.add_argument("--overlay", choices=["panoptic", "instances"], default=None,
                   help="what the overlay PNG shows: the panoptic segments (a model with a semantic head: Panoptic "
                        "FPN) or the instances (masks, boxes, labels with score >= 0.5, as the app's Instances view; "
                        "filled boxes for a box-only model); default: the panoptic segments when the model has them")
    p.add_argument("--score-threshold", type=_probability, default=None,
                   help="keep detections scoring above this (default: the checkpoint's, 0.05 for the COCO models)")
    p.add_argument("--formats", default="coco", type=_format_list,
                   help="extra files per image, comma-separated: labelme, yolo, cvat, cutouts, csv, parquet "
                        "(COCO is always written); they hold the detections at or above --score-threshold "
                        "(all the model keeps without it) of the --classes asked for; polygons for a model with "
                        "masks, boxes for a box-only model (Faster R-CNN, RetinaNet)")
    p.add_argument("--classes", default=None, type=_name_list,
                   help="comma-separated class names the --formats files keep (default: every class)")
    p.add_argument("--every", type=_positive_int, default=1, help="video: segment every N-th frame (default 1: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_predict)


def _format_list(text: str) -> tuple[str, ...]:
    from segfpn.formats import check_formats

    try:
        return check_formats(text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected class names separated by commas")
    return names


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class UsageError(Exception):
    """A mistake in the command line or its files: printed as one ``error:`` line, exit 2."""


def _check_device(device: str | None, precision: str) -> None:
    """:class:`UsageError` for a --device torch cannot use here, or fp16 without CUDA."""
    import torch

    if device is not None:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if precision == "fp16" and not on_cuda:
        raise UsageError("--precision fp16 needs a CUDA device; use --precision bf16 on a CPU")


def _output_folder(out: str) -> Path:
    """``out``, created if missing; :class:`UsageError` if it cannot be."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {folder}: cannot create the folder: {exc.strerror or exc}") from None
    return folder


def _checkpoint_file(weights: str | None, *, progress: bool) -> Path:
    """The file of the first checkpoint of ``weights`` that can be had; without ``weights``, the
    catalogue's default or else the bundled model, saying on stderr why it fell back."""
    from segfpn.checkpoints.resolve import candidates, resolve_first

    path, chosen, problems = resolve_first(candidates(weights, fallback=weights is None), progress=progress)
    for problem in problems:
        print(f"note: {problem.message()}", file=sys.stderr)
    if problems:
        print(f"note: using {chosen} instead", file=sys.stderr)
    return path


def _run_predict(args) -> int:
    import os

    from segfpn.imageio import read_image
    from segfpn.inference import (FolderReport, distributed_rank, load_predictor, merge_results, predict_folder,
                                  write_image_outputs)

    from segfpn.urls import is_url, read_url_image, url_file_name
    from segfpn.video import VideoError, is_video, probe_video

    url = args.input if is_url(args.input) else None
    source = Path(url_file_name(url) if url else args.input)
    if url is None and not source.exists():
        raise UsageError(f"{source} does not exist")
    video = url is None and is_video(source)
    if video and args.formats:
        raise UsageError(f"--formats {','.join(args.formats)}: a video gets its overlay MP4 and per-frame COCO "
                         "results JSON; the other formats are for images")
    if video and args.classes:
        raise UsageError(f"--classes {','.join(args.classes)}: it chooses what the --formats files of images keep; "
                         "a video's per-frame results hold every detection")
    rank, world_size = distributed_rank()
    device = args.device
    if device is None and world_size > 1:
        import torch

        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    _check_device(device, args.precision)
    # A single image, a URL or a video's header is read before the model is loaded (seconds): a
    # bad input is told at once.
    rgb = None
    try:
        if url is not None:
            rgb = read_url_image(url)
        elif video:
            probe_video(source)
        elif source.is_file():
            rgb = read_image(source)
    except VideoError as exc:
        raise UsageError(str(exc)) from None
    out = _output_folder(args.out)
    weights = _checkpoint_file(args.weights, progress=not args.no_progress)
    predictor = load_predictor(weights, arch=args.arch, device=device, precision=args.precision,
                               score_threshold=args.score_threshold)
    # What the options ask of the model is checked before any image is segmented.
    overlay = _checked_overlay(predictor, args.overlay)
    exports = {"formats": args.formats, "score_threshold": args.score_threshold or 0.0,
               "classes": _checked_classes(predictor, args.classes)}
    if video:
        return _predict_video(predictor, source, out, args, overlay=overlay)
    if rgb is not None:
        write_image_outputs(predictor, source, out, image_id=1, rgb=rgb, overlay=overlay, **exports)
        print(f"wrote results for {source.name} to {out}/")
        return 0
    report = predict_folder(predictor, source, out, rank=rank, world_size=world_size, progress=not args.no_progress,
                            batch_size=args.batch_size, overlay=overlay, **exports)
    if world_size == 1:
        merged = merge_results(source, out)
        _print_summary(report, merged)
        return 0 if not report.failed else 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if predictor.device.type == "cuda" else "gloo")
    try:
        dist.barrier()  # every process has written its images
        if rank == 0:
            reports = [json.loads((out / "logs" / f"predict_rank{r}_of_{world_size}.json").read_text())
                       for r in range(world_size)]
            total = FolderReport(done=[n for r in reports for n in r["done"]],
                                 skipped=[n for r in reports for n in r["skipped"]],
                                 failed={k: v for r in reports for k, v in r["failed"].items()})
            _print_summary(total, merge_results(source, out), processes=world_size)
        dist.barrier()  # nobody exits (which stops torchrun's other workers) before the merge is written
    finally:
        dist.destroy_process_group()
    return 0 if not report.failed else 1


def _checked_overlay(predictor, overlay: str | None) -> str:
    """``--overlay`` (default: the panoptic segments when the model has them, else the instances),
    or a :class:`UsageError` when it asks for panoptic segments the model cannot give."""
    from segfpn.outputs import DEFAULT_OVERLAY

    if overlay == "panoptic" and not predictor.has_semantic_head:
        kind = "a box-only model" if not predictor.config.has_masks else "a model without a semantic head"
        raise UsageError(f"--overlay panoptic: {predictor.arch or 'this model'} is {kind}, it gives no panoptic "
                         "segments; use --overlay instances (or leave --overlay out)")
    return overlay or DEFAULT_OVERLAY


def _checked_classes(predictor, classes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``--classes``, or a :class:`UsageError` naming those the model does not have."""
    from segfpn.formats import known_class_names

    if classes is None:
        return None
    stuff = [(c.name, c.id) for c in predictor.categories.stuff] if predictor.has_semantic_head else []
    known = known_class_names([c.name for c in predictor.categories.things], stuff)
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise UsageError(f"--classes {','.join(unknown)}: not a class of this model; "
                         f"its classes are {', '.join(known)}")
    return classes


def _predict_video(predictor, source: Path, out: Path, args, *, overlay: str) -> int:
    from segfpn.video import VideoCancelled, VideoError, predict_video

    try:
        report = predict_video(predictor, source, out, every=args.every, overlay=overlay,
                               batch_size=args.batch_size, progress_bar=not args.no_progress)
    except VideoError as exc:
        raise UsageError(str(exc)) from None
    except (KeyboardInterrupt, VideoCancelled):
        print("stopped; run the same command again to continue from the last finished part", file=sys.stderr)
        return 130
    if report.already_done:
        print(f"{source.name} is already done: {report.files.video}, {report.files.results}")
        return 0
    if report.restarted:
        print(f"note: {report.restarted}: started again", file=sys.stderr)
    resumed = f", {report.resumed_from} of them from the interrupted run" if report.resumed_from else ""
    print(f"{report.frames_done} frames segmented{resumed}; wrote {report.files.video} and {report.files.results}")
    if report.problem:
        print(f"note: {source.name}: {report.problem}; the files hold the frames before it", file=sys.stderr)
    return 0


def _print_summary(report, merged: Path, *, processes: int = 1) -> None:
    where = f" ({processes} processes)" if processes > 1 else ""
    print(f"{len(report.done)} predicted, {len(report.skipped)} already done, {len(report.failed)} failed{where}; "
          f"merged results: {merged}")
    for name, reason in report.failed.items():
        print(f"  failed: {name}: {reason}", file=sys.stderr)


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
    from segfpn.data.cli import register_cli as register_data_cli
    from segfpn.evaluation.evaluate import register_cli as register_eval_cli
    from segfpn.training.cli import register_cli as register_train_cli

    parser = argparse.ArgumentParser(prog="segfpn", description="Instance, semantic and panoptic segmentation on a "
                                                                "Feature Pyramid Network.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_convert(sub)
    weights_cli.register_cli(sub)
    register_eval_cli(sub)
    register_train_cli(sub)
    register_data_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from segfpn.checkpoints.errors import CheckpointError
    from segfpn.evaluation.evaluate import CategoryMismatch
    from segfpn.imageio import ImageError

    from segfpn.checkpoints.download import install_cleanup_handlers

    args = build_parser().parse_args(argv)
    install_cleanup_handlers()  # a SIGTERM or Ctrl-C during a download leaves no partial file
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (UsageError, CheckpointError, ImageError, CategoryMismatch, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
