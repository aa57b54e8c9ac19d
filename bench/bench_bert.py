"""How fast is our OneFlow BERT on this CPU, and which formulation of each hot op is fastest?

Same shapes as bench/torch_baseline.py (the PyTorch reference), so the two JSON outputs compare
line by line. Prints one JSON object: medians after warm-up; nothing here is asserted.
Usage: PYTHONPATH=src .venv/bin/python bench/bench_bert.py [--only ops,layer,step,forward] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from distil.models.bert import BertConfig, BertForSequenceClassification, BertLayer, LayerNorm, flow, gelu
from distil.train.optim import build_optimizer

SMALL = {"hidden_size": 312, "num_attention_heads": 12, "intermediate_size": 1200}
BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(tensor: flow.Tensor) -> None:
    """Wait for the tensor and for all queued work (a train graph's update runs after its loss is ready)."""
    tensor.numpy()
    flow._oneflow_internal.eager.Sync()


def bench_ops(args) -> dict:
    """LayerNorm (stock vs matmul form), GELU and softmax, forward + backward."""
    out = {}
    for hidden in (312, 768):
        x = flow.randn(args.batch, args.seq, hidden, requires_grad=True)
        stock = flow.nn.LayerNorm(hidden, eps=1e-12)
        ours = LayerNorm(hidden, 1e-12)
        for name, layer in (("stock_nn_LayerNorm", stock), ("matmul_LayerNorm", ours)):
            out[f"{name}_{hidden}_ms"] = 1000 * median_seconds(
                lambda: (layer(x).sum().backward(), sync(x.grad)), args.warmup, args.repeats
            )
        diff = np.abs(stock(x).numpy() - ours(x).numpy()).max()
        out[f"layernorm_{hidden}_max_abs_diff"] = float(diff)
    y = flow.randn(args.batch, args.seq, 1200, requires_grad=True)
    for name, fn in (("stock_gelu", flow.nn.functional.gelu), ("erf_formula_gelu", gelu)):
        out[f"{name}_1200_ms"] = 1000 * median_seconds(
            lambda: (fn(y).sum().backward(), sync(y.grad)), args.warmup, args.repeats
        )
    s = flow.randn(args.batch, 12, args.seq, args.seq, requires_grad=True)
    out["softmax_scores_ms"] = 1000 * median_seconds(
        lambda: (flow.softmax(s, dim=-1).sum().backward(), sync(s.grad)), args.warmup, args.repeats
    )
    return out


def inputs(batch: int, seq: int, vocab: int = 30522):
    rng = np.random.default_rng(0)
    ids = flow.tensor(rng.integers(0, vocab, (batch, seq)), dtype=flow.int32)
    mask = np.ones((batch, seq), np.int32)
    mask[:, seq * 3 // 4 :] = 0
    return (
        ids,
        flow.zeros(batch, seq, dtype=flow.int32),
        flow.tensor(mask),
        flow.tensor(rng.integers(0, 2, (batch, 1)), dtype=flow.int32),
    )


def bench_layer(args) -> dict:
    """One encoder layer, forward + backward, eager."""
    out = {}
    mask = flow.zeros(args.batch, 1, 1, args.seq)
    for name, sizes in (("768", BASE), ("312", SMALL)):
        layer = BertLayer(BertConfig(**sizes))
        x = flow.randn(args.batch, args.seq, sizes["hidden_size"], requires_grad=True)
        out[f"layer_{name}_fwd_bwd_s"] = median_seconds(
            lambda: (layer(x, mask)[0].sum().backward(), sync(x.grad)), args.warmup, args.repeats
        )
    return out


class StepGraph(flow.nn.Graph):
    def __init__(self, model, optimizer, schedule):
        super().__init__()
        self.model = model
        self.add_optimizer(optimizer, lr_sch=schedule)

    def build(self, ids, segments, mask, labels):
        logits = self.model(ids, segments, mask)["logits"]
        loss = flow.nn.functional.cross_entropy(logits, labels.reshape(-1).to(flow.int64))
        loss.backward()
        return loss


class ForwardGraph(flow.nn.Graph):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def build(self, ids, segments, mask):
        return self.model(ids, segments, mask)["logits"]


def bench_step(args) -> dict:
    """A whole 4L-312 training step (AdamW, decay groups, clip 1.0), eager and in nn.Graph."""
    out = {}
    for batch in sorted({args.batch, 8}, reverse=True):
        ids, segments, mask, labels = inputs(batch, args.seq)
        model = BertForSequenceClassification(BertConfig(num_hidden_layers=4, **SMALL)).train()
        optimizer, schedule = build_optimizer(model.named_parameters(), 1e-4, 0.01, 1000)
        graph = StepGraph(model, optimizer, schedule)
        graph.config.allow_fuse_model_update_ops(True)  # as distil.train.graph.TrainGraph does
        graph.config.allow_fuse_add_to_output(True)
        start = time.perf_counter()
        sync(graph(ids, segments, mask, labels))
        out[f"step_4L312_batch{batch}_graph_compile_s"] = time.perf_counter() - start
        out[f"step_4L312_batch{batch}_graph_s"] = median_seconds(
            lambda: sync(graph(ids, segments, mask, labels)), args.warmup, args.repeats
        )

        model = BertForSequenceClassification(BertConfig(num_hidden_layers=4, **SMALL)).train()
        optimizer, _ = build_optimizer(model.named_parameters(), 1e-4, 0.01, 1000)  # a graph owns the first one

        def eager_step():
            logits = model(ids, segments, mask)["logits"]
            loss = flow.nn.functional.cross_entropy(logits, labels.reshape(-1).to(flow.int64))
            loss.backward()
            optimizer.clip_grad()
            optimizer.step()
            optimizer.zero_grad()
            sync(loss)

        out[f"step_4L312_batch{batch}_eager_s"] = median_seconds(eager_step, args.warmup, args.repeats)
    return out


def bench_forward(args) -> dict:
    """Eval-mode inference throughput in nn.Graph: the 4L-312 student and BERT-base."""
    out = {}
    ids, segments, mask, _ = inputs(args.batch, args.seq)
    for name, config in (("4L312", BertConfig(num_hidden_layers=4, **SMALL)), ("12L768", BertConfig(**BASE))):
        graph = ForwardGraph(BertForSequenceClassification(config).eval())
        seconds = median_seconds(lambda: sync(graph(ids, segments, mask)), args.warmup, args.repeats)
        out[f"forward_{name}_examples_per_s"] = args.batch / seconds
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="ops,layer,step,forward")
    args = parser.parse_args()
    benches = {"ops": bench_ops, "layer": bench_layer, "step": bench_step, "forward": bench_forward}
    results = {
        "framework": f"oneflow {flow.__version__}",
        "cpu_count": os.cpu_count(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "batch": args.batch,
        "seq": args.seq,
    }
    for name in args.only.split(","):
        results.update({k: round(v, 4) for k, v in benches[name](args).items()})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
