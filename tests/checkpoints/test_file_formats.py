"""Recognising a checkpoint file by what it is, for every header length and first byte.

A safetensors file starts with its header length N as a little-endian u64, so its first byte is
N's low byte and can be anything, 0x80 (the pickle protocol opcode) and "P" (zip) included. Each
format is tried against every low byte of N (the metadata padded so that N takes each value), and
files of every first byte that are not checkpoints are refused with a CheckpointError.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

import segfpn
from segfpn.checkpoints.errors import CheckpointError
from segfpn.checkpoints.loading import (detect_file_format, load_checkpoint, read_state,
                                        save_native)

from testdata import ROOT

BUNDLED = ROOT / "weights" / "synthetic_panoptic_fpn.safetensors"


def _split(blob: bytes) -> tuple[dict, bytes]:
    """(header as a dict, data section) of a safetensors file."""
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def _join(header: dict, data: bytes, *, trailing_spaces: int = 0) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode() + b" " * trailing_spaces
    return struct.pack("<Q", len(text)) + text + data


def _with_header_length(blob: bytes, length: int) -> bytes:
    """The same safetensors file with a "padding" metadata key making its header ``length`` bytes."""
    header, data = _split(blob)
    header.setdefault("__metadata__", {})["padding"] = ""
    base = len(json.dumps(header, separators=(",", ":")).encode())
    assert length >= base, (length, base)
    header["__metadata__"]["padding"] = "x" * (length - base)
    out = _join(header, data)
    assert struct.unpack("<Q", out[:8])[0] == length
    return out


def _with_low_byte(blob: bytes, low: int) -> bytes:
    """The same file, its header length's low byte (the file's first byte) set to ``low``."""
    header, _ = _split(blob)
    header.setdefault("__metadata__", {})["padding"] = ""
    base = len(json.dumps(header, separators=(",", ":")).encode())
    return _with_header_length(blob, base + (low - base) % 256)


@pytest.fixture(scope="module")
def native_bytes(tmp_path_factory, d2_mini_checkpoint) -> bytes:
    """segfpn's own format, converted from the mini detectron2 checkpoint (3 MB)."""
    loaded = load_checkpoint(d2_mini_checkpoint)
    path = tmp_path_factory.mktemp("native") / "mini.safetensors"
    save_native(path, loaded.model, loaded.categories, arch=loaded.arch)
    return path.read_bytes()


# A torchvision-style state dict small enough for its safetensors header to be 0x100-0x5ff bytes
# long, where the first two bytes can be 0x80 0x02..0x05: exactly a pickle's opening.
SMALL_STATE = {"backbone.body.conv1.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
               "backbone.body.bn1.weight": torch.ones(2)}


def test_native_file_with_every_low_byte_of_its_header_length(tmp_path, native_bytes):
    path = tmp_path / "model.safetensors"
    expected_keys = set(_split(native_bytes)[0]) - {"__metadata__"}
    for low in range(256):
        blob = _with_low_byte(native_bytes, low)
        assert blob[0] == low
        path.write_bytes(blob)
        assert detect_file_format(path) == "safetensors", f"low byte {low:#04x}"
        tensors, metadata = read_state(path)
        assert set(tensors) == expected_keys and metadata["format"] == "segfpn", f"low byte {low:#04x}"
    # Loaded into the model for real: 0x80 (the reported case) and two more.
    for low in (0x80, 0x50, 0x00):
        path.write_bytes(_with_low_byte(native_bytes, low))
        loaded = load_checkpoint(path)
        assert loaded.arch == "panoptic_fpn_R_50" and loaded.report.ok


def test_small_safetensors_of_every_header_length_from_0x100_to_0x5ff(tmp_path):
    """Covers every low byte and the second bytes 0x02-0x05 (0x80 0x02..0x05 opens a pickle)."""
    path = tmp_path / "small.safetensors"
    blob = save_safetensors(SMALL_STATE)
    for length in range(0x100, 0x600):
        path.write_bytes(_with_header_length(blob, length))
        assert detect_file_format(path) == "safetensors", f"header length {length:#06x}"
        tensors, _ = read_state(path)
        assert torch.equal(tensors["backbone.body.conv1.weight"], SMALL_STATE["backbone.body.conv1.weight"])


def test_safetensors_header_padded_with_trailing_spaces(tmp_path):
    """The format allows spaces after the JSON; safetensors' own writer pads to 8 bytes that way."""
    header, data = _split(save_safetensors(SMALL_STATE))
    path = tmp_path / "spaces.safetensors"
    for spaces in range(0, 300, 7):
        path.write_bytes(_join(header, data, trailing_spaces=spaces))
        assert detect_file_format(path) == "safetensors"
        assert set(read_state(path)[0]) == set(SMALL_STATE)


def test_bundled_model_saved_again_with_a_metadata_key(tmp_path):
    """The reported case: add a metadata key to the bundled model, save it with safetensors'
    own writer, and its header length ends in 0x80."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(BUNDLED))
    with safe_open(str(BUNDLED), framework="pt") as f:
        metadata = f.metadata()
    for extra in range(64):
        blob = save_safetensors(tensors, metadata={**metadata, "note": "n" * extra})
        if blob[0] == 0x80:
            break
    else:
        raise AssertionError("no metadata length gave a header length ending in 0x80")
    path = tmp_path / "bundled_with_note.safetensors"
    path.write_bytes(blob)
    predictor = segfpn.load(path, device="cpu")
    assert predictor.arch == metadata["arch"]


def _d2_state(d2_mini_checkpoint) -> dict:
    return pickle.loads(d2_mini_checkpoint.read_bytes(), encoding="latin1")["model"]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_detectron2_pickles_of_each_protocol(tmp_path, d2_mini_checkpoint, protocol):
    state = _d2_state(d2_mini_checkpoint)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": collections.OrderedDict(state), "__author__": "Detectron2 Model Zoo"}, f,
                    protocol=protocol)
    assert path.read_bytes()[:2] == bytes([0x80, protocol])
    assert detect_file_format(path) == "pickle"
    tensors, metadata = read_state(path)
    assert set(tensors) == set(state) and metadata == {}
    key = "roi_heads.box_head.fc1.weight"
    assert np.array_equal(tensors[key].numpy(), state[key])


def test_torch_zip_and_legacy_torch_save(tmp_path):
    zipped, legacy = tmp_path / "tv.pth", tmp_path / "legacy.pth"
    torch.save(SMALL_STATE, zipped)
    torch.save(SMALL_STATE, legacy, _use_new_zipfile_serialization=False)
    assert zipped.read_bytes()[:4] == b"PK\x03\x04" and legacy.read_bytes()[:1] == b"\x80"
    assert detect_file_format(zipped) == "torch_zip"
    assert detect_file_format(legacy) == "pickle"
    for path in (zipped, legacy):
        tensors, _ = read_state(path)
        assert torch.equal(tensors["backbone.body.conv1.weight"], SMALL_STATE["backbone.body.conv1.weight"])


def test_every_first_byte_of_a_file_that_is_no_checkpoint(tmp_path):
    """Random bytes after each possible first byte: always a CheckpointError naming the file."""
    rng = random.Random(0)
    path = tmp_path / "junk.pth"
    for first in range(256):
        for size in (1, 9, 64, rng.randrange(10, 5000)):
            path.write_bytes(bytes([first]) + rng.randbytes(size - 1))
            with pytest.raises(CheckpointError) as excinfo:
                read_state(path)
            assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_files_that_start_like_a_safetensors_header_but_are_not(tmp_path):
    """A header length that fits, then "{" but no JSON object: not safetensors, and said so."""
    path = tmp_path / "fake.safetensors"
    cases = [b"{not json at all}", b'{"a": 1', b"{}" + b"\xff\xfe", b"[1, 2, 3]".replace(b"[", b"{", 1)]
    for body in cases:
        path.write_bytes(struct.pack("<Q", len(body)) + body)
        with pytest.raises(CheckpointError, match="safetensors"):
            read_state(path)


def test_truncated_safetensors_files_say_so(tmp_path, native_bytes):
    """Cut anywhere, a native file gets a CheckpointError; cut after its header starts, the
    message says it is a damaged safetensors file (also when its first bytes open a pickle)."""
    rng = random.Random(1)
    path = tmp_path / "cut.safetensors"
    length = struct.unpack("<Q", native_bytes[:8])[0]
    # cuts around the 8-byte length prefix and the header's end, then 20 random ones
    boundaries = [1, 7, 8, 9, 100, length + 7, length + 8, length + 9]
    cuts = boundaries + [rng.randrange(9, len(native_bytes)) for _ in range(20)]
    for cut in cuts:
        path.write_bytes(native_bytes[:cut])
        with pytest.raises(CheckpointError) as excinfo:
            load_checkpoint(path)
        message = str(excinfo.value)
        assert "\n" not in message
        if cut > 8:
            assert "safetensors" in message, (cut, message)
    small = _with_header_length(save_safetensors(SMALL_STATE), 0x0380)  # starts 0x80 0x03
    assert small[:2] == b"\x80\x03"
    for cut in (0x0380, 0x0380 + 8, len(small) - 1):
        path.write_bytes(small[:cut])
        with pytest.raises(CheckpointError, match="safetensors") as excinfo:
            read_state(path)
        assert "pickle" not in str(excinfo.value)


# ---------------------------------------------------------------------------------------------
# Files that are not regular files are refused before they are opened


def _load_in_thread(path: Path, seconds: float = 10.0):
    """load_checkpoint(path) in a thread: (finished, exception). A thread still blocked is freed
    by opening the FIFO's write end."""
    outcome = {}

    def run():
        try:
            load_checkpoint(path)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    finished = not thread.is_alive()
    if not finished and path.is_fifo():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # the blocked open() returns
        thread.join(5)
    return finished, outcome.get("error")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    finished, error = _load_in_thread(fifo)
    assert finished, "load_checkpoint blocked on a FIFO"
    assert isinstance(error, CheckpointError)
    assert str(fifo) in str(error) and "not a regular file" in str(error)

    link = tmp_path / "link.pkl"
    link.symlink_to(fifo)
    finished, error = _load_in_thread(link)
    assert finished and isinstance(error, CheckpointError) and "not a regular file" in str(error)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_device_is_refused(device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(CheckpointError, match="character device.*not a regular file"):
        load_checkpoint(device)


def test_directory_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------
# segfpn's own metadata, missing or damaged: a CheckpointError naming the key


def _edit_metadata(blob: bytes, edit) -> bytes:
    header, data = _split(blob)
    metadata = header["__metadata__"]
    edit(metadata)
    return _join(header, data)


def _drop(key):
    return lambda m: m.pop(key)


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _edit_config(change):
    def edit(m):
        config = json.loads(m["config"])
        change(config)
        m["config"] = json.dumps(config)
    return edit


METADATA_CASES = {
    "no_config": (_drop("config"), "'config'"),
    "config_not_json": (_set("config", "{num_classes: 80"), "'config'.*not valid JSON"),
    "config_not_an_object": (_set("config", "[1, 2]"), "'config'.*JSON object"),
    "config_unknown_field": (_edit_config(lambda c: c.__setitem__("fancy_head", {})), "fancy_head"),
    "config_unknown_nested_field": (_edit_config(lambda c: c["box_head"].__setitem__("bogus", 1)),
                                    "box_head.bogus"),
    "config_wrong_type": (_edit_config(lambda c: c.__setitem__("num_classes", "many")), "'config'"),
    "config_section_wrong_type": (_edit_config(lambda c: c.__setitem__("fpn", 5)), "'config'"),
    "no_categories": (_drop("categories"), "'categories'"),
    "categories_not_json": (_set("categories", "things: circle"), "'categories'.*not valid JSON"),
    "categories_malformed": (_set("categories", json.dumps({"things": [{"name": "x"}]})), "'categories'"),
    "no_arch": (_drop("arch"), "'arch'"),
}


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_native_file_with_bad_metadata_names_the_key(tmp_path, native_bytes, case):
    edit, message = METADATA_CASES[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(_edit_metadata(native_bytes, edit))
    with pytest.raises(CheckpointError, match=message) as excinfo:
        load_checkpoint(path)
    assert str(excinfo.value).count(str(path)) == 1 and "\n" not in str(excinfo.value)


def test_extra_metadata_keys_are_fine(tmp_path, native_bytes):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_edit_metadata(native_bytes, _set("trained_by", "someone")))
    assert load_checkpoint(path).report.ok


def test_what_protocol_2_and_5_need_is_allowed_only_for_array_data():
    """_codecs.encode (protocol 2 bytes) only with latin-1; _frombuffer (protocol 5) only for
    plain dtypes: anything else is refused as unsafe."""
    from segfpn.checkpoints.errors import UnsafeCheckpointError
    from segfpn.checkpoints.safe_pickle import load_arrays_pickle

    def call(module: str, name: str, *args) -> bytes:
        """A protocol 2 pickle of module.name(*args), args of str only."""
        out = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"("
        for arg in args:
            data = arg.encode()
            out += b"X" + struct.pack("<I", len(data)) + data
        return out + b"tR."

    assert load_arrays_pickle(call("_codecs", "encode", "\xe9t\xe9", "latin1")) == b"\xe9t\xe9"
    for encoding in ("rot_13", "utf-8", "base64"):
        with pytest.raises(UnsafeCheckpointError, match="latin-1"):
            load_arrays_pickle(call("_codecs", "encode", "abc", encoding))
    with pytest.raises(UnsafeCheckpointError):  # a str is not a buffer
        load_arrays_pickle(call("numpy._core.numeric", "_frombuffer", "abc", "f4", "x", "C"))
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle _codecs.decode"):
        load_arrays_pickle(call("_codecs", "decode", "abc", "latin1"))
