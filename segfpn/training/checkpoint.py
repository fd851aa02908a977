"""Training checkpoints: the weights as segfpn ``.safetensors`` plus ``training_state.pt``.

Layout of ``output_dir``::

    config.yaml                         the resolved training config of the run
    last_checkpoint                     name of the newest checkpoint folder
    checkpoint_0000500/model.safetensors   weights, model config and categories (save_native)
    checkpoint_0000500/training_state.pt   optimizer, scheduler, grad scaler, iteration, RNG
                                           states of every process, data position, best metric,
                                           config (YAML text)
    model_best.safetensors, best_metrics.json   the best evaluation so far
    model_final.safetensors             written at the end

``training_state.pt`` holds only tensors, dicts, lists, tuples, numbers and strings; it is read
with ``torch.load(..., weights_only=True)``. Every file is written to a temporary name and
renamed, and a checkpoint folder is renamed into place only once complete.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from segfpn.categories import CategorySet
from segfpn.checkpoints.loading import load_into, read_state, save_native
from segfpn.atomic_files import write_atomic
from segfpn.model.detector import SegFPN

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
LAST_CHECKPOINT_FILE = "last_checkpoint"
CHECKPOINT_PREFIX = "checkpoint_"


# ---------------------------------------------------------------------------------------------
# Random states

def capture_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) random states as weights-only-loadable objects."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Files

def _atomic_torch_save(obj, path: Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoint_name(iteration: int) -> str:
    return f"{CHECKPOINT_PREFIX}{iteration:07d}"


def save_checkpoint(output_dir: Path, *, iteration: int, model: SegFPN, categories: CategorySet, arch: str,
                    training_state: dict, keep: int) -> Path:
    """Write ``checkpoint_<iteration>/`` (weights + training state), point ``last_checkpoint`` at
    it and delete the oldest periodic checkpoints beyond ``keep`` (0 keeps all)."""
    output_dir = Path(output_dir)
    final = output_dir / checkpoint_name(iteration)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=output_dir))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the folder should look like any other
    try:
        save_native(tmp / WEIGHTS_FILE, model, categories, arch=arch)
        _atomic_torch_save(training_state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(output_dir / LAST_CHECKPOINT_FILE, final.name + "\n")
    if keep > 0:
        existing = sorted(p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())
        for old in existing[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("saved %s", final)
    return final


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The folder ``last_checkpoint`` names, or None when the run has none."""
    output_dir = Path(output_dir)
    marker = output_dir / LAST_CHECKPOINT_FILE
    if not marker.is_file():
        return None
    folder = output_dir / marker.read_text().strip()
    if not (folder / STATE_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{marker} names {folder}, which is not a complete checkpoint "
                                f"({WEIGHTS_FILE} + {STATE_FILE})")
    return folder


def load_training_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)


def load_weights(model: SegFPN, folder: str | Path) -> None:
    """The checkpoint's weights into ``model`` (every tensor must fit)."""
    path = Path(folder) / WEIGHTS_FILE
    state, _ = read_state(path)
    load_into(model, state, strict=True, path=str(path))


def save_best(output_dir: Path, *, model: SegFPN, categories: CategorySet, arch: str, metrics: dict,
              iteration: int, metric_name: str, value: float) -> None:
    save_native(output_dir / "model_best.safetensors", model, categories, arch=arch)
    text = json.dumps({"iteration": iteration, "metric": metric_name, "value": value, "metrics": metrics}, indent=1)
    write_text_atomic(output_dir / "best_metrics.json", text)
