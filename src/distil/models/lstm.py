"""The Distilled-BiLSTM student (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT
into Simple Neural Networks", arXiv:1903.12136), all of it in this file.

word embedding (300) -> one bidirectional LSTM layer (300 per direction) -> [pair combination]
-> 400-unit ReLU layer -> dropout -> output layer. A sentence is represented by the forward
direction's state at its last real token and the backward direction's state at its first real
token, exactly as if the LSTM had run on the unpadded sentence, so padding never changes a result.

`pair_mode` (default "separate", as the paper does for sentence pairs): the two sentences of a
pair (segment 0 then segment 1, packed without a separator by the converter) are encoded by the
shared BiLSTM on their own and combined as [h_a, h_b, h_a * h_b, |h_a - h_b|]. "joint" encodes all
real tokens as one sequence (closer to the original OneFlow code, which joined a pair with a <PAD>
token into one sequence). "single", for single-sentence tasks (the paper's SST-2 model), feeds the
sentence's [h_fwd; h_bwd] (2 x 300) to the ReLU layer; it computes what "joint" computes.
Original (Oneflow-Model-Compression, `LSTMStudentForSequenceClassification`): 300-d embeddings,
an LSTM's state after the last (padded) position, FC 400 + ReLU, dropout 0.5, FC num_labels.

The forward returns the same dict as BertForSequenceClassification, with empty lists for the
hidden states and attention scores that a BiLSTM does not have.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict

from distil.models.dropout import Dropout
from distil.runtime import import_oneflow

flow = import_oneflow()
nn = flow.nn

PAIR_MODES = ("separate", "joint", "single")


@dataclasses.dataclass
class LstmConfig:
    """Distilled-BiLSTM hyper-parameters; the defaults are the paper's sizes and the converter's vocabulary."""

    vocab_size: int = 10002                # words incl. <UNK>, <PAD> (converter: 10,000 words, then the two)
    pad_token_id: int = 10001              # <PAD>, the converter's last id (the mask, not the id, marks padding)
    embedding_size: int = 300
    hidden_size: int = 300                 # per direction
    fc_size: int = 400                     # the ReLU layer
    dropout_prob: float = 0.5              # after the ReLU layer, as the original OneFlow code
    num_labels: int = 2                    # 1 = regression (STS-B)
    initializer_range: float = 0.25        # std of the word-embedding init (original 0.25; paper: word2vec)
    model_type: str = "bilstm"
    pair_mode: str = "separate"            # "separate" (paper), "joint" or "single"; see the module docstring

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embedding_size", "hidden_size", "fc_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.pad_token_id, int) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be an id in [0, {self.vocab_size}), got {self.pad_token_id!r}")
        for name in ("dropout_prob", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"dropout_prob must be in [0, 1), got {self.dropout_prob!r}")
        if not self.initializer_range > 0.0:
            raise ValueError(f"initializer_range must be positive, got {self.initializer_range!r}")
        if self.model_type != "bilstm":
            raise ValueError(f"model_type '{self.model_type}' is not 'bilstm'")
        if self.pair_mode not in PAIR_MODES:
            raise ValueError(f"pair_mode '{self.pair_mode}' is not one of {', '.join(PAIR_MODES)}")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "LstmConfig":
        """Build from a dict (e.g. a saved config.json), ignoring fields this model does not use."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def sentence_masks(segment_ids: flow.Tensor, input_mask: flow.Tensor, separate: bool) -> flow.Tensor:
    """(B, T) ids -> (B, S, T) float: 1 on the real tokens of each sentence (S = 2 pair halves, or 1)."""
    mask = input_mask.to(flow.float32)
    if not separate:
        return mask.unsqueeze(1)
    in_b = mask * segment_ids.to(flow.float32)
    return flow.stack([mask - in_b, in_b], dim=1)


class BiLstm(nn.Module):
    """One bidirectional LSTM layer that reads each sentence's end states, as if run unpadded.

    Gate order i, f, g, o (PyTorch's): c' = f*c + i*g, h' = o*tanh(c'), with
    [i, f, g, o] = [σ, σ, tanh, σ](x W_ih^T + h W_hh^T + bias). Parameters hold both directions
    (index 0 forward, 1 backward); `bias` is PyTorch's b_ih + b_hh, initialised like PyTorch.

    How it runs: one matmul projects every time step for both directions before the loop; each
    step then does one batched (2, B, H) x (2, H, 4H) matmul and the gate math for both directions
    at once (the backward one walks the time-reversed sequence). Rather than masking every state
    update, the state is zeroed where a sentence starts (for the backward direction: where it
    ends, coming from the right), so padding and the other sentence never leak in; after the loop
    one batched matmul reads the state at each sentence's last (forward) / first (backward) real
    token. Both sentences of a pair share the B rows, so "separate" costs what "joint" costs.

    Why this one: bench/bench_lstm.py (batch 32, seq 32, vocab 10002, 300/300/400, pairs, 2-core
    CPU, medians) - nn.Graph train step / eval examples/s / compile s (eval, train; single runs
    that vary by about a third from run to run):
      this scheme                                       281 ms   263/s   1.7, 7.4  (eager eval 318/s)
      the same with flow.tanh, not 2*sigmoid(2x) - 1    316 ms   244/s   1.4, 6.9
      the same with one matmul per direction            404 ms   197/s   2.3, 11.4
      fused projection, masked carry, a row a sentence  509 ms   141/s   1.7, 9.3
      per-direction cell loop (the original's, masked)  651 ms   120/s   4.4, 18.2
      stock flow.nn.LSTM (cannot mask padding)          467 ms   101/s   2.7, 8.8
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(flow.empty(2, 4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(flow.empty(2, 4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(flow.empty(2, 4 * hidden_size))
        self.register_buffer("_ones_row", flow.ones(1, hidden_size), persistent=False)
        # tanh(z) = 2*sigmoid(2z) - 1: with the g gate's pre-activations doubled, one sigmoid serves all
        # four gates. Scales for the projected gates (4H,) and for weight_hh's rows (4H, H), full-size
        # because a [..., 1] broadcast is slow.
        gate_scale, row_scale = flow.ones(4 * hidden_size), flow.ones(4 * hidden_size, hidden_size)
        gate_scale[2 * hidden_size:3 * hidden_size] = 2.0
        row_scale[2 * hidden_size:3 * hidden_size] = 2.0
        self.register_buffer("_gate_scale", gate_scale, persistent=False)
        self.register_buffer("_row_scale", row_scale, persistent=False)
        bound = 1.0 / math.sqrt(hidden_size)
        for weight in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: flow.Tensor, sentences: flow.Tensor) -> flow.Tensor:
        """x (B, T, E), sentences (B, S, T) 0/1 -> (B, S, 2H): [forward, backward] state of each sentence."""
        batch, steps, size = x.shape
        hidden = self.hidden_size
        before = flow.nn.functional.pad(sentences, (1, 0))[:, :, :steps]   # (B, S, T) token t-1 in the sentence
        after = flow.nn.functional.pad(sentences, (0, 1))[:, :, 1:]        # (B, S, T) token t+1 in the sentence
        first, last = sentences * (1.0 - before), sentences * (1.0 - after)
        # step s handles time s (forward) and time T-1-s (backward): flip the backward halves in time.
        # keep = 0 restarts the state: before a sentence's first token going forward, before its last
        # token going backward (whatever came from its right, padding or sentence b, is dropped)
        keep = flow.stack([1.0 - first.sum(dim=1), flow.flip(1.0 - last.sum(dim=1), [1])])  # (2, B, T)
        keep = flow.matmul(keep.permute(2, 0, 1).unsqueeze(-1), self._ones_row)  # (T, 2, B, 1) x (1, H)
        read = flow.stack([last, flow.flip(first, [2])])                          # (2, B, S, T)

        projected = flow.matmul(x.reshape(batch * steps, size), self.weight_ih.reshape(8 * hidden, size),
                                transpose_b=True) + self.bias.reshape(8 * hidden)      # (B*T, 8H)
        projected = projected.reshape(batch, steps, 2, 4 * hidden) * self._gate_scale
        projected = projected.permute(2, 1, 0, 3)                                       # (2, T, B, 4H)
        # cat, not stack, wherever gradients flow: with the batch split across processes, OneFlow 0.9
        # cannot compile stack's backward in an nn.Graph (a shape check fails); cat's compiles
        gates_in = flow.cat([projected[0].unsqueeze(1), flow.flip(projected[1], [0]).unsqueeze(1)], dim=1)  # (T,2,B,4H)
        weight_hh = self.weight_hh * self._row_scale                                    # (2, 4H, H)

        states = []
        h = c = None                      # zero initial state: the first step has no recurrent term
        for step in range(steps):
            gates = gates_in[step]                                                   # (2, B, 4H)
            if h is not None:
                h, c = h * keep[step], c * keep[step]
                gates = gates + flow.matmul(h, weight_hh, transpose_b=True)          # (2, B, H) x (2, H, 4H)
            sig = flow.sigmoid(gates)
            i, f, o = sig[..., :hidden], sig[..., hidden:2 * hidden], sig[..., 3 * hidden:]
            g = sig[..., 2 * hidden:3 * hidden] * 2.0 - 1.0                          # tanh of the g gate
            c = i * g if c is None else f * c + i * g
            h = o * (flow.sigmoid(c * 2.0) * 2.0 - 1.0)                               # o * tanh(c)
            states.append(h)
        read_states = flow.matmul(read, flow.cat([h.unsqueeze(2) for h in states], dim=2))  # (2,B,S,T) x (2,B,T,H)
        return read_states.permute(1, 2, 0, 3).reshape(batch, sentences.shape[1], 2 * hidden)


class BiLstmForSequenceClassification(nn.Module):
    """Embedding -> BiLSTM -> [pair combination] -> FC + ReLU -> dropout -> output layer.

    forward(input_ids, segment_ids, input_mask) -> {"logits": (B, num_labels), "hidden_states": [],
    "attention_scores": []}, the contract of BertForSequenceClassification. The linear layers keep
    OneFlow's (PyTorch's) default initialisation, as do the LSTM weights; the embedding is normal.
    """

    def __init__(self, config: LstmConfig):
        super().__init__()
        self.config = config
        self.separate = config.pair_mode == "separate"
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
        self.lstm = BiLstm(config.embedding_size, config.hidden_size)
        features = 2 * config.hidden_size * (4 if self.separate else 1)
        self.dense = nn.Linear(features, config.fc_size)
        self.dropout = Dropout(config.dropout_prob)
        self.classifier = nn.Linear(config.fc_size, config.num_labels)
        nn.init.normal_(self.word_embeddings.weight, mean=0.0, std=config.initializer_range)

    def forward(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> Dict:
        sentences = sentence_masks(segment_ids, input_mask, self.separate)
        encoded = self.lstm(self.word_embeddings(input_ids), sentences)   # (B, S, 2H)
        if self.separate:
            a, b = encoded[:, 0], encoded[:, 1]
            features = flow.cat([a, b, a * b, flow.abs(a - b)], dim=-1)    # (B, 8H)
        else:
            features = encoded[:, 0]                                       # (B, 2H)
        logits = self.classifier(self.dropout(flow.relu(self.dense(features))))
        return {"logits": logits, "hidden_states": [], "attention_scores": []}

    def logits(self, input_ids: flow.Tensor, segment_ids: flow.Tensor, input_mask: flow.Tensor) -> flow.Tensor:
        """forward's logits (the inference entry every model has)."""
        return self(input_ids, segment_ids, input_mask)["logits"]
