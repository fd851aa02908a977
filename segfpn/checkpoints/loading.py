"""Reading a checkpoint file of any supported format into a segfpn model, with a report."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from segfpn.categories import CategorySet
from segfpn.checkpoints.converters import (ConvertedCheckpoint, convert_detectron2, convert_torchvision,
                                           looks_like_detectron2, looks_like_torchvision)
from segfpn.checkpoints.errors import CheckpointError
from segfpn.checkpoints.safe_pickle import load_arrays_pickle
from segfpn.config import ARCHITECTURES, ModelConfig
from segfpn.export import write_atomic
from segfpn.model.detector import SegFPN

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
    model: SegFPN
    config: ModelConfig
    categories: CategorySet
    arch: str
    source_format: str
    report: LoadReport


def detect_file_format(path: Path) -> str:
    """"safetensors", "torch_zip" or "pickle" from the first bytes; CheckpointError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a directory, not a checkpoint file") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    if len(head) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    raise CheckpointError(f"{path} is not a checkpoint: expected a torchvision .pth, a detectron2 .pkl or a "
                          f"segfpn .safetensors file, but its first bytes are {head[:8]!r}")


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors of any supported file, plus the segfpn metadata when it is a native file."""
    kind = detect_file_format(path)
    if kind == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise CheckpointError(f"{path} looks like a safetensors file but cannot be read: {exc}") from exc
    if kind == "torch_zip":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not weights only): {exc}") from exc
        return _tensor_dict(obj, path), {}
    data = path.read_bytes()
    obj = load_arrays_pickle(data, source=str(path))
    if isinstance(obj, int) and obj == torch.serialization.MAGIC_NUMBER:
        # A legacy (non-zip) torch.save file starts with a pickled magic number; torch's own
        # weights-only unpickler reads the rest.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or not weights only): {exc}") from exc
    return _tensor_dict(obj, path), {}


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


def convert_state(state: dict[str, torch.Tensor], metadata: dict, *, arch: str | None, path: Path) -> ConvertedCheckpoint:
    if metadata.get("format") == NATIVE_FORMAT:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        categories = CategorySet.from_json(json.loads(metadata["categories"]))
        stored_arch = metadata.get("arch", "")
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
    raise CheckpointError(f"{path} holds tensors, but not of a torchvision Mask R-CNN or a detectron2 "
                          f"model-zoo model (first keys: {sample})")


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
    model = SegFPN(converted.config)
    report = load_into(model, converted.state_dict, strict=strict, ignored=converted.unmapped_keys, path=str(path))
    if converted.unmapped_keys and strict:
        raise CheckpointError(f"{path}: {len(converted.unmapped_keys)} keys are not part of a "
                              f"{converted.arch} model: {', '.join(converted.unmapped_keys[:_MAX_SHOWN])}")
    logger.info("loaded %s (%s, %s): %s", path, converted.arch, converted.source_format, report.summary())
    model.eval()
    return LoadedCheckpoint(model, converted.config, converted.categories, converted.arch, converted.source_format, report)


def save_native(path: str | os.PathLike, model: SegFPN, categories: CategorySet, *, arch: str) -> Path:
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
