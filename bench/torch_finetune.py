"""The PyTorch side of the real-data acceptance runs (bench/real_data.py): fine-tuning and distillation.

Run with the reference venv (Python 3.11, torch 2.13, transformers, textbrewer), never the project's:
  /work/torchref/bin/python bench/torch_finetune.py finetune --model HF_DIR --data GLUE_TASK_DIR --out DIR [...]
  /work/torchref/bin/python bench/torch_finetune.py kd       --model HF_DIR --teacher HF_DIR --data ... --out DIR
  /work/torchref/bin/python bench/torch_finetune.py tinybert --model HF_DIR --teacher HF_DIR --data ... --out DIR
  /work/torchref/bin/python bench/torch_finetune.py kd_plain --model HF_DIR --teacher HF_DIR --data ... --out DIR
  /work/torchref/bin/python bench/torch_finetune.py kd_dynamic --model HF_DIR --teacher HF_DIR --data ... --out DIR
finetune: BertForSequenceClassification + torch.optim.AdamW + get_linear_schedule_with_warmup (the recipe the
project's trainer follows: eps 1e-6, no decay on bias/LayerNorm, 10 % warm-up, clip 1.0). kd and tinybert run
TextBrewer's GeneralDistiller with the project's losses: kd = alpha·CE(gold) + (1-alpha)·soft-label CE at T
(TextBrewer's "ce" kd loss: summed over classes, the gradient of the project's --pred_distill_mode kl at T=1);
tinybert = attention MSE on pre-softmax scores with padding keys zeroed + hidden MSE (embeddings included, through
a trained projection when widths differ) + soft-label CE, student layer i against teacher layer i·L_t/L_s.
kd_plain is kd's loss in a plain loop without TextBrewer (bench/bench_kd.py's third side). kd_dynamic is kd as
the fastest PyTorch set-up runs it (bench/bench_kd.py, issue 23): TextBrewer's BasicDistiller with its logits
cache (the teacher runs once over the batches), batches grouped by length as HF's group_by_length makes them and
padded to their longest member, dev batches too.
Tokenisation is HF's BertTokenizerFast (independent of the project's). Prints one JSON line per epoch and
writes DIR/result.json; `finetune` also saves the best model as an HF folder (the teacher of kd/tinybert).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, BertTokenizerFast, get_linear_schedule_with_warmup

NO_DECAY = ("bias", "LayerNorm.weight")


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], [int(r[1]) for r in rows]


def encode(tokenizer: BertTokenizerFast, texts: list[str], labels: list[int], seq: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, max_length=seq, truncation=True, padding="max_length", return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "token_type_ids": enc["token_type_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor(labels),
    }


def batches(data: dict[str, torch.Tensor], batch: int, order: list[int]):
    for start in range(0, len(order), batch):
        index = torch.tensor(order[start : start + batch])
        yield {k: v[index] for k, v in data.items()}


def accuracy(model: torch.nn.Module, data: dict[str, torch.Tensor], batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for b in batches(data, batch, list(range(len(data["labels"])))):
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            correct += int((logits.argmax(-1) == b["labels"]).sum())
    model.train()
    return correct / len(data["labels"])


def optimizer_and_schedule(params: list[tuple[str, torch.nn.Parameter]], args, total: int):
    groups = [
        {"params": [p for n, p in params if not any(s in n for s in NO_DECAY)], "weight_decay": args.wd},
        {"params": [p for n, p in params if any(s in n for s in NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, eps=1e-6)
    return optimizer, get_linear_schedule_with_warmup(optimizer, int(total * 0.1), total)


def load(model_dir: str, num_labels: int = 2) -> BertForSequenceClassification:
    return BertForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)


def epoch_orders(n: int, epochs: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    orders = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        orders.append(order)
    return orders


def finetune(args, train, dev) -> list[dict]:
    model = load(args.model)
    total = args.epochs * -(-len(train["labels"]) // args.batch)
    optimizer, schedule = optimizer_and_schedule(list(model.named_parameters()), args, total)
    history, best = [], -1.0
    model.train()
    for epoch, order in enumerate(epoch_orders(len(train["labels"]), args.epochs, args.seed), 1):
        start = time.time()
        for b in batches(train, args.batch, order):
            model(**b).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad()
        history.append({"epoch": epoch, "accuracy": accuracy(model, dev, 64), "seconds": round(time.time() - start, 1)})
        print(json.dumps(history[-1]), flush=True)
        if history[-1]["accuracy"] >= best:
            best = history[-1]["accuracy"]
            model.save_pretrained(args.out / "model")
    return history


def distill(args, train, dev) -> list[dict]:
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from textbrewer.presets import MATCH_LOSS_MAP

    MATCH_LOSS_MAP["attention_mse_tinybert"] = tinybert_attention_mse
    teacher, student = load(args.teacher).eval(), load(args.model)
    ratio = teacher.config.num_hidden_layers // student.config.num_hidden_layers
    matches = []
    if args.command == "tinybert":
        width = (student.config.hidden_size, teacher.config.hidden_size)
        for i in range(student.config.num_hidden_layers + 1):
            matches.append(
                {
                    "layer_T": i * ratio,
                    "layer_S": i,
                    "feature": "hidden",
                    "loss": "hidden_mse",
                    "weight": 1,
                    **({"proj": ["linear", *width]} if width[0] != width[1] else {}),
                }
            )
        for i in range(1, student.config.num_hidden_layers + 1):
            matches.append(
                {
                    "layer_T": i * ratio - 1,
                    "layer_S": i - 1,
                    "feature": "attention",
                    "loss": "attention_mse_tinybert",
                    "weight": 1,
                }
            )
    hard = args.alpha if args.command == "kd" else 0.0
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="ce",
        kd_loss_weight=1.0 - hard,
        hard_label_weight=hard,
        intermediate_matches=matches,
    )
    adaptors = [make_adaptor(model, with_attention=args.command == "tinybert") for model in (teacher, student)]
    total = args.epochs * -(-len(train["labels"]) // args.batch)
    trainer_config = TrainingConfig(
        output_dir=str(args.out / "textbrewer"), device="cpu", ckpt_frequency=1, log_dir=str(args.out / "textbrewer")
    )
    distiller = GeneralDistiller(
        train_config=trainer_config,
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptors[0],
        adaptor_S=adaptors[1],
    )
    params = list(student.named_parameters()) + [
        (f"proj{i}.{n}", p)
        for i, proj in enumerate(distiller.projs)
        if proj is not None
        for n, p in proj.named_parameters()
    ]
    optimizer, schedule = optimizer_and_schedule(params, args, total)
    history = []
    for epoch, order in enumerate(epoch_orders(len(train["labels"]), args.epochs, args.seed), 1):
        start = time.time()
        with distiller:
            distiller.train(
                optimizer, list(batches(train, args.batch, order)), num_epochs=1, scheduler=schedule, max_grad_norm=1.0
            )
        history.append(
            {"epoch": epoch, "accuracy": accuracy(student, dev, 64), "seconds": round(time.time() - start, 1)}
        )
        print(json.dumps(history[-1]), flush=True)
    return history


def length_grouped(data: dict[str, torch.Tensor], batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """HF's group_by_length (get_length_grouped_indices): a seeded permutation cut into mega-batches of 50
    batches, each sorted by length, longest first, then cut into batches; each batch cut to its longest member."""
    lengths = data["attention_mask"].sum(-1).tolist()
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    mega = 50 * batch
    order = [
        i
        for start in range(0, len(order), mega)
        for i in sorted(order[start : start + mega], key=lambda i: -lengths[i])
    ]
    return [padded_to_longest(b) for b in batches(data, batch, order)]


def padded_to_longest(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    width = int(batch["attention_mask"].sum(-1).max())
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in batch.items()}


def dynamic_accuracy(model: torch.nn.Module, data: dict[str, torch.Tensor], batch: int) -> float:
    """accuracy() on batches of similar length padded to their longest member."""
    lengths = data["attention_mask"].sum(-1)
    order = torch.argsort(lengths, stable=True).tolist()
    model.eval()
    correct = 0
    with torch.no_grad():
        for b in batches(data, batch, order):
            b = padded_to_longest(b)
            logits = model(**{k: v for k, v in b.items() if k != "labels"}).logits
            correct += int((logits.argmax(-1) == b["labels"]).sum())
    model.train()
    return correct / len(data["labels"])


def distill_dynamic(args, train, dev) -> list[dict]:
    """kd with TextBrewer's logits cache on length-grouped, dynamically padded batches, all epochs in one train()
    call (the cache is filled at its start); an epoch's seconds run from one dev evaluation's end to the next's."""
    from textbrewer import BasicDistiller, DistillationConfig, TrainingConfig

    teacher, student = load(args.teacher).eval(), load(args.model)
    distill_config = DistillationConfig(
        temperature=args.temperature,
        kd_loss_type="ce",
        kd_loss_weight=1.0 - args.alpha,
        hard_label_weight=args.alpha,
        is_caching_logits=True,
    )
    adaptors = [make_adaptor(model, with_attention=False) for model in (teacher, student)]
    train_batches = length_grouped(train, args.batch, args.seed)
    total = args.epochs * len(train_batches)
    trainer_config = TrainingConfig(
        output_dir=str(args.out / "textbrewer"), device="cpu", ckpt_frequency=1, log_dir=str(args.out / "textbrewer")
    )
    distiller = BasicDistiller(
        train_config=trainer_config,
        distill_config=distill_config,
        model_T=teacher,
        model_S=student,
        adaptor_T=adaptors[0],
        adaptor_S=adaptors[1],
    )
    optimizer, schedule = optimizer_and_schedule(list(student.named_parameters()), args, total)
    history: list[dict] = []
    mark = [time.time()]

    def evaluate(model, step):
        history.append(
            {
                "epoch": len(history) + 1,
                "accuracy": dynamic_accuracy(model, dev, 64),
                "seconds": round(time.time() - mark[0], 1),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        mark[0] = time.time()

    random.seed(args.seed)  # the cache's batch order, shuffled each epoch
    with distiller:
        distiller.train(
            optimizer, train_batches, num_epochs=args.epochs, scheduler=schedule, max_grad_norm=1.0, callback=evaluate
        )
    return history


def distill_plain(args, train, dev) -> list[dict]:
    """The KD job as a plain PyTorch loop: the frozen teacher under no_grad, alpha·CE + (1-alpha)·soft CE at T."""
    teacher, student = load(args.teacher).eval(), load(args.model)
    total = args.epochs * -(-len(train["labels"]) // args.batch)
    optimizer, schedule = optimizer_and_schedule(list(student.named_parameters()), args, total)
    history, t = [], args.temperature
    student.train()
    for epoch, order in enumerate(epoch_orders(len(train["labels"]), args.epochs, args.seed), 1):
        start = time.time()
        for b in batches(train, args.batch, order):
            inputs = {k: v for k, v in b.items() if k != "labels"}
            with torch.no_grad():
                soft = F.softmax(teacher(**inputs).logits / t, dim=-1)
            logits = student(**inputs).logits
            loss = (
                args.alpha * F.cross_entropy(logits, b["labels"])
                + (1 - args.alpha) * -(soft * F.log_softmax(logits / t, dim=-1)).sum(-1).mean()
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step(), schedule.step(), optimizer.zero_grad()
        history.append(
            {"epoch": epoch, "accuracy": accuracy(student, dev, 64), "seconds": round(time.time() - start, 1)}
        )
        print(json.dumps(history[-1]), flush=True)
    return history


def tinybert_attention_mse(scores_s: torch.Tensor, scores_t: torch.Tensor, mask=None) -> torch.Tensor:
    """TinyBERT's attention loss on pre-softmax scores: padding keys (-10000 added) count as 0, as the project's."""
    zero = torch.zeros_like(scores_s)
    return F.mse_loss(
        torch.where(scores_s <= -100, zero, scores_s), torch.where(scores_t <= -100, zero.detach(), scores_t)
    )


def make_adaptor(model: BertForSequenceClassification, with_attention: bool):
    """TextBrewer's view of a model: logits, hidden states, and (with_attention) each layer's pre-softmax
    attention scores (QK^T/sqrt(d) plus -10000 on padding keys), which HF does not return, recomputed by hooks."""
    captured: list[torch.Tensor] = []

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        b, s, _ = hidden.shape
        heads, size = module.num_attention_heads, module.attention_head_size
        q = module.query(hidden).view(b, s, heads, size).transpose(1, 2)
        k = module.key(hidden).view(b, s, heads, size).transpose(1, 2)
        captured.append(q @ k.transpose(-1, -2) / math.sqrt(size))

    if with_attention:
        model.register_forward_pre_hook(lambda module, args: captured.clear())  # dev passes leave scores behind
        for layer in model.bert.encoder.layer:
            layer.attention.self.register_forward_hook(hook, with_kwargs=True)
    model.config.output_hidden_states = True

    def adaptor(batch, outputs):
        padding = (1.0 - batch["attention_mask"][:, None, None, :].float()) * -10000.0
        scores = [s + padding for s in captured]
        captured.clear()
        return {
            "logits": outputs.logits,
            "hidden": outputs.hidden_states,
            "attention": scores,
            "losses": [outputs.loss],
        }

    return adaptor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("finetune", "kd", "kd_plain", "kd_dynamic", "tinybert"))
    p.add_argument("--model", required=True)
    p.add_argument("--teacher")
    p.add_argument("--data", type=Path, required=True, help="folder with train.tsv and dev.tsv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=1.0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    tokenizer = BertTokenizerFast.from_pretrained(args.model)
    train = encode(tokenizer, *read_tsv(args.data / "train.tsv"), args.seq)
    dev = encode(tokenizer, *read_tsv(args.data / "dev.tsv"), args.seq)
    args.out.mkdir(parents=True, exist_ok=True)
    run = {"finetune": finetune, "kd_plain": distill_plain, "kd_dynamic": distill_dynamic}.get(args.command, distill)
    history = run(args, train, dev)
    (args.out / "result.json").write_text(
        json.dumps(
            {"command": args.command, "seed": args.seed, "history": history, "settings": vars(args)}, default=str
        )
    )


if __name__ == "__main__":
    main()
