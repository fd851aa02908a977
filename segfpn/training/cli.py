"""``segfpn train CONFIG``: the command-line face of :func:`segfpn.training.train`.

    segfpn train configs/synthetic_panoptic.yaml
    segfpn train CONFIG --resume                      # continue from OUTPUT_DIR/last_checkpoint
    segfpn train CONFIG --set solver.max_iter=200 --set data.batch_size=4
    python -m torch.distributed.run --nproc_per_node=2 -m segfpn.training CONFIG   # DDP

Register it in a CLI with :func:`register_cli`; ``python -m segfpn.training`` runs it alone.
"""

from __future__ import annotations

import argparse
import logging
import sys


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` to a CLI's subparsers; the handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser(
        "train", help="train a Panoptic FPN or Mask R-CNN from a YAML (or Python) config",
        description="Train from scratch, from an ImageNet backbone or from a checkpoint, as the config says. "
                    "Run under torchrun (python -m torch.distributed.run --nproc_per_node=N) for several "
                    "processes.")
    _add_arguments(parser)
    parser.set_defaults(func=run_train_command)
    return parser


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training config: a .yaml file or a .py file defining `config`")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in the config's output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config value, e.g. --set solver.max_iter=100 (value parsed as YAML); repeatable")
    parser.add_argument("--output-dir", help="override output_dir")
    parser.add_argument("--device", help="override device: auto, cpu, cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_train_command(args: argparse.Namespace) -> int:
    import os

    from segfpn.training import distributed
    from segfpn.training.config import ConfigError, load_config
    from segfpn.training.trainer import TrainingDiverged, train

    rank = int(os.environ.get("RANK", "0"))
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        config = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        logging.getLogger("segfpn").setLevel(logging.INFO)  # the resolved config, progress, evaluations
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if rank == 0:
        print(f"trained {result.iteration} iterations; checkpoints in {result.output_dir}")
        if result.metrics is not None:
            from segfpn.evaluation import format_metrics

            print(format_metrics(result.metrics))
        if result.best is not None:
            print(f"best {result.best['metric']} = {100 * result.best['value']:.2f} at iteration "
                  f"{result.best['iteration']} (model_best.safetensors)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segfpn train", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_train_command(args)


if __name__ == "__main__":
    sys.exit(main())
