"""Reading a checkpoint file of any supported format into a segfpn model, with a report."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import stat
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from segfpn.categories import CategorySet
from segfpn.checkpoints.converters import (ConvertedCheckpoint, convert_detectron2, convert_torchvision,
                                           looks_like_detectron2, looks_like_torchvision)
from segfpn.checkpoints.errors import CheckpointError, UnsafeCheckpointError
from segfpn.checkpoints.safe_pickle import load_arrays_pickle
from segfpn.config import ARCHITECTURES, ConfigError, ModelConfig
from segfpn.atomic_files import write_atomic
from segfpn.model.build import Detector, build_model

logger = logging.getLogger(__name__)

NATIVE_FORMAT = "segfpn"
_MAX_SHOWN = 8


@dataclasses.dataclass
class LoadReport:
    """How a checkpoint's tensors met the model's: key lists in segfpn naming."""

    matched: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, checkpoint shape, model shape
    ignored: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def show(keys):
            keys = list(keys)
            more = f", ... ({len(keys) - _MAX_SHOWN} more)" if len(keys) > _MAX_SHOWN else ""
            return ", ".join(str(k) for k in keys[:_MAX_SHOWN]) + more

        lines = [f"{len(self.matched)} tensors matched"]
        if self.missing:
            lines.append(f"{len(self.missing)} missing from the checkpoint: {show(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected in the checkpoint: {show(self.unexpected)}")
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} with another shape: "
                         + show(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        if self.ignored:
            lines.append(f"{len(self.ignored)} ignored (not weights): {show(self.ignored)}")
        return "; ".join(lines)


@dataclasses.dataclass
class LoadedCheckpoint:
    model: Detector
    config: ModelConfig
    categories: CategorySet
    arch: str
    source_format: str
    report: LoadReport


# safetensors refuses headers above 100 MB (its MAX_HEADER_SIZE); so does the check below.
_SAFETENSORS_MAX_HEADER = 100_000_000
_PICKLE_PROTOCOLS = range(2, 6)  # PROTO opcode 0x80, then the protocol: 2 (Python 2.3) to 5
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _open_regular_file(path: Path) -> BinaryIO:
    """``path`` opened for reading, after making sure it is a regular file.

    A FIFO would block ``open()`` until someone writes to it, and a device can be read forever,
    so anything but a regular file is refused before it is opened; it is opened non-blocking and
    checked again, in case it was swapped for a FIFO in between.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            mode = os.fstat(fd).st_mode
            if stat.S_ISREG(mode):
                return os.fdopen(fd, "rb")
            os.close(fd)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    raise CheckpointError(f"{path} is {kind}, not a regular file: give the path of a checkpoint file")


def _safetensors_problem(file: BinaryIO, size: int) -> str | None:
    """``None`` when ``file`` has the whole structure of a safetensors file, else what is wrong.

    The structure: an 8-byte little-endian header length N, N bytes of UTF-8 JSON holding an
    object (a "{" first, spaces allowed at the end), whose entries describe tensors by dtype,
    shape and data offsets, and the data those offsets point into after the header.
    """
    file.seek(0)
    head = file.read(9)
    if len(head) < 9:
        return f"it has {size} bytes, fewer than a safetensors header needs"
    (length,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{":
        return "its header does not start with '{'"
    if length > _SAFETENSORS_MAX_HEADER:
        return f"its header length ({length} bytes) is over the {_SAFETENSORS_MAX_HEADER} bytes safetensors allows"
    if 8 + length > size:
        return f"it is truncated: its header says {length} bytes, but only {size - 8} follow the header length"
    file.seek(8)
    try:
        header = json.loads(file.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"its {length}-byte header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                return "its __metadata__ is not a mapping of strings"
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and {"dtype", "shape"} <= set(entry)):
            return f"its header entry {name!r} is not a tensor (dtype, shape, data_offsets)"
        data_end = max(data_end, offsets[1])
    if 8 + length + data_end > size:
        return (f"it is truncated: its tensors end {data_end} bytes after the header, but only "
                f"{size - 8 - length} bytes follow it")
    return None


def _starts_like_safetensors(head: bytes) -> bool:
    """The first bytes look like a safetensors header: a length, then the start of a JSON object."""
    return head[8:10] in (b'{"', b"{}", b"{ ")


def _sniff(file: BinaryIO, path: Path) -> str:
    """The format of the open ``file``, judged by the structure of each format in turn.

    safetensors is checked first and in full (header length, JSON object, tensor entries, data
    present): its first byte is the header length's low byte and can be anything, 0x80 (a
    pickle's first byte) or "P" (a zip's) included, but no zip or pickle has that structure.
    Then a zip (torch.save) by its local-file signature, then a pickle (detectron2, legacy
    torch.save) by its PROTO opcode and protocol. A file that starts like a safetensors header but
    fails the full check is a damaged safetensors file and is reported as one.
    """
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    problem = _safetensors_problem(file, size)
    if problem is None:
        return "safetensors"
    file.seek(0)
    head = file.read(10)
    if head[:4] == _ZIP_MAGIC:
        return "torch_zip"
    if head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    if head[8:9] == b"{":
        raise CheckpointError(f"{path} looks like a safetensors file but is damaged: {problem}")
    raise CheckpointError(f"{path} is not a checkpoint: expected a torchvision .pth, a detectron2 .pkl or a "
                          f"segfpn .safetensors file, but its first bytes are {head[:8]!r}")


def detect_file_format(path: str | os.PathLike) -> str:
    """"safetensors", "torch_zip" or "pickle", from the file's structure; CheckpointError otherwise.

    Anything but a regular file (a directory, FIFO, device) is refused before it is opened.
    """
    path = Path(path)
    with _open_regular_file(path) as file:
        return _sniff(file, path)


def _one_line(text: str) -> str:
    """An error text from another library on one line (they span several)."""
    return " ".join(text.split())


def _torch_reason(exc: BaseException) -> str:
    """torch.load's error, short: its weights-only refusal names the object it refused in a middle
    paragraph (the rest suggests ``weights_only=False``, which would run the file's code)."""
    paragraphs = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    if paragraphs and paragraphs[0].startswith("Weights only load failed") and len(paragraphs) > 1:
        return "it holds objects other than tensors, refused: " + _one_line(paragraphs[1])
    return _one_line(str(exc))


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of any supported file, plus the segfpn metadata when it is a native file."""
    path = Path(path)
    with _open_regular_file(path) as file:
        kind = _sniff(file, path)
        file.seek(0)
        if kind == "safetensors":
            return _read_safetensors(path)
        if kind == "torch_zip":
            return _tensor_dict(_torch_load(file, path), path), {}
        data = file.read()
    try:
        obj = load_arrays_pickle(data, source=str(path))
    except UnsafeCheckpointError:
        raise
    except CheckpointError as exc:
        # 0x80 0x02..0x05 is also how a safetensors header length can start: a damaged one
        # (cut short, say) fails the full check above and lands here.
        if _starts_like_safetensors(data[:10]):
            problem = _safetensors_problem(io.BytesIO(data), len(data))
            raise CheckpointError(f"{path} looks like a safetensors file but is damaged: {problem}") from exc
        raise
    if isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER:
        # A legacy (non-zip) torch.save file starts with a pickled magic number; torch's own
        # weights-only unpickler reads the rest.
        obj = _torch_load(io.BytesIO(data), path)
    return _tensor_dict(obj, path), {}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path} looks like a safetensors file but cannot be read: "
                              f"{_one_line(str(exc))}") from exc


def _torch_load(file: BinaryIO, path: Path):
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not weights only): "
                              f"{_torch_reason(exc)}") from exc


def _tensor_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # detectron2: {"model": ..., "__author__": ...}
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__})")
    out = {}
    for key, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array")
        out[str(key)] = value
    return out


def convert_state(state: dict[str, torch.Tensor], metadata: dict, *, arch: str | None,
                  path: Path) -> ConvertedCheckpoint:
    if metadata.get("format") == NATIVE_FORMAT:
        config, categories, stored_arch = _read_native_metadata(metadata, path)
        if arch is not None and arch != stored_arch and arch in ARCHITECTURES:
            raise CheckpointError(f"{path} is a segfpn checkpoint of arch {stored_arch!r}; arch={arch!r} does not "
                                  f"fit it — leave arch out")
        return ConvertedCheckpoint(state, config, categories, stored_arch, NATIVE_FORMAT, [])
    if arch is not None and arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
    if looks_like_torchvision(state):
        return convert_torchvision(state, arch=arch)
    if looks_like_detectron2(state):
        return convert_detectron2(state, arch=arch)
    sample = ", ".join(list(state)[:5])
    raise CheckpointError(f"{path} holds tensors, but not of a torchvision detection model (Mask R-CNN, Faster "
                          f"R-CNN, RetinaNet) or a detectron2 model-zoo model (first keys: {sample})")


def _read_native_metadata(metadata: dict[str, str], path: Path) -> tuple[ModelConfig, CategorySet, str]:
    """(config, categories, arch) from a native file's metadata; CheckpointError naming the key
    that is missing or damaged."""
    fix = "convert the original checkpoint again (`segfpn convert SRC DST`)"

    def entry(key: str) -> str:
        if key not in metadata:
            raise CheckpointError(f"{path} is a segfpn checkpoint without the {key!r} metadata entry: {fix}")
        return metadata[key]

    def parsed(key: str) -> dict:
        text = entry(key)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({exc}): {fix}") from None
        if not isinstance(value, dict):
            raise CheckpointError(f"{path}: metadata {key!r} is not a JSON object "
                                  f"(found {type(value).__name__}): {fix}")
        return value

    arch = entry("arch")
    if not arch.strip():
        raise CheckpointError(f"{path}: metadata 'arch' is empty: {fix}")
    try:
        config = ModelConfig.from_dict(parsed("config"), where="config")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: metadata 'config' does not describe a model this segfpn can build ({exc}; "
                              "written by another segfpn version?)") from None
    categories_dict = parsed("categories")
    try:
        categories = CategorySet.from_json(categories_dict)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"{path}: metadata 'categories' is not a list of categories "
                              f"({type(exc).__name__}: {exc}): {fix}") from None
    return config, categories, arch


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True,
              ignored: list[str] = (), path: str = "checkpoint") -> LoadReport:
    """Copy ``state`` into ``model``; with ``strict`` any missing, unexpected or mis-shaped key raises."""
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    source = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    matched = [k for k in source if k in target and tuple(source[k].shape) == tuple(target[k].shape)]
    mismatched = [(k, tuple(source[k].shape), tuple(target[k].shape)) for k in source
                  if k in target and tuple(source[k].shape) != tuple(target[k].shape)]
    report = LoadReport(matched=matched, missing=[k for k in target if k not in source],
                        unexpected=[k for k in source if k not in target], mismatched=mismatched,
                        ignored=list(ignored))
    if strict and not report.ok:
        raise CheckpointError(f"{path} does not fit the model: {report.summary()}")
    with torch.no_grad():
        for k in matched:
            target[k].copy_(source[k].to(target[k].dtype))
    return report


def load_checkpoint(path: str | os.PathLike, *, arch: str | None = None, strict: bool = True,
                    overrides: dict | None = None) -> LoadedCheckpoint:
    """Build the model a checkpoint file describes and load its weights (CPU, eval mode).

    ``overrides``: inference settings to change, see :meth:`ModelConfig.with_overrides`.
    """
    path = Path(path)
    state, metadata = read_state(path)
    converted = convert_state(state, metadata, arch=arch, path=path)
    if overrides:
        converted.config = converted.config.with_overrides(overrides)
    try:
        model = build_model(converted.config)
    except (TypeError, ValueError) as exc:
        if converted.source_format != NATIVE_FORMAT:
            raise  # a config segfpn inferred itself: a bug, keep its traceback
        raise CheckpointError(f"{path}: metadata 'config' describes a model that cannot be built: {exc}") from None
    report = load_into(model, converted.state_dict, strict=strict, ignored=converted.unmapped_keys, path=str(path))
    if converted.unmapped_keys and strict:
        raise CheckpointError(f"{path}: {len(converted.unmapped_keys)} keys are not part of a "
                              f"{converted.arch} model: {', '.join(converted.unmapped_keys[:_MAX_SHOWN])}")
    logger.info("loaded %s (%s, %s): %s", path, converted.arch, converted.source_format, report.summary())
    model.eval()
    return LoadedCheckpoint(model=model, config=converted.config, categories=converted.categories,
                            arch=converted.arch, source_format=converted.source_format, report=report)


def save_native(path: str | os.PathLike, model: Detector, categories: CategorySet, *, arch: str) -> Path:
    """Write segfpn's own format: safetensors weights, config and categories in the metadata.

    Written to a temporary file beside ``path`` and renamed, so a failure leaves no partial file.
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    metadata = {"format": NATIVE_FORMAT, "arch": arch, "config": json.dumps(model.config.to_dict()),
                "categories": json.dumps(categories.to_json())}
    # Serialised in memory (safetensors' own writer can't target an open file), then written
    # atomically with the usual permissions.
    payload = save(tensors, metadata=metadata)
    write_atomic(path, lambda f: f.write(payload))
    return path
