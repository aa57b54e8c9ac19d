"""Reading Hugging Face checkpoints without PyTorch: `model.safetensors` and `pytorch_model.bin` as NumPy arrays.

safetensors is a JSON header plus raw little-endian tensors; `pytorch_model.bin` (torch >= 1.6)
is a zip holding a pickle whose tensors point at raw storage files in the same zip.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict

import numpy as np

from distil.errors import UsageError

_SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}
_TORCH_STORAGES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?", "BFloat16Storage": "bfloat16"}


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: shift the 16 bits into place."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """All tensors of a .safetensors file (float32 for bf16), keyed by name."""
    data = path.read_bytes()
    if len(data) < 8:
        raise UsageError(f"{path}: not a safetensors file (too short)")
    (header_size,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_size])
    except ValueError as e:
        raise UsageError(f"{path}: not a safetensors file ({e})") from None
    base = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[base + start:base + end]
        if info["dtype"] == "BF16":
            array = _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, dtype=_SAFETENSORS_DTYPES[info["dtype"]])
        else:
            raise UsageError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray]) -> None:
    """Write float32 tensors in the safetensors layout (8-byte header size, JSON header, raw data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


class _TorchUnpickler(pickle.Unpickler):
    """Rebuilds the tensors of a torch zip checkpoint as NumPy arrays; refuses every other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *rest: data
        if module == "torch" and name in _TORCH_STORAGES:
            return _TORCH_STORAGES[name]
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a PyTorch checkpoint")

    def persistent_load(self, pid):
        kind, dtype, key = pid[0], pid[1], pid[2]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        if dtype == "bfloat16":
            return _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
        return np.frombuffer(raw, dtype=dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *rest) -> np.ndarray:
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * item for s in stride))
    return np.array(view)


def read_pytorch_bin(path: Path) -> Dict[str, np.ndarray]:
    """All tensors of a zip-format `pytorch_model.bin` (what torch.save writes since PyTorch 1.6)."""
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not a zip-format PyTorch checkpoint (saved before PyTorch 1.6?); "
                         "re-save it with a current PyTorch or as model.safetensors")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UsageError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            state = _TorchUnpickler(f, archive, prefix).load()
    if not isinstance(state, dict):
        raise UsageError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def read_hf_weights(model_dir: Path) -> Dict[str, np.ndarray]:
    """Weights of an HF model folder: model.safetensors if present, else pytorch_model.bin."""
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_pytorch_bin)):
        if (model_dir / name).is_file():
            return reader(model_dir / name)
    raise UsageError(f"{model_dir}: no model.safetensors or pytorch_model.bin "
                     "(sharded checkpoints are not supported; merge them first)")
