"""GLUE-shaped task folders for tests: the real files' names, header lines and column layouts.

Written independently of `distil.data.tasks` (from the GLUE files themselves) so that tests
check the registry against the real layout instead of against itself.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from pathlib import Path

from tokenizers import BertWordPieceTokenizer

import corpus
from distil.data import ofrecord

english_sentences = functools.lru_cache(maxsize=1)(corpus.english_sentences)

MNLI_COLS = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]
SNLI_COLS = [
    "index",
    "captionID",
    "pairID",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
]
FIVE = ["label1", "label2", "label3", "label4", "label5"]
NLI = ["contradiction", "entailment", "neutral"]
ENT = ["entailment", "not_entailment"]
BIN = ["0", "1"]

# task -> folder file -> (header columns or None, first text column, second text column, label column, labels)
LAYOUTS: dict[str, dict[str, tuple]] = {
    "CoLA": {
        "train.tsv": (None, 3, None, 1, BIN),
        "dev.tsv": (None, 3, None, 1, BIN),
        "test.tsv": (["index", "sentence"], "sentence", None, None, None),
    },
    "SST-2": {
        "train.tsv": (["sentence", "label"], "sentence", None, "label", BIN),
        "dev.tsv": (["sentence", "label"], "sentence", None, "label", BIN),
        "test.tsv": (["index", "sentence"], "sentence", None, None, None),
    },
    "MRPC": {
        f: (
            ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            "#1 String",
            "#2 String",
            "\ufeffQuality",
            BIN,
        )
        for f in ("train.tsv", "dev.tsv")
    }
    | {"test.tsv": (["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], "#1 String", "#2 String", None, None)},
    "QQP": {
        f: (
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            "question1",
            "question2",
            "is_duplicate",
            BIN,
        )
        for f in ("train.tsv", "dev.tsv")
    }
    | {"test.tsv": (["id", "question1", "question2"], "question1", "question2", None, None)},
    "STS-B": {
        f: (
            [
                "index",
                "genre",
                "filename",
                "year",
                "old_index",
                "source1",
                "source2",
                "sentence1",
                "sentence2",
                "score",
            ],
            "sentence1",
            "sentence2",
            "score",
            "float",
        )
        for f in ("train.tsv", "dev.tsv")
    }
    | {
        "test.tsv": (
            ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"],
            "sentence1",
            "sentence2",
            None,
            None,
        )
    },
    "MNLI": {
        "train.tsv": (MNLI_COLS + ["label1", "gold_label"], "sentence1", "sentence2", "gold_label", NLI),
        "dev_matched.tsv": (MNLI_COLS + FIVE + ["gold_label"], "sentence1", "sentence2", "gold_label", NLI),
        "dev_mismatched.tsv": (MNLI_COLS + FIVE + ["gold_label"], "sentence1", "sentence2", "gold_label", NLI),
        "test_matched.tsv": (MNLI_COLS, "sentence1", "sentence2", None, None),
        "test_mismatched.tsv": (MNLI_COLS, "sentence1", "sentence2", None, None),
    },
    "QNLI": {
        f: (["index", "question", "sentence", "label"], "question", "sentence", "label", ENT)
        for f in ("train.tsv", "dev.tsv")
    }
    | {"test.tsv": (["index", "question", "sentence"], "question", "sentence", None, None)},
    "RTE": {
        f: (["index", "sentence1", "sentence2", "label"], "sentence1", "sentence2", "label", ENT)
        for f in ("train.tsv", "dev.tsv")
    }
    | {"test.tsv": (["index", "sentence1", "sentence2"], "sentence1", "sentence2", None, None)},
    "WNLI": {
        f: (["index", "sentence1", "sentence2", "label"], "sentence1", "sentence2", "label", BIN)
        for f in ("train.tsv", "dev.tsv")
    }
    | {"test.tsv": (["index", "sentence1", "sentence2"], "sentence1", "sentence2", None, None)},
    "SNLI": {
        "train.tsv": (SNLI_COLS + ["label1", "gold_label"], "sentence1", "sentence2", "gold_label", NLI),
        "dev.tsv": (SNLI_COLS + FIVE + ["gold_label"], "sentence1", "sentence2", "gold_label", NLI),
        "test.tsv": (SNLI_COLS + FIVE + ["gold_label"], "sentence1", "sentence2", "gold_label", NLI),
    },
    "diagnostic": {"diagnostic.tsv": (["index", "sentence1", "sentence2"], "sentence1", "sentence2", None, None)},
}


def _col(header: list[str] | None, column) -> int:
    return column if isinstance(column, int) else header.index(column)


def make_rows(task: str, file: str, n: int, seed: int = 0) -> list[dict]:
    """n rows for one file: {'a', 'b', 'label', 'fields'}; texts are real English sentences."""
    header, a_col, b_col, label_col, labels = LAYOUTS[task][file]
    width = len(header) if header else 4
    pool = english_sentences()
    rng = random.Random(f"{task}/{file}/{seed}")
    rows = []
    for i in range(n):
        fields = [f"x{i}"] * width
        a = rng.choice(pool)
        b = rng.choice(pool) if b_col is not None else None
        label = None
        if labels == "float":
            label = f"{rng.uniform(0, 5):.3f}"
        elif labels:
            label = rng.choice(labels)
        fields[_col(header, a_col)] = a
        if b_col is not None:
            fields[_col(header, b_col)] = b
        if label_col is not None:
            fields[_col(header, label_col)] = label
        rows.append({"a": a, "b": b, "label": label, "fields": fields})
    return rows


def write_task(
    root: Path, task: str, sizes: dict[str, int] | None = None, seed: int = 0, skip: Sequence[str] = ()
) -> dict[str, list[dict]]:
    """Write every file of a task under root/<task>/ and return the rows written per file."""
    folder = root / task
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for file, (header, *_rest) in LAYOUTS[task].items():
        if file in skip:
            continue
        rows = make_rows(task, file, (sizes or {}).get(file, 7), seed)
        lines = (["\t".join(header)] if header else []) + ["\t".join(r["fields"]) for r in rows]
        (folder / file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        written[file] = rows
    return written


def decode_split(split_dir: Path, record_pb2) -> list[dict[str, list]]:
    """Every record of a split, in order, decoded by OneFlow's protobuf classes."""
    meta = ofrecord.read_meta(split_dir)
    out = []
    for part in meta["parts"]:
        for body in ofrecord.iter_frames(split_dir / part["name"]):
            rec = record_pb2.OFRecord()
            rec.ParseFromString(body)
            out.append({k: list(getattr(v, v.WhichOneof("kind")).value) for k, v in rec.feature.items()})
    return out


def expected_bert(tok: BertWordPieceTokenizer, a: str, b, length: int):
    enc = tok.encode(a, b) if b is not None else tok.encode(a)
    assert len(enc.ids) <= length, "fixture sentences must fit without truncation"
    pad = length - len(enc.ids)
    return enc.ids + [0] * pad, [1] * len(enc.ids) + [0] * pad, enc.type_ids + [0] * pad


POSITIVE = ["good", "great", "wonderful", "excellent", "charming", "delightful", "brilliant", "moving"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "tedious", "painful", "weak"]
FILLER = [
    "the",
    "movie",
    "story",
    "film",
    "actors",
    "plot",
    "was",
    "is",
    "a",
    "quite",
    "really",
    "and",
    "its",
    "director",
    "ending",
    "music",
    "very",
    "this",
    "script",
    "scenes",
]


def write_learnable_sst2(root: Path, n_train: int, n_dev: int, seed: int = 0) -> None:
    """An SST-2-shaped task a tiny model can learn: the label says whether a positive or a negative word occurs."""
    rng = random.Random(seed)
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
        lines = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            words = rng.choices(FILLER, k=rng.randint(3, 9))
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
            lines.append(f"{' '.join(words)} \t{label}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 48,
    "max_position_embeddings": 64,
}


def write_tiny_teacher_workspace(root: Path, vocab_file: Path) -> Path:
    """Learnable SST-2 (64 train, 19 dev, seq 32) in `root`/data and a tiny "pretrained" BERT without dropout in
    `root`/pretrained, so that two training runs of it can give the same weights."""
    import json

    from distil.data.convert import ConvertConfig, convert_task
    from distil.models import io

    write_learnable_sst2(root / "glue", 64, 19)
    convert_task(
        "SST-2",
        ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1),
    )
    io.init_bert(root / "pretrained", vocab_file, TINY_BERT, seed=0)
    config = json.loads((root / "pretrained" / "config.json").read_text())
    config["model"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (root / "pretrained" / "config.json").write_text(json.dumps(config))
    return root


def train_tiny_classifier(root: Path, vocab_file: Path, run, python: str) -> Path:
    """A tiny BERT fine-tuned by `python -m distil train` on learnable SST-2 (512 train, 64 dev, seq 32, 4
    epochs): a trained model directory at `root`/model, its converted data at `root`/data. `run` is conftest's."""
    from distil.data.convert import ConvertConfig, convert_task
    from distil.models import io

    write_learnable_sst2(root / "glue", 512, 64)
    convert_task(
        "SST-2",
        ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=0, workers=1),
    )
    io.init_bert(root / "pretrained", vocab_file, TINY_BERT, seed=0)
    done = run(
        [
            python,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "teacher",
            "--task",
            "SST-2",
            "--pretrained_model",
            str(root / "pretrained"),
            "--data_root",
            str(root / "data"),
            "--model_save_dir",
            str(root / "model"),
            "--epochs",
            "4",
            "--batch_size",
            "16",
            "--learning_rate",
            "1e-3",
            "--device",
            "cpu",
        ]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "model"


# The teacher that `script_teacher` (conftest.py) fine-tunes through run_train_teacher.sh, and the id it gets
SCRIPT_TEACHER_ENV = {"EPOCH": "5", "LEARNING_RATE": "2e-3", "BATCH_SIZE": "16", "SERVE_FOR_ONLINE": "True"}
SCRIPT_TEACHER_ID = "SST-2_epoch-5_lr-2e-3_wd-0.0001"


def train_teacher_by_script(root: Path, vocab_file: Path, run):
    """Learnable SST-2 (640 train, 160 dev) as BERT data (seq 32) and BiLSTM data (seq 12: its sentences have at
    most 10 words) in `root`/data, a tiny random "pretrained" BERT in `root`/pretrained, and a teacher fine-tuned
    from it by `bash scripts/run_train_teacher.sh SST-2 --log_every 10` with SCRIPT_TEACHER_ENV into
    `root`/models/finetuned_teacher/SCRIPT_TEACHER_ID. Returns the script's CompletedProcess (`run` is
    conftest's); whoever uses it checks it."""
    from distil.data.convert import ConvertConfig, convert_task
    from distil.models import io

    write_learnable_sst2(root / "glue", 640, 160)
    convert_task(
        "SST-2",
        ConvertConfig(root / "glue", root / "data", vocab_file, max_seq_length=32, lstm_seq_length=12, workers=1),
    )
    io.init_bert(root / "pretrained", vocab_file, TINY_BERT, seed=0)
    env = {
        **SCRIPT_TEACHER_ENV,
        "PRETRAINED_MODEL": str(root / "pretrained"),
        "DATA_ROOT": str(root / "data"),
        "MODELS_ROOT": str(root / "models"),
    }
    return run(
        [
            "bash",
            str(Path(__file__).resolve().parents[1] / "scripts" / "run_train_teacher.sh"),
            "SST-2",
            "--log_every",
            "10",
        ],
        env=env,
    )


def write_random_classifier(model_dir: Path, task_name: str, vocab_file: Path, sizes: dict[str, int]) -> Path:
    """A random BERT model directory for `task_name` at seq 32 whose outputs differ from example to example (its
    classifier weights scaled by 30), as predict and serve tests compare them."""
    from distil.data.tasks import get_task
    from distil.data.tokenization import load_vocab
    from distil.models import io
    from distil.models.bert import BertConfig
    from distil.runtime import import_oneflow

    flow = import_oneflow()
    task = get_task(task_name)
    flow.manual_seed(1)
    config = {**BertConfig(vocab_size=len(load_vocab(vocab_file)), **sizes).to_dict(), "num_labels": task.num_labels}
    model = io.build_model(config)
    with flow.no_grad():
        model.classifier.weight.mul_(30.0)
    io.write_new_model_dir(
        model_dir,
        model,
        config,
        vocab_file,
        {"name": "teacher"},
        task={
            "name": task.name,
            "labels": list(task.labels or []),
            "num_labels": task.num_labels,
            "metrics": list(task.metrics),
        },
        data={"format": "bert", "folder": task.name, "seq_length": 32, "do_lower_case": True},
    )
    return model_dir
