"""Which BiLSTM implementation should the Distilled-BiLSTM student use on OneFlow 0.9? Measure them.

Every candidate replaces `model.lstm` of a `BiLstmForSequenceClassification` and shares its
parameters (so their logits are comparable), and is run on one batch of packed sentence pairs
(real lengths 4..seq, split between a and b, right-padded) in eager mode and inside nn.Graph
(eval graph; train graph = forward + cross-entropy + backward + AdamW). Reported per candidate:
graph compile seconds (eval, train), step milliseconds, eval examples/s, and the largest logit
difference from the implementation in distil/models/lstm.py (`padding_correct`: below 1e-4).
Step timings are [median, min] of --repeats runs after --warmup runs, each between two full
syncs (nn.Graph returns the loss before its backward and update finish); the candidates take
turns run by run, so that load from other processes hits them alike (the min shows the cost
without such load); examples/s come from the median. Compile times are single runs.

Candidates:
- stock: flow.nn.LSTM(bidirectional) over the padded batch, final states (the baseline; it cannot
  mask padding, so it is not padding-correct, and it cannot encode the two sentences apart);
- naive_cell: a per-direction loop, input and recurrent matmul each step, masked state carry
  on B*S rows (one row per sentence), like the original OneFlow code plus masking;
- fused_masked_carry: one input projection for all steps and both directions, one batched
  matmul per step for both directions, masked carry h = h + m*(h_new - h) on B*S rows;
- fused_reset_read_tanh: the model's scheme (zero the state where a sentence starts, read the end
  states after the loop; B rows for both sentences) with flow.tanh for the g gate and the cell;
- fused_reset_read_tanh_two_matmuls: the same with one recurrent matmul per direction per step;
- fused_reset_read_tanh_pretransposed: the same with the recurrent weight transposed once per
  forward instead of a transpose_b matmul every step;
- model: distil/models/lstm.py as it is (the same scheme, tanh as 2*sigmoid(2x) - 1).

Usage: PYTHONPATH=src python bench/bench_lstm.py [--batch 32] [--seq 32] [--vocab 10002]
       [--embedding 300] [--hidden 300] [--fc 400] [--pair-mode separate|joint] [--repeats 9]
       [--warmup 2] [--candidates name,name]  (about 8 minutes with every candidate at full size)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np

from distil.models.lstm import BiLstm, BiLstmForSequenceClassification, LstmConfig
from distil.runtime import exit_now, import_oneflow

flow = import_oneflow()
nn = flow.nn
# flow.nn.LSTM creates its zero initial state inside forward, which nn.Graph warns about
warnings.filterwarnings("ignore", message=r"Zeros\(\) is called in a nn.Graph")
# Waits for all queued work, a whole graph step included: reading the loss only waits for the
# forward, while backward and the optimizer update still run (and would be billed to the next run).
sync = flow._oneflow_internal.eager.Sync


def per_step_masks(sentences: flow.Tensor, ones_row: flow.Tensor) -> flow.Tensor:
    """(B, S, T) -> (T, 2, B*S, H): the mask of time s (forward) and T-1-s (backward) for step s."""
    batch, count, steps = sentences.shape
    rows = sentences.reshape(batch * count, steps)
    both = flow.stack([rows, flow.flip(rows, [1])])  # (2, B*S, T)
    return flow.matmul(both.permute(2, 0, 1).unsqueeze(-1), ones_row)  # (T, 2, B*S, 1) x (1, H)


def shared(module: nn.Module, base: BiLstm) -> None:
    """Use the parameters of `base`; a (1, H) row of ones expands masks (a [..., 1] broadcast is slow)."""
    module.hidden_size = base.hidden_size
    module.weight_ih, module.weight_hh, module.bias = base.weight_ih, base.weight_hh, base.bias
    module.register_buffer("_ones_row", flow.ones(1, base.hidden_size), persistent=False)


def lstm_gates(gates: flow.Tensor, hidden: int):
    """i, f, g, o with flow.tanh; gate order as in distil.models.lstm.BiLstm."""
    sig = flow.sigmoid(gates)
    return (
        sig[..., :hidden],
        sig[..., hidden : 2 * hidden],
        flow.tanh(gates[..., 2 * hidden : 3 * hidden]),
        sig[..., 3 * hidden :],
    )


class Stock(nn.Module):
    """flow.nn.LSTM with a copy of the weights; final states of the padded batch, repeated per sentence."""

    def __init__(self, base: BiLstm):
        super().__init__()
        hidden = base.hidden_size
        self.lstm = nn.LSTM(base.weight_ih.shape[2], hidden, batch_first=True, bidirectional=True)
        with flow.no_grad():
            for d, suffix in enumerate(("", "_reverse")):
                getattr(self.lstm, "weight_ih_l0" + suffix).copy_(base.weight_ih[d])
                getattr(self.lstm, "weight_hh_l0" + suffix).copy_(base.weight_hh[d])
                getattr(self.lstm, "bias_ih_l0" + suffix).copy_(base.bias[d])
                getattr(self.lstm, "bias_hh_l0" + suffix).zero_()

    def forward(self, x: flow.Tensor, sentences: flow.Tensor) -> flow.Tensor:
        _, (h_n, _) = self.lstm(x)
        state = flow.cat([h_n[0], h_n[1]], dim=-1)  # (B, 2H)
        return flow.stack([state] * sentences.shape[1], dim=1)  # (B, S, 2H)


class NaiveCell(nn.Module):
    """Per direction, per step: x_t W_ih^T + h W_hh^T + b, then a masked carry; one row per sentence."""

    def __init__(self, base: BiLstm):
        super().__init__()
        shared(self, base)

    def forward(self, x: flow.Tensor, sentences: flow.Tensor) -> flow.Tensor:
        batch, count, steps = sentences.shape
        hidden = self.hidden_size
        rows = flow.stack([x] * count, dim=1).reshape(batch * count, steps, x.shape[2])  # (B*S, T, E)
        masks = flow.matmul(sentences.reshape(batch * count, steps, 1), self._ones_row)  # (B*S, T, H)
        finals = []
        for d, order in ((0, range(steps)), (1, reversed(range(steps)))):
            h = c = None
            for t in order:
                gates = flow.matmul(rows[:, t], self.weight_ih[d], transpose_b=True) + self.bias[d]
                if h is not None:
                    gates = gates + flow.matmul(h, self.weight_hh[d], transpose_b=True)
                i, f, g, o = lstm_gates(gates, hidden)
                c_new = i * g if c is None else f * c + i * g
                h_new = o * flow.tanh(c_new)
                m = masks[:, t]
                h, c = (m * h_new, m * c_new) if h is None else (h + m * (h_new - h), c + m * (c_new - c))
            finals.append(h)
        return flow.cat(finals, dim=-1).reshape(batch, count, 2 * hidden)


class FusedMaskedCarry(nn.Module):
    """One projection for all steps and directions, directions batched, masked carry on B*S rows."""

    def __init__(self, base: BiLstm):
        super().__init__()
        shared(self, base)

    def forward(self, x: flow.Tensor, sentences: flow.Tensor) -> flow.Tensor:
        batch, count, steps = sentences.shape
        hidden, size = self.hidden_size, x.shape[2]
        projected = flow.matmul(
            x.reshape(batch * steps, size), self.weight_ih.reshape(8 * hidden, size), transpose_b=True
        ) + self.bias.reshape(8 * hidden)  # (B*T, 8H)
        projected = flow.stack([projected.reshape(batch, steps, 8 * hidden)] * count, dim=1)
        projected = projected.reshape(batch * count, steps, 2, 4 * hidden).permute(2, 1, 0, 3)  # (2, T, B*S, 4H)
        gates_in = flow.stack([projected[0], flow.flip(projected[1], [0])], dim=1)  # (T, 2, B*S, 4H)
        masks = per_step_masks(sentences, self._ones_row)  # (T, 2, B*S, H)
        h = c = None
        for step in range(steps):
            gates = gates_in[step]
            if h is not None:
                gates = gates + flow.matmul(h, self.weight_hh, transpose_b=True)  # (2, B*S, 4H)
            i, f, g, o = lstm_gates(gates, hidden)
            c_new = i * g if c is None else f * c + i * g
            h_new = o * flow.tanh(c_new)
            m = masks[step]
            h, c = (m * h_new, m * c_new) if h is None else (h + m * (h_new - h), c + m * (c_new - c))
        return h.reshape(2, batch, count, hidden).permute(1, 2, 0, 3).reshape(batch, count, 2 * hidden)


class FusedResetReadTanh(nn.Module):
    """The model's reset-and-read scheme on B rows, with flow.tanh instead of 2*sigmoid(2x) - 1."""

    def __init__(self, base: BiLstm):
        super().__init__()
        shared(self, base)

    def forward(self, x: flow.Tensor, sentences: flow.Tensor) -> flow.Tensor:
        batch, steps, size = x.shape
        hidden = self.hidden_size
        before = flow.nn.functional.pad(sentences, (1, 0))[:, :, :steps]
        after = flow.nn.functional.pad(sentences, (0, 1))[:, :, 1:]
        first, last = sentences * (1.0 - before), sentences * (1.0 - after)
        keep = flow.stack([1.0 - first.sum(dim=1), flow.flip(1.0 - last.sum(dim=1), [1])])  # (2, B, T)
        keep = flow.matmul(keep.permute(2, 0, 1).unsqueeze(-1), self._ones_row)  # (T, 2, B, H)
        read = flow.stack([last, flow.flip(first, [2])])  # (2, B, S, T)
        projected = flow.matmul(
            x.reshape(batch * steps, size), self.weight_ih.reshape(8 * hidden, size), transpose_b=True
        ) + self.bias.reshape(8 * hidden)
        projected = projected.reshape(batch, steps, 2, 4 * hidden).permute(2, 1, 0, 3)  # (2, T, B, 4H)
        gates_in = flow.stack([projected[0], flow.flip(projected[1], [0])], dim=1)  # (T, 2, B, 4H)
        weight_hh = self.recurrent_weight()
        states, h, c = [], None, None
        for step in range(steps):
            gates = gates_in[step]
            if h is not None:
                h, c = h * keep[step], c * keep[step]
                gates = gates + self.recurrent(h, weight_hh)
            i, f, g, o = lstm_gates(gates, hidden)
            c = i * g if c is None else f * c + i * g
            h = o * flow.tanh(c)
            states.append(h)
        read_states = flow.matmul(read, flow.stack(states, dim=2))  # (2, B, S, H)
        return read_states.permute(1, 2, 0, 3).reshape(batch, sentences.shape[1], 2 * hidden)

    def recurrent_weight(self) -> flow.Tensor:
        return self.weight_hh  # (2, 4H, H)

    def recurrent(self, h: flow.Tensor, weight: flow.Tensor) -> flow.Tensor:
        return flow.matmul(h, weight, transpose_b=True)  # (2, B, H) x (2, H, 4H)


class FusedResetReadTanhTwoMatmuls(FusedResetReadTanh):
    """As fused_reset_read_tanh, with one (B, H) x (H, 4H) matmul per direction instead of a batched one."""

    def recurrent(self, h: flow.Tensor, weight: flow.Tensor) -> flow.Tensor:
        return flow.stack([flow.matmul(h[d], weight[d], transpose_b=True) for d in (0, 1)])


class FusedResetReadTanhPretransposed(FusedResetReadTanh):
    """As fused_reset_read_tanh, with the recurrent weight transposed to (2, H, 4H) once per forward."""

    def recurrent_weight(self) -> flow.Tensor:
        return self.weight_hh.transpose(1, 2).contiguous()

    def recurrent(self, h: flow.Tensor, weight: flow.Tensor) -> flow.Tensor:
        return flow.matmul(h, weight)


CANDIDATES: dict[str, Callable[[BiLstm], nn.Module]] = {
    "stock": Stock,
    "naive_cell": NaiveCell,
    "fused_masked_carry": FusedMaskedCarry,
    "fused_reset_read_tanh": FusedResetReadTanh,
    "fused_reset_read_tanh_two_matmuls": FusedResetReadTanhTwoMatmuls,
    "fused_reset_read_tanh_pretransposed": FusedResetReadTanhPretransposed,
    "model": lambda base: base,
}


def make_batch(batch: int, seq: int, vocab: int, pad: int, seed: int = 0):
    """Packed pairs: real length 4..seq split into a and b (b may be empty), then <PAD>."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, seq + 1, size=batch)
    len_a = np.maximum(1, (lengths * rng.uniform(0.3, 1.0, size=batch)).astype(int))
    positions = np.arange(seq)[None]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, rng.integers(0, vocab - 2, size=(batch, seq)), pad).astype(np.int32)
    segments = ((positions >= len_a[:, None]) & (mask == 1)).astype(np.int32)
    labels = rng.integers(0, 2, size=batch).astype(np.int64)
    return [flow.tensor(a) for a in (ids, segments, mask)], flow.tensor(labels)


class EvalGraph(nn.Graph):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def build(self, input_ids, segment_ids, input_mask):
        return self.model(input_ids, segment_ids, input_mask)["logits"]


class TrainGraph(nn.Graph):
    def __init__(self, model: nn.Module, optimizer):
        super().__init__()
        self.model = model
        self.add_optimizer(optimizer)

    def build(self, input_ids, segment_ids, input_mask, labels):
        loss = nn.functional.cross_entropy(self.model(input_ids, segment_ids, input_mask)["logits"], labels)
        loss.backward()
        return loss


def round_robin_ms(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """[median, min] ms per run; the candidates take turns so that load from other processes hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(warmup + repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {
        name: [round(statistics.median(values) * 1e3, 1), round(min(values) * 1e3, 1)] for name, values in times.items()
    }


def timed_s(run: Callable[[], object]) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def build(name: str, config: LstmConfig) -> nn.Module:
    flow.manual_seed(0)  # the same initial weights for every candidate
    model = BiLstmForSequenceClassification(config)
    model.lstm = CANDIDATES[name](model.lstm)
    return model


def eager_train_step(model: nn.Module, inputs, labels) -> Callable[[], object]:
    optimizer = flow.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> object:
        loss = nn.functional.cross_entropy(model(*inputs)["logits"], labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.numpy()

    return step


def measure(names: list[str], config: LstmConfig, inputs, labels, args) -> dict[str, dict[str, object]]:
    batch = labels.shape[0]
    models = {name: build(name, config) for name in names}
    reference_model = build("model", config)
    for model in (*models.values(), reference_model):
        model.eval()
    results: dict[str, dict[str, object]] = {name: {} for name in names}
    with flow.no_grad():
        reference = reference_model(*inputs)["logits"].numpy()
        for name, model in models.items():
            diff = float(np.abs(model(*inputs)["logits"].numpy() - reference).max())
            results[name].update(padding_correct=diff < 1e-4, max_abs_logit_diff=float(f"{diff:.2e}"))
        eager_eval = round_robin_ms(
            {name: (lambda m=m: m(*inputs)["logits"].numpy()) for name, m in models.items()}, args.warmup, args.repeats
        )
    eval_graphs = {name: EvalGraph(model) for name, model in models.items()}
    for name, graph in eval_graphs.items():
        results[name]["graph_eval_compile_s"] = round(timed_s(lambda: graph(*inputs).numpy()), 2)
    graph_eval = round_robin_ms(
        {name: (lambda g=g: g(*inputs).numpy()) for name, g in eval_graphs.items()}, args.warmup, args.repeats
    )
    for model in models.values():
        model.train()
    eager_train = round_robin_ms(
        {name: eager_train_step(m, inputs, labels) for name, m in models.items()}, args.warmup, args.repeats
    )
    train_graphs = {name: TrainGraph(m, flow.optim.AdamW(m.parameters(), lr=1e-3)) for name, m in models.items()}
    for name, graph in train_graphs.items():
        results[name]["graph_train_compile_s"] = round(timed_s(lambda: graph(*inputs, labels).numpy()), 2)
    graph_train = round_robin_ms(
        {name: (lambda g=g: g(*inputs, labels).numpy()) for name, g in train_graphs.items()}, args.warmup, args.repeats
    )
    for name in names:
        results[name].update(
            graph_train_step_ms=graph_train[name],
            graph_eval_ms=graph_eval[name],
            graph_eval_examples_per_s=round(batch * 1e3 / graph_eval[name][0]),
            eager_train_step_ms=eager_train[name],
            eager_eval_ms=eager_eval[name],
            eager_eval_examples_per_s=round(batch * 1e3 / eager_eval[name][0]),
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=10002)
    parser.add_argument("--embedding", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--fc", type=int, default=400)
    parser.add_argument("--pair-mode", default="separate", choices=("separate", "joint"))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma list out of {', '.join(CANDIDATES)}")
    args = parser.parse_args()
    names = [n for n in args.candidates.split(",") if n]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates: {', '.join(unknown)}")
    config = LstmConfig(
        vocab_size=args.vocab,
        pad_token_id=args.vocab - 1,
        embedding_size=args.embedding,
        hidden_size=args.hidden,
        fc_size=args.fc,
        pair_mode=args.pair_mode,
    )
    inputs, labels = make_batch(args.batch, args.seq, args.vocab, config.pad_token_id)
    results = {
        "question": "BiLSTM implementations on OneFlow 0.9: graph compile s, step ms, eval examples/s",
        "sizes": {
            "batch": args.batch,
            "seq": args.seq,
            "vocab": args.vocab,
            "embedding": args.embedding,
            "hidden": args.hidden,
            "fc": args.fc,
            "pair_mode": args.pair_mode,
        },
        "repeats": args.repeats,
        "warmup": args.warmup,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "oneflow": flow.__version__,
        "candidates": measure(names, config, inputs, labels, args),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
    exit_now(0)
