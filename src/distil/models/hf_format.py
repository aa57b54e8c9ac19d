"""Hugging Face BERT import, all of it: checkpoint readers, config and parameter-name maps.

Readers work without PyTorch, `model.safetensors` and `pytorch_model.bin` as NumPy arrays.

safetensors is a JSON header plus raw little-endian tensors; `pytorch_model.bin` (torch >= 1.6)
is a zip holding a pickle whose tensors point at raw storage files in the same zip; before
PyTorch 1.6 it was a run of pickles followed by the raw storages (the "legacy" format).
"""

from __future__ import annotations

import json
import logging
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from distil.errors import UsageError
from distil.fileio import read_config_json
from distil.models.bert import BertConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PROJECTION_PREFIX = "fit_dense."   # TinyBERT's student-to-teacher width projection
MLM_HEAD_PREFIX = "cls.predictions."

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


class _Storage:
    """A storage a checkpoint's pickle refers to; its bytes are read once the pickle is done."""

    def __init__(self, key: str, dtype: str):
        self.key, self.dtype, self.array = key, dtype, None


class _TensorRef:
    """A tensor as the pickle describes it (storage, offset, size, stride), rebuilt once storages are read."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self) -> np.ndarray:
        data = self.storage.array
        if not self.size:
            return data[self.offset:self.offset + 1].reshape(()).copy()
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(s * data.itemsize for s in self.stride))
        return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
    """Reads the pickle of a torch checkpoint into _TensorRefs; refuses every global but tensors and dicts."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda storage, offset, size, stride, *rest: _TensorRef(storage, offset, size, stride)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *rest: data
        if module == "torch" and name in _TORCH_STORAGES:
            return _TORCH_STORAGES[name]
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a PyTorch checkpoint")

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: the same plus view metadata
        kind, dtype, key = pid[0], pid[1], str(pid[2])
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
        return self.storages.setdefault(key, _Storage(key, dtype))


def _storage_array(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return _bfloat16_to_float32(np.frombuffer(raw, dtype="<u2"))
    return np.frombuffer(raw, dtype=dtype)


def _resolve(path: Path, state) -> Dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise UsageError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {name: value.array() for name, value in state.items() if isinstance(value, _TensorRef)}


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, before the zip format


def _read_legacy(path: Path) -> Dict[str, np.ndarray]:
    """torch.save before PyTorch 1.6: pickles (magic, protocol, sys info, the object, storage keys), then
    each storage as an int64 element count and its raw little-endian bytes."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:  # (any unpickling failure means: not a checkpoint)
            magic = None
        if magic != LEGACY_MAGIC:
            raise UsageError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor the legacy format)")
        pickle.load(f)                                       # protocol version
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise UsageError(f"{path}: saved on a big-endian machine; not supported")
        unpickler = _TorchUnpickler(f)
        state = unpickler.load()
        for key in pickle.load(f):
            storage = unpickler.storages[str(key)]
            (count,) = struct.unpack("<q", f.read(8))
            size = count * np.dtype("<u2" if storage.dtype == "bfloat16" else storage.dtype).itemsize
            raw = f.read(size)
            if len(raw) != size:
                raise UsageError(f"{path}: truncated (storage {key} needs {size} bytes, {len(raw)} left)")
            storage.array = _storage_array(raw, storage.dtype)
    return _resolve(path, state)


def read_pytorch_bin(path: Path) -> Dict[str, np.ndarray]:
    """All tensors of a `pytorch_model.bin`: the zip format (torch >= 1.6) or the legacy one before it."""
    if not zipfile.is_zipfile(path):
        return _read_legacy(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UsageError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            unpickler = _TorchUnpickler(f)
            state = unpickler.load()
        for storage in unpickler.storages.values():
            storage.array = _storage_array(archive.read(f"{prefix}/data/{storage.key}"), storage.dtype)
    return _resolve(path, state)


def read_hf_weights(model_dir: Path) -> Dict[str, np.ndarray]:
    """Weights of an HF model folder: model.safetensors if present, else pytorch_model.bin."""
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_pytorch_bin)):
        if (model_dir / name).is_file():
            return reader(model_dir / name)
    raise UsageError(f"{model_dir}: no model.safetensors or pytorch_model.bin "
                     "(sharded checkpoints are not supported; merge them first)")


# ---------------------------------------------------------------- names and configs


def hf_key(name: str) -> Optional[str]:
    """Map an HF BERT parameter name to ours (None: not part of a sequence classifier).

    A General TinyBERT's width projection `fit_dense.*` is kept under its name for TinyBERT to load.
    """
    if name.startswith(("embeddings.", "encoder.", "pooler.")):
        name = "bert." + name
    if not name.startswith(("bert.", "classifier.", PROJECTION_PREFIX)) or name.endswith("position_ids"):
        return None
    if ".LayerNorm." in name:
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return name


def hf_bert_config(hf_config: Dict[str, Any]) -> Dict[str, Any]:
    """Our model section from an HF BERT config.json (HF field names are ours)."""
    if hf_config.get("model_type", "bert") != "bert":
        raise UsageError(f"model_type '{hf_config.get('model_type')}' is not BERT")
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise UsageError("only absolute position embeddings are supported")
    model = {k: v for k, v in hf_config.items() if not k.startswith("_")}
    if "id2label" in hf_config:
        model["num_labels"] = len(hf_config["id2label"])
    if hf_config.get("problem_type") == "regression":
        model["num_labels"] = 1
    return BertConfig.from_dict(model).to_dict()


def read_hf(src: Union[str, Path]) -> Tuple[Dict[str, Any], Dict[str, np.ndarray], List[str]]:
    """(model config, state with our parameter names, ignored HF tensors) of an HF BERT folder."""
    src = Path(src)
    hf_config_path = src / CONFIG_FILE
    if not hf_config_path.is_file():
        raise UsageError(f"{src}: no {CONFIG_FILE}; expected a Hugging Face BERT folder")
    model_config = hf_bert_config(json.loads(hf_config_path.read_text(encoding="utf-8")))
    state, ignored = {}, []
    for name, array in read_hf_weights(src).items():
        key = hf_key(name)
        if key is None:
            ignored.append(name)
        else:
            state[key] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return model_config, state, ignored


def mlm_key(name: str) -> str:
    """HF masked-LM names are ours except the old LayerNorm gamma/beta spelling."""
    if ".LayerNorm." in name:
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return name


def mlm_state(weights: Dict[str, np.ndarray], source: str) -> Dict[str, np.ndarray]:
    """HF tensors -> our names for BertForMaskedLM; checks the head is there and the decoder is tied."""
    state: Dict[str, np.ndarray] = {}
    decoder_weight = decoder_bias = None
    for name, array in weights.items():
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
        key = mlm_key(name)
        if key == MLM_HEAD_PREFIX + "decoder.weight":
            decoder_weight = array
        elif key == MLM_HEAD_PREFIX + "decoder.bias":
            decoder_bias = array
        elif key.startswith(("bert.", MLM_HEAD_PREFIX)) and not key.endswith("position_ids"):
            state[key] = array
        else:
            log.debug("not part of a masked LM, ignored: %s", name)
    if not any(k.startswith(MLM_HEAD_PREFIX) for k in state) and decoder_weight is None:
        raise UsageError(f"{source}: the checkpoint has no masked-LM head ({MLM_HEAD_PREFIX}* tensors); the data "
                         "augmentation needs a BERT with its masked-LM head, e.g. Hugging Face bert-base-uncased "
                         "(BertForPreTraining or BertForMaskedLM weights)")
    if MLM_HEAD_PREFIX + "bias" not in state and decoder_bias is not None:
        state[MLM_HEAD_PREFIX + "bias"] = decoder_bias
    embeddings = state.get("bert.embeddings.word_embeddings.weight")
    if decoder_weight is not None and embeddings is not None and (
            decoder_weight.shape != embeddings.shape or not np.allclose(decoder_weight, embeddings, atol=1e-6)):
        raise UsageError(f"{source}: {MLM_HEAD_PREFIX}decoder.weight differs from the word embeddings; only "
                         "BERT's tied decoder is supported")
    return state


def read_mlm_config(path: Union[str, Path]) -> Dict[str, Any]:
    """The model config of an HF BERT folder that must hold a masked-LM head (data augmentation)."""
    hf_config = read_config_json(path, "pretrained model folder",
                                 f": no {CONFIG_FILE}; expected a Hugging Face BERT folder with the masked-LM head")
    if "format" in hf_config:
        raise UsageError(f"{path} is a distil model directory, which keeps no masked-LM head; pass the "
                         "Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    return hf_bert_config(hf_config)
