"""BERT with its masked-LM head, for TinyBERT's data augmentation (candidate words at a [MASK]).

The head is Google BERT's / Hugging Face's `cls.predictions`: dense -> gelu -> LayerNorm -> a decoder
whose weight is TIED to the word embeddings, plus an output bias. Parameter names follow HF, so a
`BertForPreTraining` or `BertForMaskedLM` checkpoint loads with a near-identity key map; its
`cls.seq_relationship.*` (next-sentence head) is not needed and ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np

from distil.errors import UsageError
from distil.models.bert import BertConfig, BertModel, LayerNorm, gelu, init_weights
from distil.models.hf_format import read_hf_weights
from distil.models.io import CONFIG_FILE, absent_parts, hf_bert_config, load_state
from distil.runtime import import_oneflow

flow = import_oneflow()
nn = flow.nn
log = logging.getLogger(__name__)

HEAD_PREFIX = "cls.predictions."


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden: flow.Tensor) -> flow.Tensor:
        return self.LayerNorm(gelu(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """transform, then logits = hidden @ word_embeddings^T + bias (the decoder has no weight of its own)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(flow.zeros(config.vocab_size))

    def forward(self, hidden: flow.Tensor, decoder_weight: flow.Tensor) -> flow.Tensor:
        return flow.matmul(self.transform(hidden), decoder_weight.transpose(0, 1)) + self.bias


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertForMaskedLM(nn.Module):
    """BertModel + masked-LM head. forward(input_ids, segment_ids, input_mask) -> (B, S, vocab) logits."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        init_weights(self, config.initializer_range)

    def _logits(self, hidden: flow.Tensor) -> flow.Tensor:
        return self.cls.predictions(hidden, self.bert.embeddings.word_embeddings.weight)

    def forward(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> flow.Tensor:
        _, hidden_states, _ = self.bert(input_ids, segment_ids, input_mask)
        return self._logits(hidden_states[-1])

    def logits_at(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor,
                  positions: flow.Tensor) -> flow.Tensor:
        """(B, vocab) logits at one position per sequence (`positions`: (B,) int64).

        The head runs only there: for BERT-base the vocab projection of every position would cost
        ~25 % of the encoder.
        """
        _, hidden_states, _ = self.bert(input_ids, segment_ids, input_mask)
        last = hidden_states[-1]
        batch, seq, width = last.shape
        flat = positions + flow.arange(batch, dtype=flow.int64, device=positions.device) * seq
        return self._logits(flow.index_select(last.reshape(batch * seq, width), 0, flat))


def _mlm_key(name: str) -> str:
    if ".LayerNorm." in name:
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    return name


def mlm_state(weights: Dict[str, np.ndarray], source: str) -> Dict[str, np.ndarray]:
    """HF tensors -> our names for BertForMaskedLM; checks the head is there and the decoder is tied."""
    state: Dict[str, np.ndarray] = {}
    decoder_weight = decoder_bias = None
    for name, array in weights.items():
        array = array.astype(np.float32) if array.dtype.kind == "f" else array
        key = _mlm_key(name)
        if key == HEAD_PREFIX + "decoder.weight":
            decoder_weight = array
        elif key == HEAD_PREFIX + "decoder.bias":
            decoder_bias = array
        elif key.startswith(("bert.", HEAD_PREFIX)) and not key.endswith("position_ids"):
            state[key] = array
        else:
            log.debug("not part of a masked LM, ignored: %s", name)
    if not any(k.startswith(HEAD_PREFIX) for k in state) and decoder_weight is None:
        raise UsageError(f"{source}: the checkpoint has no masked-LM head ({HEAD_PREFIX}* tensors); the data "
                         "augmentation needs a BERT with its masked-LM head, e.g. Hugging Face bert-base-uncased "
                         "(BertForPreTraining or BertForMaskedLM weights)")
    if HEAD_PREFIX + "bias" not in state and decoder_bias is not None:
        state[HEAD_PREFIX + "bias"] = decoder_bias
    embeddings = state.get("bert.embeddings.word_embeddings.weight")
    if decoder_weight is not None and embeddings is not None and (
            decoder_weight.shape != embeddings.shape or not np.allclose(decoder_weight, embeddings, atol=1e-6)):
        raise UsageError(f"{source}: {HEAD_PREFIX}decoder.weight differs from the word embeddings; only "
                         "BERT's tied decoder is supported")
    return state


def read_hf_config(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"pretrained model folder {path} does not exist")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise UsageError(f"{path}: no {CONFIG_FILE}; expected a Hugging Face BERT folder with the masked-LM head")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{config_path}: not valid JSON ({e})") from None
    if "format" in hf_config:
        raise UsageError(f"{path} is a distil model directory, which keeps no masked-LM head; pass the "
                         "Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, vocab.txt)")
    return hf_bert_config(hf_config)


def load_mlm(path: Union[str, Path]) -> BertForMaskedLM:
    """BertForMaskedLM with the weights of a Hugging Face BERT folder, in eval mode.

    Names and shapes are checked exactly (`io.load_state`); the pooler may be absent (BertForMaskedLM
    checkpoints have none; it is not used here).
    """
    path = Path(path)
    model_config = read_hf_config(path)
    state = mlm_state(read_hf_weights(path), str(path))
    try:
        model = BertForMaskedLM(BertConfig.from_dict(model_config))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: bad model configuration: {e}") from None
    load_state(model, state, str(path), skip=absent_parts(state))
    return model.eval()
