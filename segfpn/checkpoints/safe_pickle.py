"""Unpickling detectron2 model-zoo files without running anything but numpy array construction."""

from __future__ import annotations

import collections
import io
import pickle

import numpy as np

from segfpn.checkpoints.errors import CheckpointError, UnsafeCheckpointError


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 pickles written by Python 3 use it: bytes (an array's
    data) stored as a latin-1 string. Only that encoding is allowed."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}: only latin-1 "
                                    "bytes appear in a checkpoint")
    return text.encode("latin1")


def _array_from_buffer(buf, dtype, shape, order, axis_order=None) -> np.ndarray:
    """numpy's ``_frombuffer``, which protocol 5 pickles of arrays call; arguments checked."""
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(dtype, np.dtype) \
            or dtype.hasobject or not isinstance(shape, tuple) or order not in ("C", "F", "K"):
        raise UnsafeCheckpointError("refusing a numpy buffer that is not plain array data")
    array = np.frombuffer(buf, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order="C" if order == "K" else order)


# The only globals a model-zoo .pkl needs: an ordered dict of numpy arrays. Module paths of
# numpy 1.x ("numpy.core") are answered with numpy 2.x's objects ("numpy._core"). Protocol 2
# written by Python 3 stores bytes through _codecs.encode, protocol 5 arrays through _frombuffer:
# both answered with the checked versions above.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
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
