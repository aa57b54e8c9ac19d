"""BERT with its masked-LM head, for TinyBERT's data augmentation (candidate words at a [MASK]).

The head is Google BERT's / Hugging Face's `cls.predictions`: dense -> gelu -> LayerNorm -> a decoder
whose weight is TIED to the word embeddings, plus an output bias. Parameter names follow HF, so a
`BertForPreTraining` or `BertForMaskedLM` checkpoint loads with a near-identity key map; its
`cls.seq_relationship.*` (next-sentence head) is not needed and ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

from distil.errors import UsageError
from distil.models.bert import BertConfig, BertModel, LayerNorm, gelu, init_weights
from distil.models.hf_format import mlm_state, read_mlm_config, read_hf_weights
from distil.models.io import absent_parts, load_state
from distil.runtime import import_oneflow

flow = import_oneflow()
nn = flow.nn
log = logging.getLogger(__name__)



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


def load_mlm(path: Union[str, Path]) -> BertForMaskedLM:
    """BertForMaskedLM with the weights of a Hugging Face BERT folder, in eval mode.

    Names and shapes are checked exactly (`io.load_state`); the pooler may be absent (BertForMaskedLM
    checkpoints have none; it is not used here).
    """
    path = Path(path)
    model_config = read_mlm_config(path)
    state = mlm_state(read_hf_weights(path), str(path))
    try:
        model = BertForMaskedLM(BertConfig.from_dict(model_config))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{path}: bad model configuration: {e}") from None
    load_state(model, state, str(path), skip=absent_parts(state))
    return model.eval()
