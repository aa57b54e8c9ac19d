"""BERT for sequence classification, all of it in this file (Google BERT: post-LN, learned positions, erf GELU).

Module and parameter names follow Hugging Face's `modeling_bert.py`, so an HF checkpoint loads
with a near-identity key map. The forward returns logits plus every hidden state and every
layer's pre-softmax attention scores, which the distillation operators consume.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

from distil.models.dropout import Dropout
from distil.runtime import import_oneflow

flow = import_oneflow()
nn = flow.nn


@dataclasses.dataclass
class BertConfig:
    """BERT hyper-parameters, with Hugging Face's field names so an HF `config.json` loads as-is."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"               # the exact erf form, as Google BERT and OneFlow's gelu
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12          # Google/HF weights; the original OneFlow code used 1e-5
    num_labels: int = 2                    # 1 = regression (STS-B)
    classifier_dropout: float = 0.1        # original: no dropout before the classifier; Google BERT has one
    model_type: str = "bert"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"The hidden size ({self.hidden_size}) is not a multiple of the number of "
                             f"attention heads ({self.num_attention_heads})")
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act '{self.hidden_act}' is not supported; BERT uses 'gelu'")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "BertConfig":
        """Build from a dict (ours or an HF config.json), ignoring fields BERT does not use."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed with matmuls.

    `flow.nn.LayerNorm` on CPU broadcasts along the last axis, a path ~40x slower in OneFlow 0.9
    (bench/bench_bert.py); mean and variance as matmuls with a 1/H column agree with it to
    ~1e-6 and keep HF's parameter names `weight` and `bias`.
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(flow.ones(hidden_size))
        self.bias = nn.Parameter(flow.zeros(hidden_size))
        self.eps = eps
        self.register_buffer("_mean_col", flow.ones(hidden_size, 1) / hidden_size, persistent=False)
        self.register_buffer("_ones_row", flow.ones(1, hidden_size), persistent=False)

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        mean = flow.matmul(x, self._mean_col)                           # (..., 1)
        centered = x - flow.matmul(mean, self._ones_row)                 # (..., H), no last-axis broadcast
        inv_std = flow.rsqrt(flow.matmul(centered * centered, self._mean_col) + self.eps)
        return centered * flow.matmul(inv_std, self._ones_row) * self.weight + self.bias


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        # a persistent-free buffer instead of flow.arange inside forward (arange also breaks ONNX export)
        self.register_buffer("position_ids", flow.arange(config.max_position_embeddings).unsqueeze(0),
                             persistent=False)

    def forward(self, input_ids: flow.Tensor, segment_ids: flow.Tensor) -> flow.Tensor:
        seq_length = input_ids.shape[1]
        positions = self.position_ids[:, :seq_length]                   # (1, S)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(segment_ids)
        x = x + self.position_embeddings(positions)                     # (B, S, H) + (1, S, H)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: flow.Tensor) -> flow.Tensor:
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, self.num_heads, self.head_size).permute(0, 2, 1, 3)  # (B, h, S, d)

    def forward(self, hidden: flow.Tensor, additive_mask: flow.Tensor, query_rows: Optional[int] = None):
        """Every position attends, or only the first `query_rows` (queries; keys and values are all positions)."""
        queries = hidden if query_rows is None else hidden[:, :query_rows]
        q, v = self._heads(self.query(queries)), self._heads(self.value(hidden))
        batch, seq, _ = hidden.shape
        # K^T by one permute: oneflow-onnx's transpose optimiser drops a permute followed by a transpose
        k_t = self.key(hidden).reshape(batch, seq, self.num_heads, self.head_size).permute(0, 2, 3, 1)  # (B, h, d, S)
        scores = flow.matmul(q, k_t) * (1.0 / math.sqrt(self.head_size))  # (B, h, S, S)
        scores = scores + additive_mask                                  # (B, 1, 1, S): -10000 on padding keys
        probs = self.dropout(flow.softmax(scores, dim=-1))
        context = flow.matmul(probs, v).permute(0, 2, 1, 3)              # (B, S, h, d)
        batch, seq = context.shape[0], context.shape[1]
        return context.reshape(batch, seq, self.num_heads * self.head_size), scores

    def relations(self, hidden: flow.Tensor, additive_mask: flow.Tensor) -> Dict[str, flow.Tensor]:
        """What MiniLM distils of this layer: its pre-softmax scores (B, h, S, S) and its queries, keys and
        values (B, S, H), without computing the context."""
        q, k, v = self.query(hidden), self.key(hidden), self.value(hidden)
        scores = flow.matmul(self._heads(q), self._heads(k).permute(0, 1, 3, 2)) * (1.0 / math.sqrt(self.head_size))
        return {"attention_scores": scores + additive_mask, "queries": q, "keys": k, "values": v}


class BertSelfOutput(nn.Module):
    """dense -> dropout -> residual -> LayerNorm; also the FFN output block (`BertOutput`)."""

    def __init__(self, config: BertConfig, in_size: int):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: flow.Tensor, residual: flow.Tensor) -> flow.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, hidden: flow.Tensor, additive_mask: flow.Tensor, query_rows: Optional[int] = None):
        context, scores = self.self(hidden, additive_mask, query_rows)
        return self.output(context, hidden if query_rows is None else hidden[:, :query_rows]), scores


def gelu(x: flow.Tensor) -> flow.Tensor:
    """The exact (erf) GELU, written out: in a training graph this trains a 4L-312 step ~13 % faster than
    `flow.nn.functional.gelu` on CPU, whose backward is slow (bench/bench_bert.py); equal to 3e-7."""
    return 0.5 * x * (1.0 + flow.erf(x * (1.0 / math.sqrt(2.0))))


class Gelu(nn.Module):
    """`gelu` as a module, so that its ops carry a module scope of their own (the ONNX export finds them)."""

    def forward(self, x: flow.Tensor) -> flow.Tensor:
        return gelu(x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = Gelu()

    def forward(self, hidden: flow.Tensor) -> flow.Tensor:
        return self.intermediate_act_fn(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def forward(self, hidden: flow.Tensor, additive_mask: flow.Tensor, query_rows: Optional[int] = None):
        """The layer's output at every position, or at the first `query_rows` positions only."""
        attended, scores = self.attention(hidden, additive_mask, query_rows)
        return self.output(self.intermediate(attended), attended), scores


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: flow.Tensor) -> flow.Tensor:
        return flow.tanh(self.dense(hidden[:, 0]))                      # the [CLS] position


def additive_attention_mask(input_mask: flow.Tensor) -> flow.Tensor:
    """(B, S) 1/0 mask -> (B, 1, 1, S) additive mask: 0 on real keys, -10000 on padding (Google BERT)."""
    mask = input_mask.to(flow.float32).unsqueeze(1).unsqueeze(2)
    return (mask - 1.0) * 10000.0


class BertModel(nn.Module):
    """Embeddings, encoder and pooler; `layers(...)` exposes every intermediate result."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)

    def forward(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor):
        """Returns (pooled (B, H), hidden_states [L+1 × (B, S, H)], attention_scores [L × (B, h, S, S)])."""
        additive_mask = additive_attention_mask(input_mask)
        hidden = self.embeddings(input_ids, segment_ids)
        hidden_states: List[flow.Tensor] = [hidden]
        attention_scores: List[flow.Tensor] = []
        for layer in self.encoder.layer:
            hidden, scores = layer(hidden, additive_mask)
            hidden_states.append(hidden)
            attention_scores.append(scores)
        return self.pooler(hidden), hidden_states, attention_scores

    def last_attention(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor
                       ) -> Dict[str, flow.Tensor]:
        """The last layer's self-attention relations (`BertSelfAttention.relations`); its feed-forward never runs."""
        additive_mask = additive_attention_mask(input_mask)
        hidden = self.embeddings(input_ids, segment_ids)
        layers = list(self.encoder.layer)
        for layer in layers[:-1]:
            hidden, _ = layer(hidden, additive_mask)
        return layers[-1].attention.self.relations(hidden, additive_mask)

    def pooled(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> flow.Tensor:
        """The pooled [CLS] state alone: the last layer computes only the [CLS] row after its keys and values,
        the one row the pooler reads (for 4 layers, about a fifth of the work)."""
        additive_mask = additive_attention_mask(input_mask)
        hidden = self.embeddings(input_ids, segment_ids)
        last = len(self.encoder.layer) - 1
        for index, layer in enumerate(self.encoder.layer):
            hidden, _ = layer(hidden, additive_mask, 1 if index == last else None)
        return self.pooler(hidden)


def init_weights(model: nn.Module, std: float) -> None:
    """Google BERT's initialisation: N(0, std) weights (truncation aside), zero biases, unit LayerNorm."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


class BertForSequenceClassification(nn.Module):
    """BERT + dropout + a linear head with `num_labels` outputs (1: a regression score).

    forward(input_ids, segment_ids, input_mask) -> {"logits": (B, num_labels),
    "hidden_states": embeddings then each layer's output, "attention_scores": each layer's
    pre-softmax scores with the additive mask applied}.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> Dict:
        pooled, hidden_states, attention_scores = self.bert(input_ids, segment_ids, input_mask)
        logits = self.classifier(self.dropout(pooled))
        return {"logits": logits, "hidden_states": hidden_states, "attention_scores": attention_scores}

    def last_attention(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor
                       ) -> Dict[str, flow.Tensor]:
        return self.bert.last_attention(input_ids, segment_ids, input_mask)

    def logits(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> flow.Tensor:
        """forward's logits, computing only what they need (inference: evaluation, predict, ONNX)."""
        return self.classifier(self.dropout(self.bert.pooled(input_ids, segment_ids, input_mask)))
