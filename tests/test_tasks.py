"""The task registry reads every GLUE file layout, and bad rows stop with file:line and the text."""

import dataclasses
from pathlib import Path

import pytest

from distil.data.tasks import TASKS, get_task, read_examples
from distil.errors import UsageError
from glue_fixtures import LAYOUTS, write_task


def test_registry_covers_glue_with_labels_and_metrics():
    assert set(TASKS) == {"CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI", "SNLI", "diagnostic"}
    assert get_task("MNLI").num_labels == 3 and get_task("MNLI").labels == ("contradiction", "entailment", "neutral")
    assert get_task("STS-B").is_regression and get_task("STS-B").num_labels == 1
    assert get_task("CoLA").metrics[0] == "mcc"
    assert get_task("MRPC").metrics == ("accuracy", "f1") and get_task("QQP").metrics == ("accuracy", "f1")
    assert get_task("STS-B").metrics == ("pearson", "spearman")
    assert set(get_task("MNLI").splits) == {"train", "train_aug", "eval", "eval_mismatched", "test", "test_mismatched"}
    for task in TASKS.values():
        assert "test" in task.splits, f"{task.name} has no test reader"
        assert task.splits["test"].label is None or task.name == "SNLI"


def test_get_task_is_case_insensitive_and_lists_valid_names():
    assert get_task("sst-2").name == "SST-2" and get_task("ax").name == "diagnostic"
    with pytest.raises(UsageError) as e:
        get_task("SST3")
    assert "SST3" in str(e.value) and "CoLA, SST-2, MRPC" in str(e.value)


@pytest.mark.parametrize("task_name", sorted(LAYOUTS))
def test_every_split_reads_texts_and_labels_in_row_order(tmp_path, task_name):
    written = write_task(tmp_path, task_name)
    task = get_task(task_name)
    for split, spec in task.splits.items():
        if split == "train_aug":  # optional; its layout is train.tsv's
            assert spec == dataclasses.replace(task.splits["train"], file="train_aug.tsv")
            continue
        rows = written[spec.file]
        examples = list(read_examples(task, split, tmp_path))
        assert [(e.text_a, e.text_b, e.label) for e in examples] == [(r["a"], r["b"], r["label"]) for r in rows]
        first_line = 1 if spec.header is False else 2
        assert [e.line for e in examples] == list(range(first_line, first_line + len(rows)))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def test_wrong_column_count_names_file_line_and_text(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n")
    with pytest.raises(UsageError) as e:
        list(read_examples(get_task("SST-2"), "train", tmp_path))
    message = str(e.value)
    assert f"{tmp_path / 'SST-2' / 'train.tsv'}:3" in message and "'bad\\tmovie\\t0'" in message
    assert "expected 2" in message and "found 3" in message


def test_headerless_file_checks_width_against_first_row(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tOne.\ngj04\t0\t*\tTwo.\ngj04\t1\tThree.\n")
    with pytest.raises(UsageError, match=r"train.tsv:3: expected 4 tab-separated columns, found 3"):
        list(read_examples(get_task("CoLA"), "train", tmp_path))


def test_unknown_label_names_file_line_valid_labels_and_text(tmp_path):
    _write(
        tmp_path / "RTE" / "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tcontradiction\n",
    )
    with pytest.raises(UsageError) as e:
        list(read_examples(get_task("RTE"), "eval", tmp_path))
    assert "dev.tsv:3: unknown label 'contradiction'" in str(e.value)
    assert "entailment, not_entailment" in str(e.value) and "C.\\tD." in str(e.value)


def test_regression_labels_must_be_numbers(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    _write(
        tmp_path / "STS-B" / "train.tsv",
        header + "0\tg\tf\ty\to\ts\ts\tA.\tB.\t4.250\n1\tg\tf\ty\to\ts\ts\tC.\tD.\thigh\n",
    )
    examples = read_examples(get_task("STS-B"), "train", tmp_path)
    assert next(examples).label == "4.250" and get_task("STS-B").label_id("4.250") == 4.25
    with pytest.raises(UsageError, match=r"train.tsv:3: unknown label 'high' for STS-B \(valid: a number\)"):
        next(examples)


def test_bom_crlf_and_carriage_returns_inside_text(tmp_path):
    _write(tmp_path / "SST-2" / "train.tsv", "\ufeffsentence\tlabel\r\nit 's a\rtrap\t1\r\n\r\nfine\t0\r\n")
    examples = list(read_examples(get_task("SST-2"), "train", tmp_path))
    assert [(e.text_a, e.label, e.line) for e in examples] == [("it 's a\rtrap", "1", 2), ("fine", "0", 4)]


def test_snli_examples_without_gold_label_are_skipped(tmp_path):
    written = write_task(tmp_path, "SNLI", {"train.tsv": 5})
    path = tmp_path / "SNLI" / "train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].rsplit("\t", 1)[0] + "\t-"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = list(read_examples(get_task("SNLI"), "train", tmp_path))
    assert [e.text_a for e in examples] == [r["a"] for i, r in enumerate(written["train.tsv"]) if i != 1]


def test_missing_file_and_missing_header_column(tmp_path):
    with pytest.raises(UsageError, match=r"QNLI eval: missing file .*QNLI/dev.tsv"):
        list(read_examples(get_task("QNLI"), "eval", tmp_path))
    _write(tmp_path / "QNLI" / "dev.tsv", "index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n")
    with pytest.raises(UsageError, match=r"dev.tsv:1: header .* has no column 'sentence'"):
        list(read_examples(get_task("QNLI"), "eval", tmp_path))
