"""Unpickling detectron2 model-zoo files without running anything but numpy array construction."""

from __future__ import annotations

import collections
import io
import pickle

import numpy as np

from segfpn.checkpoints.errors import CheckpointError, UnsafeCheckpointError

# The only globals a model-zoo .pkl needs: an ordered dict of numpy arrays. Module paths of
# numpy 1.x ("numpy.core") are answered with numpy 2.x's objects ("numpy._core").
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy.core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float32(0).__reduce__()[0],
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to unpickle {module}.{name}: a detectron2 checkpoint holds only numpy arrays, "
                "and this file asks for something else (it may run code). Nothing from it was executed."
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError("refusing a pickle with persistent ids (not a detectron2 model-zoo file)")


def load_arrays_pickle(data: bytes, *, source: str = "checkpoint") -> dict:
    """Unpickle ``data`` allowing only containers, numpy arrays and dtypes (latin1 for py2-era files)."""
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{source} is not a readable pickle: {exc}") from exc
