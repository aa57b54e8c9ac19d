"""The demo task is deterministic and needs negation and word order; the report compares models with the teacher."""

from __future__ import annotations

import json
import random

import pytest

from conftest import PYTHON, ROOT, run
from distil.data.demo import LABEL_NOISE, NEGATIVE, POSITIVE, build_vocab, make_example, write_demo_task
from distil.data.tokenization import FullTokenizer
from distil.report import find_model_dirs


def test_demo_task_is_deterministic_and_reused(tmp_path):
    first = write_demo_task(tmp_path / "a", train=50, dev=20)
    write_demo_task(tmp_path / "b", train=50, dev=20)
    for name in ("glue_data/SST-2/train.tsv", "glue_data/SST-2/dev.tsv", "vocab.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not first["reused"] and write_demo_task(tmp_path / "a")["reused"]
    lines = (tmp_path / "a" / "glue_data" / "SST-2" / "train.tsv").read_text().splitlines()
    assert lines[0] == "sentence\tlabel" and len(lines) == 51


def test_demo_labels_follow_negation_and_the_main_clause():
    rng = random.Random(0)
    examples = [make_example(rng) for _ in range(4000)]
    positive, negative = set(POSITIVE), set(NEGATIVE)
    agree, checked = 0, 0
    for sentence, label in examples:
        words = sentence.replace(",", " ").split()
        last = [i for i, w in enumerate(words) if w in positive | negative]
        if not last:
            continue
        i = last[-1]
        polarity = words[i] in positive
        negated = "not" in words[max(0, i - 2) : i] or "never" in words[max(0, i - 2) : i]
        checked += 1
        agree += int(label == int(polarity != negated))
    assert checked > 500 and abs(agree / checked - (1 - LABEL_NOISE)) < 0.03
    labels = [label for _, label in examples]
    assert 0.4 < sum(labels) / len(labels) < 0.6

    # no keyword shortcut: the polarity of the first adjective, negation ignored, is a poor predictor
    def first_adjective(sentence):
        return next(w for w in sentence.split() if w in POSITIVE or w in NEGATIVE)

    shortcut = sum(int(first_adjective(s) in POSITIVE) == y for s, y in examples) / len(examples)
    assert shortcut < 0.7


def test_demo_vocab_tokenizes_every_sentence_without_unknowns(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(build_vocab()) + "\n")
    tokenizer = FullTokenizer(tmp_path / "vocab.txt")
    rng = random.Random(1)
    tokens = [t for _ in range(500) for t in tokenizer.tokenize(make_example(rng)[0])]
    assert "[UNK]" not in tokens and "##able" in tokens and "un" in tokens


def test_report_compares_students_with_the_teacher(tmp_path, monkeypatch):
    """Uses the demo's layout in miniature: a teacher and a KD student trained for a few steps."""
    from distil.data.convert import ConvertConfig, convert_task
    from distil.models import io

    data = write_demo_task(tmp_path / "demo", train=200, dev=60)
    convert_task(
        "SST-2",
        ConvertConfig(
            tmp_path / "demo" / "glue_data",
            tmp_path / "data",
            tmp_path / "demo" / "vocab.txt",
            max_seq_length=32,
            workers=1,
        ),
    )
    io.init_bert(
        tmp_path / "pre",
        data["vocab_file"],
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 48,
            "max_position_embeddings": 64,
        },
    )
    common = [
        "--task",
        "SST-2",
        "--data_root",
        str(tmp_path / "data"),
        "--epochs",
        "1",
        "--learning_rate",
        "1e-3",
        "--max_steps",
        "3",
        "--batch_size",
        "16",
    ]
    teacher = run(
        [
            PYTHON,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "teacher",
            "--pretrained_model",
            str(tmp_path / "pre"),
            "--model_save_dir",
            str(tmp_path / "models" / "teacher"),
            *common,
        ]
    )
    assert teacher.returncode == 0, teacher.stderr[-2000:]
    student = run(
        [
            PYTHON,
            "-m",
            "distil",
            "train",
            "--algorithm",
            "kd",
            "--teacher_model",
            str(tmp_path / "models" / "teacher"),
            "--model_save_dir",
            str(tmp_path / "models" / "kd"),
            "--student_num_hidden_layers",
            "1",
            "--student_hidden_size",
            "16",
            "--student_num_attention_heads",
            "4",
            "--student_intermediate_size",
            "24",
            *common,
        ]
    )
    assert student.returncode == 0, student.stderr[-2000:]
    assert (tmp_path / "models" / "kd" / "train_curve.png").stat().st_size > 1000
    assert find_model_dirs([tmp_path / "models"]) == [tmp_path / "models" / "kd", tmp_path / "models" / "teacher"]
    report = run([PYTHON, "-m", "distil", "report", str(tmp_path / "models"), "--data_root", str(tmp_path / "data")])
    assert report.returncode == 0, report.stderr[-2000:]
    rows = json.loads((tmp_path / "models" / "report.json").read_text())
    assert [r["algorithm"] for r in rows] == ["teacher", "kd"]
    teacher_row, kd_row = rows
    assert (
        teacher_row["compression"] == 1.0 and teacher_row["speedup"] == 1.0 and teacher_row["retained_percent"] == 100
    )
    assert kd_row["compression"] == pytest.approx(teacher_row["parameters"] / kd_row["parameters"], rel=0.01)
    assert kd_row["layers"] == 1 and kd_row["hidden"] == 16
    saved = json.loads((tmp_path / "models" / "kd" / "results_eval.json").read_text())
    assert kd_row["value"] == saved["accuracy"]
    header = (
        "| model | algorithm | layers | hidden | FFN | parameters | size (MB) | compression | examples/s | "
        "speed-up | metric | retained |"
    )
    markdown = (tmp_path / "models" / "report.md").read_text().splitlines()
    assert report.stdout.splitlines()[0] == markdown[0] == header and len(markdown) == 4
    assert markdown[3].startswith(f"| kd | kd | 1 | 16 | 24 | {kd_row['parameters']:,} | ")
    assert f"| accuracy {saved['accuracy']:.4f} | {kd_row['retained_percent']:.1f} % |" in markdown[3]
    assert (tmp_path / "models" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert kd_row["timed_passes"] == teacher_row["timed_passes"] == 3

    from distil.report import measure
    from distil.train.graph import Evaluator

    timings, real_run = [None, 300.0, 100.0, 200.0], Evaluator.run

    def timed(self):  # the warm-up pass, then passes that took known times
        values, outputs, timing = real_run(self)
        speed = timings[len(calls)]
        calls.append(speed)
        return values, outputs, {**timing, "examples_per_second": speed or timing["examples_per_second"]}

    calls: list = []
    monkeypatch.setattr(Evaluator, "run", timed)
    row = measure(tmp_path / "models" / "kd", tmp_path / "data", 16, "cpu")
    assert len(calls) == 4 and row["examples_per_second"] == 200.0 and row["value"] == kd_row["value"]
    missing = run([PYTHON, "-m", "distil", "report", str(tmp_path / "nothing")])
    assert missing.returncode == 2 and "nothing does not exist" in missing.stderr
    assert (ROOT / "scripts" / "run_demo.sh").is_file()


def test_chart_labels_never_overlap_even_for_models_at_the_same_point():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distil.report import place_labels

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = [(1.0, 0.9), (4.1, 0.86), (4.1, 0.86), (4.1, 0.86), (4.12, 0.861), (9.0, 0.8)]
    labels = ["teacher", "theseus", "bert_pkd", "tinybert", "kd", "distilled_lstm"]
    for x, y in points:
        ax.scatter(x, y)
    notes = place_labels(ax, points, labels)
    renderer = fig.canvas.get_renderer()
    boxes = [note.get_window_extent(renderer) for note in notes]
    assert [note.get_text() for note in notes] == labels and all(note.axes is ax for note in notes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert all(ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1) for box in boxes)
    plt.close(fig)
