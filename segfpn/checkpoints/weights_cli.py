"""``segfpn weights list|download|verify``: the command-line face of the catalogue.

Wire it into the main parser with ``register_cli(subparsers)``; each subcommand sets
``args.func(args) -> int`` (the exit status). ``python -m segfpn.checkpoints.weights_cli`` runs it
on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Sequence

from segfpn.checkpoints.catalogue import UnknownCheckpointError, default_checkpoint, find
from segfpn.checkpoints.download import (
    BASE_URL_ENV,
    DEFAULT_DEADLINE_S,
    WEIGHTS_DIR_ENV,
    DownloadError,
    download,
    install_cleanup_handlers,
    local_status,
    verify_file,
    weights_dir,
)
from segfpn.checkpoints.resolve import BUNDLED_CHECKPOINT, BUNDLED_METRICS, BUNDLED_SHA256, torchvision_cache_path


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``weights`` and its ``list``, ``download``, ``verify`` subcommands to ``subparsers``."""
    weights = subparsers.add_parser(
        "weights", help="list, download and verify the known checkpoints",
        description=f"Known checkpoints live in --dir (default ${WEIGHTS_DIR_ENV} or ./weights).")
    weights.set_defaults(func=lambda args: (weights.print_help(), 2)[1])
    commands = weights.add_subparsers(dest="weights_command", metavar="{list,download,verify}")

    def add_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dir", default=None,
                            help=f"weights folder (default: ${WEIGHTS_DIR_ENV} or ./weights)")

    listing = commands.add_parser("list", help="table of known checkpoints and which are present")
    add_dir(listing)
    listing.set_defaults(func=_list)

    fetch = commands.add_parser("download", help="download and verify a known checkpoint")
    fetch.add_argument("name", nargs="+", help="checkpoint name(s) from `segfpn weights list`")
    add_dir(fetch)
    fetch.add_argument("--base-url", default=None,
                       help=f"mirror to fetch from; the file name is appended (default: "
                            f"${BASE_URL_ENV} or the official URL)")
    fetch.add_argument("--force", action="store_true", help="download again even if present")
    fetch.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fetch.add_argument("--deadline", type=_positive_seconds, default=DEFAULT_DEADLINE_S, metavar="SECONDS",
                       help=f"give up on a download that takes longer (default: {DEFAULT_DEADLINE_S:.0f})")
    fetch.set_defaults(func=_download)

    check = commands.add_parser("verify", help="check present files against their published hash")
    check.add_argument("name", nargs="*", help="checkpoint name(s); default: every present one")
    add_dir(check)
    check.set_defaults(func=_verify)
    return weights


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _format_mb(num_bytes: float | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / 2**20:.0f} MiB"


def _metric(metrics, key: str) -> str:
    return f"{metrics[key]:.1f}" if key in metrics else "-"


def _list(args: argparse.Namespace) -> int:
    default = default_checkpoint().name
    folder = args.dir if args.dir is not None else weights_dir()
    header = ("name", "arch", "format", "box AP", "mask AP", "PQ", "size", "present")
    rows = []
    for entry in local_status(dest_dir=folder):
        c = entry.checkpoint
        if entry.present:
            size = _format_mb(entry.size_bytes)
        elif c.size_bytes is not None:
            size = _format_mb(c.size_bytes)
        elif c.approx_size_mb is not None:
            size = f"~{c.approx_size_mb:.0f} MiB"
        else:  # no published size: the most a download of it may have
            size = f"<= {c.size_limit_bytes / 2**20:.0f} MiB"
        name = c.name + (" *" if c.name == default else "")
        cached = torchvision_cache_path(c)
        present = "yes" if entry.present else "torch cache" if cached is not None and cached.is_file() else "no"
        rows.append((name, c.arch, c.format, _metric(c.metrics, "box_ap"),
                     _metric(c.metrics, "mask_ap"), _metric(c.metrics, "pq"), size, present))
    bundled = BUNDLED_CHECKPOINT
    bundled_size = _format_mb(bundled.stat().st_size) if bundled.is_file() else "-"
    rows.append(("bundled", "panoptic_fpn (synthetic)", "segfpn", "-", "-", "-", bundled_size,
                 "yes" if bundled.is_file() else "no"))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\n* default for the app and `segfpn predict` (best PQ). Folder: {folder}")
    print("Metrics as published on COCO val2017. torchvision's files are also found in its own download cache.")
    print(f"bundled: {bundled} - segfpn's small model trained on synthetic shapes (held-out synthetic PQ "
          f"{BUNDLED_METRICS['pq']}, mask AP {BUNDLED_METRICS['mask_ap']}; no COCO classes), used when no "
          "COCO checkpoint can be had.")
    return 0


def _download(args: argparse.Namespace) -> int:
    status = 0
    for name in args.name:
        try:
            checkpoint = find(name)
            path = download(checkpoint, dest_dir=args.dir, base_url=args.base_url,
                            progress=not args.no_progress, force=args.force,
                            deadline_s=args.deadline)
        except (UnknownCheckpointError, DownloadError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        print(f"{checkpoint.name}: {path}")
    return status


def _verify(args: argparse.Namespace) -> int:
    try:
        targets = {find(name).name for name in args.name}
    except UnknownCheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    entries = [e for e in local_status(dest_dir=args.dir)
               if (e.checkpoint.name in targets if targets else e.present)]
    status = 0
    if not targets:
        status = _verify_bundled()
    if not entries:
        print("no known checkpoint is present; see `segfpn weights list`")
        return status
    for entry in entries:
        try:
            verify_file(entry.path, entry.checkpoint)
        except DownloadError as e:
            print(f"{entry.checkpoint.name}: FAILED: {e}", file=sys.stderr)
            status = 1
        else:
            print(f"{entry.checkpoint.name}: ok ({entry.path})")
    return status


def _verify_bundled() -> int:
    """The bundled model against its recorded SHA-256: 0 when it matches, 1 otherwise."""
    if not BUNDLED_CHECKPOINT.is_file():
        print(f"bundled: missing ({BUNDLED_CHECKPOINT})", file=sys.stderr)
        return 1
    digest = hashlib.sha256(BUNDLED_CHECKPOINT.read_bytes()).hexdigest()
    if digest != BUNDLED_SHA256:
        print(f"bundled: FAILED: {BUNDLED_CHECKPOINT} has SHA-256 {digest}, expected {BUNDLED_SHA256}",
              file=sys.stderr)
        return 1
    print(f"bundled: ok ({BUNDLED_CHECKPOINT})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``weights ...`` on its own (``python -m segfpn.checkpoints.weights_cli list``)."""
    install_cleanup_handlers()  # a stopped download leaves no partial file
    parser = argparse.ArgumentParser(prog="segfpn")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["weights", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
