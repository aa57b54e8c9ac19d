"""PyTorch CPU speed baseline for the OneFlow BERT: one encoder layer, a training step, eval forward.

Run with the separate reference venv (not the project's): /work/torchref/bin/python bench/torch_baseline.py
[--batch 32] [--seq 128] [--warmup 2] [--repeats 5] [--only layer,step,forward]; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SECTIONS = ("layer", "step", "forward")
MASK_VALUE = -10000.0


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    ffn: int
    layers: int = 1
    vocab: int = 30522
    max_position: int = 512
    type_vocab: int = 2
    dropout: float = 0.1
    eps: float = 1e-12
    num_labels: int = 2


# Entry names follow bench/bench_bert.py (the OneFlow counterpart) so the two JSONs line up key by key.
LAYER_CONFIGS = {
    "layer_768_fwd_bwd_s": BertConfig(hidden=768, heads=12, ffn=3072),
    "layer_312_fwd_bwd_s": BertConfig(hidden=312, heads=12, ffn=1200),
}
TINYBERT_4L = BertConfig(hidden=312, heads=12, ffn=1200, layers=4)
BERT_BASE = BertConfig(hidden=768, heads=12, ffn=3072, layers=12)


class LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position = nn.Embedding(cfg.max_position, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab, cfg.hidden)
        self.norm = LayerNorm(cfg.hidden, cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        summed = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(summed))


class EncoderLayer(nn.Module):
    """Google BERT post-LN layer: self-attention and GELU FFN, each followed by residual + LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.hidden // cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(cfg.hidden, cfg.hidden)
        self.value = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_norm = LayerNorm(cfg.hidden, cfg.eps)
        self.ffn_in = nn.Linear(cfg.hidden, cfg.ffn)
        self.ffn_out = nn.Linear(cfg.ffn, cfg.hidden)
        self.ffn_norm = LayerNorm(cfg.hidden, cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def attention(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + additive_mask
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).transpose(1, 2).reshape(x.shape)
        return self.dropout(self.attn_out(context))

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attention(x, additive_mask))
        ffn = self.dropout(self.ffn_out(F.gelu(self.ffn_in(x))))
        return self.ffn_norm(x + ffn)


class BertClassifier(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.num_labels)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        additive_mask = additive_attention_mask(attention_mask)
        for layer in self.layers:
            x = layer(x, additive_mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(self.dropout(pooled))


def describe(cfg: BertConfig) -> dict[str, int]:
    return {"hidden": cfg.hidden, "heads": cfg.heads, "ffn": cfg.ffn, "layers": cfg.layers}


def additive_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 1/0 mask -> [batch, 1, 1, seq] additive mask (0 keep, -10000 drop)."""
    return (1.0 - attention_mask[:, None, None, :].float()) * MASK_VALUE


def random_batch(cfg: BertConfig, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids, a sentence-pair token-type split and right padding of varying length."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    positions = torch.arange(seq)
    return {
        "input_ids": torch.randint(0, cfg.vocab, (batch, seq), generator=gen),
        "token_type_ids": (positions >= seq // 2).long().expand(batch, seq).contiguous(),
        "attention_mask": (positions[None, :] < lengths[:, None]).long(),
    }


def measure(fn: Callable[[], None], warmup: int, repeats: int, batch: int) -> dict[str, object]:
    """Median wall time of `fn` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    median = statistics.median(samples)
    return {
        "median_s": round(median, 4),
        "samples_s": [round(s, 4) for s in samples],
        "examples_per_s": round(batch / median, 2),
    }


def bench_layer(cfg: BertConfig, args: argparse.Namespace) -> dict[str, object]:
    layer = EncoderLayer(cfg).train()
    x = torch.randn(args.batch, args.seq, cfg.hidden, requires_grad=True)
    additive_mask = additive_attention_mask(random_batch(cfg, args.batch, args.seq)["attention_mask"])

    def forward_backward() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x, additive_mask).sum().backward()

    return {
        **describe(cfg),
        "batch": args.batch,
        "seq": args.seq,
        **measure(forward_backward, args.warmup, args.repeats, args.batch),
    }


def adamw(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with the usual BERT groups: no decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm." in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def bench_step(cfg: BertConfig, batch: int, args: argparse.Namespace) -> dict[str, object]:
    model = BertClassifier(cfg).train()
    optimizer = adamw(model)
    inputs = random_batch(cfg, batch, args.seq)
    labels = torch.randint(0, cfg.num_labels, (batch,), generator=torch.Generator().manual_seed(1))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(**inputs), labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return {**describe(cfg), "batch": batch, "seq": args.seq, **measure(train_step, args.warmup, args.repeats, batch)}


def bench_forward(cfg: BertConfig, args: argparse.Namespace) -> dict[str, object]:
    model = BertClassifier(cfg).eval()
    inputs = random_batch(cfg, args.batch, args.seq)

    @torch.no_grad()
    def forward() -> None:
        model(**inputs)

    return {
        **describe(cfg),
        "batch": args.batch,
        "seq": args.seq,
        **measure(forward, args.warmup, args.repeats, args.batch),
    }


def run_sections(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {}
    if "layer" in args.only:
        results["layer"] = {name: bench_layer(cfg, args) for name, cfg in LAYER_CONFIGS.items()}
    if "step" in args.only:
        batches = sorted({args.batch, args.step_small_batch} - {0}, reverse=True)
        results["step"] = {f"step_4L312_batch{b}_eager_s": bench_step(TINYBERT_4L, b, args) for b in batches}
    if "forward" in args.only:
        results["forward_only"] = {
            "forward_4L312": bench_forward(TINYBERT_4L, args),
            "forward_12L768": bench_forward(BERT_BASE, args),
        }
    return results


def comparable(results: dict[str, dict[str, dict]]) -> dict[str, float]:
    """Flat medians under bench_bert.py's key names (seconds, or examples/s for forward)."""
    timed = [results.get("layer", {}), results.get("step", {})]
    flat = {name: entry["median_s"] for section in timed for name, entry in section.items()}
    flat.update(
        {f"{name}_examples_per_s": entry["examples_per_s"] for name, entry in results.get("forward_only", {}).items()}
    )
    return flat


def shared_settings() -> dict[str, object]:
    """Config fields common to every benchmarked model, plus the mask and optimizer used."""
    fields = {k: v for k, v in asdict(TINYBERT_4L).items() if k not in describe(TINYBERT_4L)}
    optimizer = "AdamW lr 1e-4, weight decay 0.01 except biases/LayerNorm, grad-norm clip 1.0"
    return {**fields, "mask_value": MASK_VALUE, "optimizer": optimizer}


def metadata(args: argparse.Namespace) -> dict[str, object]:
    return {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "flags": vars(args),
        "shared_model_settings": shared_settings(),
    }


def sections(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SECTIONS)}; got {text!r}")
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="batch size of every section")
    parser.add_argument(
        "--step-small-batch", type=int, default=8, help="extra batch size for the training step (0: skip)"
    )
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", type=sections, default=list(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    results = run_sections(args)
    report = {
        "benchmark": "torch_baseline",
        "comparable": comparable(results),
        **results,
        "metadata": metadata(args),
        "total_wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
