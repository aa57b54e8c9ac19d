"""The self-describing model directory: config.json, vocab.txt, weights/, train_state/, results.

`load_model(dir)` needs nothing but the directory. Every write goes to a temporary name and is
renamed into place, so an interrupted save never leaves a half-written model behind. Hugging
Face BERT checkpoints are imported with `convert_hf` (no PyTorch needed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from distil import __version__
from distil.errors import UsageError
from distil.fileio import read_config_json, replace_dir, write_json_atomic
from distil.models.hf_format import PROJECTION_PREFIX, read_hf
from distil.runtime import import_oneflow

flow = import_oneflow()
log = logging.getLogger(__name__)

FORMAT = "distil-model/1"
CONFIG_FILE, VOCAB_FILE, WEIGHTS_DIR, TRAIN_STATE_DIR = "config.json", "vocab.txt", "weights", "train_state"
PathLike = Union[str, Path]


def model_classes(model_type: str):
    """(config class, model class) for a `model_type` of config.json."""
    if model_type == "bert":
        from distil.models.bert import BertConfig, BertForSequenceClassification
        return BertConfig, BertForSequenceClassification
    if model_type == "bilstm":
        from distil.models.lstm import BiLstmForSequenceClassification, LstmConfig
        return LstmConfig, BiLstmForSequenceClassification
    raise UsageError(f"unknown model_type '{model_type}' (known: bert, bilstm)")


def build_model(model_config: Mapping[str, Any]) -> flow.nn.Module:
    """A freshly initialised model from the "model" section of config.json."""
    config_cls, model_cls = model_classes(model_config.get("model_type", "bert"))
    try:
        return model_cls(config_cls.from_dict(dict(model_config)))
    except (TypeError, ValueError) as e:
        raise UsageError(f"bad model configuration: {e}") from None


# ---------------------------------------------------------------- reading a model directory


def read_config(model_dir: PathLike) -> Dict[str, Any]:
    """config.json of a model directory, with a clear error for anything that is not one."""
    path = Path(model_dir) / CONFIG_FILE
    config = read_config_json(model_dir, "model directory", f" is not a model directory: it has no {CONFIG_FILE}")
    if config.get("format") != FORMAT:
        hint = " (a Hugging Face checkpoint? import it with: python -m distil convert-hf SRC DST)" \
            if "model_type" in config else ""
        raise UsageError(f"{path}: not a distil model config (no \"format\": \"{FORMAT}\"){hint}")
    return config


def load_state(model: flow.nn.Module, state: Mapping[str, Any], source: str,
               skip: Tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`, checking that names and shapes match exactly.

    `skip` lists name prefixes left at their initial values (e.g. a classifier for another task).
    """
    own = model.state_dict()
    wanted = {k: v for k, v in own.items() if not k.startswith(skip)}
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(skip))
    if missing or unexpected:
        raise UsageError(f"{source}: tensors do not match the model: missing {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
                         f"{' ...' if len(unexpected) > 10 else ''}")
    for name in wanted:
        got = tuple(state[name].shape)
        if got != tuple(own[name].shape):
            raise UsageError(f"{source}: tensor '{name}' has shape {got} in the checkpoint but "
                             f"{tuple(own[name].shape)} in the model (check config.json)")
    converted = {k: v if isinstance(v, flow.Tensor) else flow.tensor(np.ascontiguousarray(v))
                 for k, v in state.items() if k in wanted}
    for k, v in converted.items():  # a model placed on N ranks takes the same values on every rank
        if own[k].is_global and not v.is_global:
            converted[k] = v.to_global(placement=own[k].placement, sbp=own[k].sbp)
    model.load_state_dict({**own, **converted})


def absent_parts(state: Mapping[str, Any], parts: Tuple[str, ...] = ("bert.pooler.",)) -> Tuple[str, ...]:
    """The optional parts (name prefixes) a checkpoint has no tensor for; a pretraining one may lack the pooler."""
    return tuple(p for p in parts if not any(k.startswith(p) for k in state))


def load_weights(model: flow.nn.Module, model_dir: PathLike, skip: Tuple[str, ...] = ()) -> None:
    weights = Path(model_dir) / WEIGHTS_DIR
    if not weights.is_dir():
        raise UsageError(f"{model_dir}: no {WEIGHTS_DIR}/ folder (the model was never saved)")
    load_state(model, flow.load(str(weights)), str(weights), skip)


def load_model(model_dir: PathLike) -> flow.nn.Module:
    """The model stored in `model_dir`, in eval mode; needs nothing but the directory."""
    config = read_config(model_dir)
    model = build_model(config["model"])
    load_weights(model, model_dir)
    return model.eval()


# ---------------------------------------------------------------- writing, atomically


def local_copies(state: Any) -> Any:
    """A (nested) state dict with global tensors turned into this rank's full local copies, for saving."""
    if isinstance(state, Mapping):
        return {k: local_copies(v) for k, v in state.items()}
    if isinstance(state, flow.Tensor) and state.is_global:
        return state.to_global(sbp=flow.sbp.broadcast).to_local()
    return state


def weights_mtime(model_dir: Path) -> float:
    """When the model's weights last changed (the newest file in weights/)."""
    files = [p for p in (model_dir / WEIGHTS_DIR).rglob("*") if p.is_file()]
    if not files:
        raise UsageError(f"{model_dir}: no {WEIGHTS_DIR}/ (the model was never saved, or not completely)")
    return max(p.stat().st_mtime for p in files)


def as_numpy(tensor: flow.Tensor) -> np.ndarray:
    """The values of a local tensor or of a broadcast global one (every rank holds all of them)."""
    return (tensor.to_local() if tensor.is_global else tensor).numpy()


def save_weights(model: flow.nn.Module, model_dir: PathLike) -> None:
    """flow.save the model's state dict into <model_dir>/weights, atomically (global tensors as local copies)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = model_dir / f".{WEIGHTS_DIR}.tmp-{os.getpid()}"
    try:
        flow.save(local_copies(model.state_dict()), str(staged))
        replace_dir(staged, model_dir / WEIGHTS_DIR)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def write_config(model_dir: PathLike, config: Dict[str, Any]) -> None:
    config = {"format": FORMAT, **config, "created_by": f"distil {__version__}"}
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(model_dir) / CONFIG_FILE, config)


def copy_vocab(vocab_file: PathLike, model_dir: PathLike) -> None:
    target = Path(model_dir) / VOCAB_FILE
    tmp = target.with_name(f".{VOCAB_FILE}.tmp-{os.getpid()}")
    shutil.copyfile(vocab_file, tmp)
    os.replace(tmp, target)


def size_on_disk(path: PathLike) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


ONNX_FILE = "model.onnx"  # python -m distil export-onnx
ONNX_INT8_FILE = "model.int8.onnx"  # python -m distil export-onnx --quantize int8
# plus result files (*.json, *.png) and crash.log
SERVED = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_DIR, ONNX_FILE, ONNX_INT8_FILE)


def serve_for_online(model_dir: PathLike) -> None:
    """Keep only what inference needs: config, vocab, the served weights, an ONNX export and results.

    Removes train_state/ (optimizer, step, RNG), any intermediate stage, and the paths of the teacher
    and of the initial student from config.json.
    original: deleted teacher and optimizer variables from the checkpoint folder; ours never
    touches config.json, vocab.txt, weights/, result files or crash.log.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    if not (model_dir / WEIGHTS_DIR).is_dir():
        raise UsageError(f"{model_dir}: refusing to clean a model without {WEIGHTS_DIR}/")
    options = (config.get("algorithm") or {}).get("options") or {}
    for reference in ("teacher_model", "student_model", "pretrained_model"):
        options.pop(reference, None)
    write_json_atomic(model_dir / CONFIG_FILE, {**config, "served": True})
    for path in model_dir.iterdir():
        if path.name in SERVED or (path.is_file() and path.suffix in (".json", ".png", ".log")):
            continue
        trash = model_dir / f".{path.name}.removing-{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
    log.info("%s: kept only what inference needs (%s, %s, %s/, results)", model_dir, CONFIG_FILE, VOCAB_FILE,
             WEIGHTS_DIR)


# ---------------------------------------------------------------- Hugging Face import


@dataclasses.dataclass
class Pretrained:
    """A model dir or HF folder to start from: config, weights, vocabulary, its task (if fine-tuned), and a
    General TinyBERT's width projection (`fit_dense.*`) when it has one."""

    config: Dict[str, Any]
    state: Dict[str, Any]
    vocab_file: Path
    task: Optional[str] = None
    projection: Dict[str, Any] = dataclasses.field(default_factory=dict)


def read_pretrained(path: PathLike) -> Pretrained:
    """A model directory or a Hugging Face BERT folder, read for initialising a model."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise UsageError(f"{path} is neither a model directory nor a Hugging Face checkpoint (no {CONFIG_FILE})")
    if not (path / VOCAB_FILE).is_file():
        raise UsageError(f"{path}: no {VOCAB_FILE}")
    if "format" in json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")):
        config = read_config(path)
        if not (path / WEIGHTS_DIR).is_dir():
            raise UsageError(f"{path}: no {WEIGHTS_DIR}/ folder (the model was never saved)")
        state = dict(flow.load(str(path / WEIGHTS_DIR)))
        projection = {k[len(PROJECTION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(PROJECTION_PREFIX)}
        return Pretrained(config["model"], state, path / VOCAB_FILE, (config.get("task") or {}).get("name"),
                          projection)
    model_config, state, _ = read_hf(path)
    projection = {k[len(PROJECTION_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(PROJECTION_PREFIX)}
    return Pretrained(model_config, state, path / VOCAB_FILE, projection=projection)


def convert_hf(src: PathLike, dst: PathLike) -> Dict[str, Any]:
    """Write an HF BERT checkpoint (BertModel / ForSequenceClassification / ForPreTraining) as a model dir."""
    src, dst = Path(src), Path(dst)
    if (dst / CONFIG_FILE).exists():
        raise UsageError(f"{dst} already holds a model; choose another destination")
    if not (src / VOCAB_FILE).is_file():
        raise UsageError(f"{src}: no {VOCAB_FILE}")
    model_config, state, ignored = read_hf(src)
    ignored += [k for k in state if k.startswith(PROJECTION_PREFIX)]
    state = {k: v for k, v in state.items() if not k.startswith(PROJECTION_PREFIX)}
    model = build_model(model_config)
    initialized = sorted(k for k in model.state_dict() if k not in state and k.startswith(("classifier.", "bert.pooler.")))
    load_state(model, state, str(src), skip=tuple(initialized))
    write_new_model_dir(dst, model, model_config, src / VOCAB_FILE,
                        {"name": "pretrained", "source": str(src.resolve())})
    for name in ignored:
        log.info("not part of a sequence classifier, ignored: %s", name)
    for name in initialized:
        log.warning("not in the checkpoint, newly initialised: %s", name)
    return {"model_dir": str(dst), "model": model_config, "ignored": ignored, "initialized": initialized}


def write_new_model_dir(dst: Path, model: flow.nn.Module, model_config: Dict[str, Any], vocab_file: Path,
                        algorithm: Dict[str, Any], task: Optional[Dict[str, Any]] = None,
                        data: Optional[Dict[str, Any]] = None) -> None:
    """Create a complete model directory that no training run wrote (imported, fresh, derived), atomically."""
    if (dst / CONFIG_FILE).exists():
        raise UsageError(f"{dst} already holds a model; choose another destination")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        write_config(staged, {"model": model_config, "task": task,
                              "data": data or {"format": "bert", "do_lower_case": True}, "algorithm": algorithm})
        copy_vocab(vocab_file, staged)
        save_weights(model, staged)
        replace_dir(staged, dst)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def init_bert(dst: PathLike, vocab_file: PathLike, sizes: Dict[str, int], seed: int = 0) -> Dict[str, Any]:
    """A randomly initialised BERT model dir over `vocab_file` (a stand-in "pretrained" model for tests)."""
    from distil.data.tokenization import load_vocab
    from distil.models.bert import BertConfig

    flow.manual_seed(seed)
    try:
        model_config = BertConfig(vocab_size=len(load_vocab(vocab_file)), **sizes).to_dict()
    except ValueError as e:
        raise UsageError(str(e)) from None
    write_new_model_dir(Path(dst), build_model(model_config), model_config, Path(vocab_file),
                        {"name": "random-init", "seed": seed})
    return {"model_dir": str(dst), "model": model_config}
