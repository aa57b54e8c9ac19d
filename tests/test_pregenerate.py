"""`python -m distil pregenerate`: raw text -> packed OFRecord train/dev splits for general distillation."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import PYTHON, run
from distil.cli import run_command as cli_main
from distil.data import pregenerate as pregen_module
from distil.data.ofrecord import iter_frames, read_meta
from distil.data.pregenerate import dev_documents, pack_document, pregenerate
from distil.errors import UsageError
from distil.fileio import file_sha256

# A vocab small enough to write the expected ids by hand.
TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "cat",
    "##s",
    "the",
    ".",
]
PAD, CLS, SEP = 0, 2, 3
A, B, C, D, E, F, G, H, CAT, S, THE, DOT = range(5, 17)

# Line numbers on the right. Three documents; max_seq_length 8 leaves 6 word pieces per sequence.
TINY_CORPUS = (
    "\n".join(
        [
            "a b c .",  # 1  4 pieces
            "d e",  # 2  2: the sequence is exactly full
            "f",  # 3  does not fit: a new sequence
            "cats",  # 4  cat ##s: word pieces, not words, are counted
            "",  # 5  end of document 1: its partial sequence is kept
            "g",  # 6
            "a b c d e f g h a b c d e f",  # 7  14 pieces: cut into 6 + 6, the remainder starts the next sequence
            "h",  # 8
            "",  # 9
            "   ",  # 10 whitespace only: a blank line too
            "The cat",  # 11 document 3: the dev split
            "",  # 12
        ]
    )
    + "\n"
)

TRAIN_EXPECTED = [
    [CLS, A, B, C, DOT, D, E, SEP],
    [CLS, F, CAT, S, SEP, PAD, PAD, PAD],
    [CLS, G, SEP, PAD, PAD, PAD, PAD, PAD],  # document 2 does not join document 1's last sequence
    [CLS, A, B, C, D, E, F, SEP],
    [CLS, G, H, A, B, C, D, SEP],
    [CLS, E, F, H, SEP, PAD, PAD, PAD],
]
DEV_EXPECTED = [[CLS, THE, CAT, SEP, PAD, PAD, PAD, PAD]]


@pytest.fixture()
def tiny_vocab(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def records(split_dir: Path, record_pb2) -> dict:
    """Every record of a split, decoded by OneFlow's protobuf classes: {feature: [values per record]}."""
    out: dict = {}
    for part in read_meta(split_dir)["parts"]:
        for body in iter_frames(split_dir / part["name"]):
            record = record_pb2.OFRecord()
            record.ParseFromString(body)
            for name, feature in record.feature.items():
                out.setdefault(name, []).append(list(getattr(feature, feature.WhichOneof("kind")).value))
    return out


def test_pack_document_greedy_never_splits_a_fitting_sentence():
    assert list(pack_document([[1, 2], [3], [4, 5, 6], []], 4)) == [[1, 2, 3], [4, 5, 6]]
    assert list(pack_document([[1], list(range(10, 19)), [2]], 4)) == [[1], [10, 11, 12, 13], [14, 15, 16, 17], [18, 2]]
    assert list(pack_document([list(range(8))], 4)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(pack_document([], 4)) == [] and list(pack_document([[], []], 4)) == []


@pytest.mark.parametrize(
    "documents, fraction, dev",
    [
        (1, 0.01, 0),
        (2, 0.01, 1),
        (100, 0.01, 1),
        (1000, 0.01, 10),
        (3, 0.9, 2),
        (50, 0.0, 0),
        (199, 0.01, 2),
        (1000, 0.0001, 1),
    ],
)
def test_dev_takes_about_the_fraction_at_least_one_and_leaves_train_one(documents, fraction, dev):
    assert dev_documents(documents, fraction) == dev


def test_packed_sequences_respect_documents_and_dev_holds_the_last(tmp_path, tiny_vocab, record_pb2):
    corpus = write(tmp_path / "corpus.txt", TINY_CORPUS)
    summary = pregenerate(corpus, tiny_vocab, tmp_path / "out", max_seq_length=8)
    got = {split: records(tmp_path / "out" / split, record_pb2) for split in ("train", "dev")}
    assert got["train"]["input_ids"] == TRAIN_EXPECTED and got["dev"]["input_ids"] == DEV_EXPECTED
    for split, expected in (("train", TRAIN_EXPECTED), ("dev", DEV_EXPECTED)):
        assert got[split]["input_mask"] == [[int(i != PAD) for i in ids] for ids in expected]
        assert got[split]["segment_ids"] == [[0] * 8 for _ in expected]
        assert sorted(got[split]) == ["input_ids", "input_mask", "segment_ids"]  # no label_ids
    assert summary["train"] == {
        "documents": 2,
        "sentences": 7,
        "sequences": 6,
        "tokens": 25,
        "padding_share": round(1 - 37 / 48, 4),
    }
    assert summary["dev"] == {"documents": 1, "sentences": 1, "sequences": 1, "tokens": 2, "padding_share": 0.5}
    assert (summary["documents"], summary["sentences"], summary["sequences"], summary["tokens"]) == (3, 8, 7, 27)


def test_meta_json_describes_the_split_and_oneflow_reads_it_back(tmp_path, tiny_vocab):
    from distil.data.dataset import EvalStream, OFRecordDataset, open_split

    corpus = write(tmp_path / "corpus.txt", TINY_CORPUS)
    pregenerate(corpus, tiny_vocab, tmp_path / "out", max_seq_length=8, do_lower_case=True)
    meta = json.loads((tmp_path / "out" / "train" / "meta.json").read_text())
    assert meta["format"] == "pretraining" and meta["split"] == "train" and meta["source"] == str(corpus.resolve())
    assert meta["vocab"] == {
        "file": str(tiny_vocab.resolve()),
        "sha256": file_sha256(tiny_vocab),
        "size": len(TINY_VOCAB),
        "do_lower_case": True,
    }
    assert meta["features"] == {
        name: {"dtype": "int32", "shape": [8]} for name in ("input_ids", "input_mask", "segment_ids")
    }
    assert (meta["documents"], meta["sentences"], meta["sequences"], meta["tokens"]) == (2, 7, 6, 25)
    assert meta["num_examples"] == 6 and meta["seq_length"] == 8 and meta["lines"] == [1, 8]
    assert meta["lengths"]["histogram"] == [[3, 1], [5, 2], [8, 3]]  # real lengths, for the length buckets
    assert json.loads((tmp_path / "out" / "dev" / "meta.json").read_text())["lines"] == [11, 11]
    split = open_split(tmp_path / "out" / "train")
    dataset = OFRecordDataset(split, batch_size=4)
    batch = dataset()
    assert {name: tuple(value.shape) for name, value in batch.items()} == {
        "input_ids": (4, 8),
        "input_mask": (4, 8),
        "segment_ids": (4, 8),
    }
    assert str(batch["input_ids"].dtype) == "oneflow.int32"
    fresh = OFRecordDataset(split, batch_size=4)  # the stream reads from the first record
    got = EvalStream(6, 4).run(lambda: {k: v.numpy() for k, v in fresh().items()})
    np.testing.assert_array_equal(got["input_ids"], np.array(TRAIN_EXPECTED))


def test_real_vocab_ids_equal_the_hf_tokenizer_in_corpus_order(tmp_path, vocab_file, hf_tokenizer, record_pb2):
    """With the teacher's vocab, the pieces inside [CLS] ... [SEP], read in order, are the corpus's pieces."""
    documents = [
        ["Knowledge distillation compresses a large teacher.", "The student imitates its outputs!"],
        ["Unaffable, naïve café-goers tokenize differently.", "Short."],
        ["A final document, alone in the dev split."],
    ]
    corpus = write(tmp_path / "corpus.txt", "\n\n".join("\n".join(d) for d in documents) + "\n")
    summary = pregenerate(corpus, vocab_file, tmp_path / "out", max_seq_length=12, dev_fraction=0.3)
    assert summary["dev"]["documents"] == 1
    inner = []
    for split in ("train", "dev"):
        got = records(tmp_path / "out" / split, record_pb2)
        for ids, mask in zip(got["input_ids"], got["input_mask"]):
            real = ids[: sum(mask)]
            assert real[0] == 101 and real[-1] == 102 and len(ids) == 12 and not any(ids[len(real) :])
            inner += real[1:-1]
    expected = [i for d in documents for s in d for i in hf_tokenizer.encode(s, add_special_tokens=False).ids]
    assert inner == expected


@pytest.mark.parametrize("text", ["one single line\n", "Only one document.\nOf two sentences.\n\n"])
def test_a_single_document_has_no_dev_split(tmp_path, tiny_vocab, text):
    summary = pregenerate(write(tmp_path / "corpus.txt", text), tiny_vocab, tmp_path / "out", max_seq_length=8)
    assert summary["dev"] is None and summary["train"]["documents"] == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["train"]


def test_dev_takes_the_last_documents_by_fraction(tmp_path, tiny_vocab, record_pb2):
    words = TINY_VOCAB[5:13]  # a .. h: document i is the word i (mod 8) repeated i + 1 times
    corpus = write(tmp_path / "corpus.txt", "".join(" ".join([words[i % 8]] * (i + 1)) + "\n\n" for i in range(10)))
    summary = pregenerate(corpus, tiny_vocab, tmp_path / "out", max_seq_length=8, dev_fraction=0.2)
    assert summary["train"]["documents"] == 8 and summary["dev"]["documents"] == 2
    dev = records(tmp_path / "out" / "dev", record_pb2)["input_ids"]
    # documents 8 (a × 9: 6 + 3) and 9 (b × 10: 6 + 4)
    assert dev == [
        [CLS] + [A] * 6 + [SEP],
        [CLS] + [A] * 3 + [SEP] + [PAD] * 3,
        [CLS] + [B] * 6 + [SEP],
        [CLS] + [B] * 4 + [SEP] + [PAD] * 2,
    ]
    assert read_meta(tmp_path / "out" / "dev")["lines"] == [17, 19]


BAD_INPUTS = {
    "missing": (None, "{corpus}: no such file"),
    "empty": (b"", "{corpus}: empty file"),
    "blank": (b"\n  \n\n", "{corpus}:3: only blank lines"),
    "no_breaks": (b"a b\nc d\ne f\n", "{corpus}:3: no blank line in 3 lines; documents are separated by blank lines"),
    "not_utf8": (b"a b\n\nc d\ne \xff f\n", "{corpus}:4: not UTF-8 text (byte 0xff at byte 3 of the line)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_corpus_names_file_and_line_and_leaves_nothing(tmp_path, tiny_vocab, case):
    content, message = BAD_INPUTS[case]
    corpus = tmp_path / "data" / "corpus.txt"
    corpus.parent.mkdir()
    if content is not None:
        write(corpus, content)
    before = sorted(os.listdir(corpus.parent))
    with pytest.raises(UsageError) as error:
        pregenerate(corpus, tiny_vocab, corpus.parent / "out" / "pretrain", max_seq_length=8)
    assert message.format(corpus=corpus) in str(error.value)
    assert sorted(os.listdir(corpus.parent)) == before


def test_bad_settings_and_vocab_are_refused(tmp_path, tiny_vocab):
    corpus = write(tmp_path / "corpus.txt", TINY_CORPUS)
    with pytest.raises(UsageError, match="--max_seq_length 7 is too small"):
        pregenerate(corpus, tiny_vocab, tmp_path / "out", max_seq_length=7)
    with pytest.raises(UsageError, match=r"--dev_fraction 1.0 must be in \[0, 1\)"):
        pregenerate(corpus, tiny_vocab, tmp_path / "out", dev_fraction=1.0)
    no_pad = write(tmp_path / "nopad.txt", "\n".join(t for t in TINY_VOCAB if t != "[PAD]") + "\n")
    with pytest.raises(UsageError, match=re.escape(f"{no_pad}: not a BERT vocabulary (no [PAD] token)")):
        pregenerate(corpus, no_pad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite_and_a_failure_leaves_it_intact(tmp_path, tiny_vocab, monkeypatch):
    corpus = write(tmp_path / "corpus.txt", TINY_CORPUS)
    out = tmp_path / "out"
    out.mkdir()
    pregenerate(corpus, tiny_vocab, out, max_seq_length=8)  # an empty folder may be filled
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="exists and is not empty; pass --overwrite"):
        pregenerate(corpus, tiny_vocab, out, max_seq_length=8)
    assert (out / "mine.txt").read_text() == "keep me"

    calls = []

    def failing_pack(document, capacity):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return pack_document(document, capacity)

    monkeypatch.setattr(pregen_module, "pack_document", failing_pack)
    with pytest.raises(RuntimeError, match="disk full"):
        pregenerate(corpus, tiny_vocab, out, max_seq_length=8, overwrite=True)
    assert (out / "mine.txt").read_text() == "keep me" and sorted(os.listdir(tmp_path)) == [
        "corpus.txt",
        "out",
        "vocab.txt",
    ]
    monkeypatch.undo()
    inside = write(out / "corpus.txt", TINY_CORPUS)
    with pytest.raises(UsageError, match="is inside --output_dir"):
        pregenerate(inside, tiny_vocab, out, max_seq_length=8, overwrite=True)
    pregenerate(corpus, tiny_vocab, out, max_seq_length=16, overwrite=True)
    assert sorted(os.listdir(out)) == ["dev", "train"] and read_meta(out / "train")["seq_length"] == 16
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "out", "vocab.txt"]


def test_cli_prints_the_summary_and_exits_2_on_bad_input(tmp_path, tiny_vocab, capsys, record_pb2):
    corpus = write(tmp_path / "corpus.txt", TINY_CORPUS)
    argv = [
        "pregenerate",
        "--corpus",
        str(corpus),
        "--vocab_file",
        str(tiny_vocab),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_seq_length",
        "8",
        "--do_lower_case",
        "false",
        "--dev_fraction",
        "0.5",
    ]
    assert cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sequences"] == 7 and summary["dev"]["documents"] == 2  # round(3 × 0.5)
    assert read_meta(tmp_path / "out" / "dev")["vocab"]["do_lower_case"] is False
    assert records(tmp_path / "out" / "dev", record_pb2)["input_ids"][-1][:4] == [CLS, 1, CAT, SEP]  # The: [UNK]
    flat = write(tmp_path / "flat.txt", "one sentence\nanother sentence\n")
    result = run(
        [
            PYTHON,
            "-m",
            "distil",
            "pregenerate",
            "--corpus",
            str(flat),
            "--vocab_file",
            str(tiny_vocab),
            "--output_dir",
            str(tmp_path / "out2"),
        ],
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"{flat}:2: no blank line in 2 lines; documents are separated by blank lines" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out2").exists()
