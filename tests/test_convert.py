"""GLUE TSV -> OFRecord conversion: features equal an independent tokenizer's, outputs replace atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from distil.data import ofrecord
from distil.data.convert import ConvertConfig, bert_inputs, build_lstm_vocab, convert_task, lstm_inputs, truncate_pair
from distil.data.tasks import get_task
from distil.data.tokenization import BasicTokenizer, FullTokenizer
from distil.errors import UsageError
from distil.fileio import file_sha256
from glue_fixtures import decode_split, expected_bert, write_task


def config_for(tmp_path: Path, vocab_file: Path, **kw) -> ConvertConfig:
    return ConvertConfig(
        glue_dir=tmp_path / "glue", output_dir=tmp_path / "out", vocab_file=vocab_file, workers=1, **kw
    )


def test_truncate_pair_pops_from_the_longer_list_then_b_on_ties():
    a, b = list("abcde"), list("xyz")
    truncate_pair(a, b, 5)
    assert a == list("abc") and b == list("xy")


def test_bert_inputs_layout_and_truncation(vocab_file):
    tok = FullTokenizer(vocab_file)
    ids, mask, seg = bert_inputs(["the"] * 10, ["cat"] * 3, tok, 9)
    the, cat = tok.vocab["the"], tok.vocab["cat"]
    assert ids == [101, the, the, the, 102, cat, cat, cat, 102]
    assert mask == [1] * 9 and seg == [0] * 5 + [1] * 4
    ids, mask, seg = bert_inputs(["the"] * 10, None, tok, 6)
    assert ids == [101, the, the, the, the, 102] and seg == [0] * 6
    ids, mask, seg = bert_inputs(["cat"], None, tok, 5)
    assert ids == [101, cat, 102, 0, 0] and mask == [1, 1, 1, 0, 0]


def test_lstm_vocab_counts_the_whole_train_set_and_ends_with_unk_pad():
    from collections import Counter

    counts = Counter({"b": 3, "a": 3, "c": 5, "d": 1})
    assert build_lstm_vocab(counts, 3) == ["c", "a", "b", "<UNK>", "<PAD>"]
    vocab = {w: i for i, w in enumerate(build_lstm_vocab(counts, 3))}
    ids, mask, seg = lstm_inputs(["c", "zzz", "a"], ["b", "b"], vocab, 7)
    assert ids == [0, 3, 1, 2, 2, 4, 4] and mask == [1] * 5 + [0, 0] and seg == [0, 0, 0, 1, 1, 0, 0]
    ids, _, seg = lstm_inputs(["a"] * 5, ["b"] * 5, vocab, 4)
    assert ids == [1, 1, 2, 2] and seg == [0, 0, 1, 1]


def test_pair_task_features_match_hf_tokenizer_and_keep_row_order(tmp_path, vocab_file, hf_tokenizer, record_pb2):
    written = write_task(tmp_path / "glue", "MRPC", {"train.tsv": 30, "dev.tsv": 9, "test.tsv": 5})
    summary = convert_task("MRPC", config_for(tmp_path, vocab_file))
    padding = {name: summary.pop(f"{name}_padding") for name in ("MRPC", "MRPC_lstm_32")}
    assert summary == {"MRPC": {"train": 30, "eval": 9, "test": 5}, "MRPC_lstm_32": {"train": 30, "eval": 9, "test": 5}}
    assert set(padding["MRPC"]) == set(padding["MRPC_lstm_32"]) == {"train", "eval", "test"}
    for split, file in (("train", "train.tsv"), ("eval", "dev.tsv"), ("test", "test.tsv")):
        records = decode_split(tmp_path / "out" / "MRPC" / split, record_pb2)
        rows = written[file]
        assert len(records) == len(rows)
        lengths = []
        for rec, row in zip(records, rows):
            ids, mask, seg = expected_bert(hf_tokenizer, row["a"], row["b"], 128)
            assert (rec["input_ids"], rec["input_mask"], rec["segment_ids"]) == (ids, mask, seg)
            label = [0] if row["label"] is None else [int(row["label"])]
            assert rec["label_ids"] == label and rec["is_real_example"] == [1]
            lengths.append(sum(mask))
        meta = json.loads((tmp_path / "out" / "MRPC" / split / "meta.json").read_text())
        histogram = {length: lengths.count(length) for length in lengths}
        assert meta["lengths"]["histogram"] == [[n, histogram[n]] for n in sorted(histogram)]
        assert meta["lengths"]["max"] == max(lengths) and meta["lengths"]["mean"] == round(np.mean(lengths), 2)
        assert (
            meta["lengths"]["padding_share"] == padding["MRPC"][split] == round(1 - sum(lengths) / (128 * len(rows)), 4)
        )
        assert meta["lengths"]["p90"] == sorted(lengths)[int(np.ceil(0.9 * len(lengths))) - 1]
    meta = json.loads((tmp_path / "out" / "MRPC" / "test" / "meta.json").read_text())
    assert meta["labeled"] is False and meta["num_examples"] == 5 and meta["seq_length"] == 128
    assert meta["features"]["input_ids"] == {"dtype": "int32", "shape": [128]}


def test_lstm_records_carry_both_views_of_the_same_example(tmp_path, vocab_file, hf_tokenizer, record_pb2):
    written = write_task(tmp_path / "glue", "RTE", {"train.tsv": 25, "dev.tsv": 6})
    convert_task("RTE", config_for(tmp_path, vocab_file, lstm_vocab_size=50))
    lstm_dir = tmp_path / "out" / "RTE_lstm_32"
    words = (lstm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(words) == 52 and words[-2:] == ["<UNK>", "<PAD>"]
    basic = BasicTokenizer(do_lower_case=True)
    from collections import Counter

    counts = Counter(w for r in written["train.tsv"] for t in (r["a"], r["b"]) for w in basic.tokenize(t))
    assert words[:50] == sorted(counts, key=lambda w: (-counts[w], w))[:50]
    vocab = {w: i for i, w in enumerate(words)}
    meta = json.loads((lstm_dir / "eval" / "meta.json").read_text())
    assert meta["vocab"] == {
        "file": "../vocab.txt",
        "sha256": file_sha256(lstm_dir / "vocab.txt"),
        "size": 52,
        "unk_id": 50,
        "pad_id": 51,
        "do_lower_case": True,
    }
    for rec, row in zip(decode_split(lstm_dir / "eval", record_pb2), written["dev.tsv"]):
        ids, mask, seg = lstm_inputs(basic.tokenize(row["a"]), basic.tokenize(row["b"]), vocab, 32)
        assert (rec["input_ids"], rec["input_mask"], rec["segment_ids"]) == (ids, mask, seg)
        t_ids, t_mask, t_seg = expected_bert(hf_tokenizer, row["a"], row["b"], 128)
        assert (rec["teacher_input_ids"], rec["teacher_input_mask"], rec["teacher_segment_ids"]) == (
            t_ids,
            t_mask,
            t_seg,
        )
        assert rec["label_ids"] == [["entailment", "not_entailment"].index(row["label"])]
    words_per_example = [len(basic.tokenize(r["a"])) + len(basic.tokenize(r["b"])) for r in written["dev.tsv"]]
    assert meta["lengths"]["max"] == min(32, max(words_per_example))
    assert meta["lengths"]["padding_share"] == round(1 - sum(min(32, n) for n in words_per_example) / (32 * 6), 4)


def test_regression_labels_are_float32_and_mnli_has_both_dev_sets(tmp_path, vocab_file, record_pb2):
    written = write_task(tmp_path / "glue", "STS-B", {"train.tsv": 8, "dev.tsv": 4})
    convert_task("STS-B", config_for(tmp_path, vocab_file, lstm_seq_length=0))
    records = decode_split(tmp_path / "out" / "STS-B" / "train", record_pb2)
    assert [r["label_ids"] for r in records] == [[float(np.float32(r["label"]))] for r in written["train.tsv"]]
    assert json.loads((tmp_path / "out" / "STS-B" / "train" / "meta.json").read_text())["features"]["label_ids"] == {
        "dtype": "float32",
        "shape": [1],
    }
    assert not (tmp_path / "out" / "STS-B_lstm_32").exists()
    write_task(tmp_path / "glue", "MNLI")
    summary = convert_task("MNLI", config_for(tmp_path, vocab_file, lstm_seq_length=0))
    splits = ("train", "eval", "eval_mismatched", "test", "test_mismatched")
    assert summary["MNLI"] == {s: 7 for s in splits} and set(summary) == {"MNLI", "MNLI_padding"}
    assert all(0 < summary["MNLI_padding"][s] < 1 for s in splits)


def test_rerun_replaces_output_and_never_appends(tmp_path, vocab_file):
    write_task(tmp_path / "glue", "SST-2", {"train.tsv": 12, "dev.tsv": 5})
    config = config_for(tmp_path, vocab_file)
    convert_task("SST-2", config)
    part = tmp_path / "out" / "SST-2" / "train" / "part-00000"
    first = part.read_bytes()
    convert_task("SST-2", config)
    assert part.read_bytes() == first
    write_task(tmp_path / "glue", "SST-2", {"train.tsv": 4, "dev.tsv": 5}, seed=1)
    assert convert_task("SST-2", config)["SST-2"]["train"] == 4
    assert json.loads((part.parent / "meta.json").read_text())["num_examples"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["SST-2", "SST-2_lstm_32"]


def test_bad_row_leaves_no_output_and_keeps_earlier_good_output(tmp_path, vocab_file):
    write_task(tmp_path / "glue", "CoLA", {"train.tsv": 10, "dev.tsv": 4})
    config = config_for(tmp_path, vocab_file)
    convert_task("CoLA", config)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    dev = tmp_path / "glue" / "CoLA" / "dev.tsv"
    dev.write_text(dev.read_text(encoding="utf-8") + "gj04\t7\t\tA bad label.\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"dev.tsv:5: unknown label '7'"):
        convert_task("CoLA", config)
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before


def test_missing_inputs_are_reported_with_what_is_valid(tmp_path, vocab_file):
    write_task(tmp_path / "glue", "QNLI", skip=("dev.tsv",))
    with pytest.raises(UsageError, match=r"QNLI: missing eval split: .*dev.tsv does not exist"):
        convert_task("QNLI", config_for(tmp_path, vocab_file))
    with pytest.raises(UsageError, match=r"unknown task 'QNLII'; valid tasks: CoLA, SST-2"):
        convert_task("QNLII", config_for(tmp_path, vocab_file))
    with pytest.raises(UsageError, match=r"nope.txt"):
        convert_task("QNLI", config_for(tmp_path, tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UsageError, match=r"empty.txt"):
        convert_task("QNLI", config_for(tmp_path, tmp_path / "empty.txt"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_test_split_is_optional_and_skipped_with_a_warning(tmp_path, vocab_file, caplog):
    caplog.set_level("INFO", logger="distil.data.convert")
    write_task(tmp_path / "glue", "WNLI", skip=("test.tsv",))
    summary = convert_task("WNLI", config_for(tmp_path, vocab_file, lstm_seq_length=0))
    assert summary["WNLI"] == {"train": 7, "eval": 7} and set(summary["WNLI_padding"]) == {"train", "eval"}
    assert "no " in caplog.text and "test.tsv, skipping the test split" in caplog.text
    assert re.search(
        r"WNLI train: 7 examples in .* s; \d+ % of the 128 positions are padding \(real length: mean "
        r"\d+, p90 \d+, max \d+\), \d+ % in batches cut to length buckets [\d/]+",
        caplog.text,
    )


@pytest.mark.slow
def test_worker_processes_write_the_same_bytes(tmp_path, vocab_file):
    write_task(tmp_path / "glue", "SST-2", {"train.tsv": 4500, "dev.tsv": 5})
    one = convert_task("SST-2", config_for(tmp_path, vocab_file, records_per_part=2000))
    (tmp_path / "out").rename(tmp_path / "out1")
    two = convert_task(
        "SST-2",
        ConvertConfig(
            glue_dir=tmp_path / "glue",
            output_dir=tmp_path / "out",
            vocab_file=vocab_file,
            workers=2,
            records_per_part=2000,
        ),
    )
    assert one == two
    for name in ("SST-2", "SST-2_lstm_32"):
        for split in ("train", "eval"):
            for i in range(3 if split == "train" else 1):
                part = Path(name) / split / ofrecord.part_name(i)
                assert (tmp_path / "out" / part).read_bytes() == (tmp_path / "out1" / part).read_bytes(), part
    assert get_task("SST-2").num_labels == 2
