"""TinyBERT data augmentation: the masked LM against Hugging Face, candidates against a direct
reference computation, and train_aug.tsv end to end (layout, rules, determinism, the task reader)."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run
from distil.cli import run_command as cli_main
from distil.data import augment
from distil.data.augment import STOP_WORDS, Augmentor, GloveIndex, MaskedLMPredictor, top_k
from distil.data.tasks import get_task, read_examples
from distil.data.tokenization import BasicTokenizer, FullTokenizer
from distil.errors import UsageError
from distil.models.hf_format import read_hf_weights, write_safetensors
from distil.models.mlm import load_mlm
from distil.runtime import import_oneflow

flow = import_oneflow()
FIXTURE = ROOT / "tests" / "fixtures" / "hf_tiny_pretraining"
SCRIPT = ROOT / "scripts" / "run_data_augmentation.sh"
M = 3

# Two unused tokens of the tiny vocab become continuation pieces, so that "films", "schools" and
# "filming" are words of several WordPieces (the fixture's vocab has none).
CONTINUATIONS = {"large": "##s", "next": "##ing"}

# A tiny GloVe: "films" and "schools" have neighbours, "filming" and "states" have none; "<unk>" is all zeros.
GLOVE = {
    "films": [1.0, 0.2, 0.0, 0.0],
    "movies": [0.9, 0.3, 0.0, 0.0],
    "pictures": [0.8, 0.5, 0.1, 0.0],
    "games": [0.1, 1.0, 0.0, 0.0],
    "schools": [0.0, 0.0, 1.0, 0.1],
    "colleges": [0.0, 0.1, 0.9, 0.2],
    "academies": [0.1, 0.0, 0.8, 0.3],
    "cities": [0.3, 0.3, 0.3, 0.3],
    "<unk>": [0.0, 0.0, 0.0, 0.0],
}

SST2_ROWS = [
    ["The film was good , and the game was great !", "1"],
    ["Two films in the City of the world.", "0"],
    ["A new school : 3 schools , 1999 & more!", "1"],
    ["Filming the world's first day in the United States", "0"],
    ["Movie time for the national university", "1"],
    ["The film was good , and the game was great !", "1"],
    ["It is, and was.", "0"],
]
RTE_ROWS = [
    ["0", "The school film was good.", "Two films in the big city!", "entailment"],
    ["1", "A little game at the university", "No schools, 3 cities.", "not_entailment"],
    ["2", "It was.", "They were there.", "not_entailment"],
]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory) -> Path:
    """The tiny BertForPreTraining with two vocab entries turned into '##' pieces."""
    folder = tmp_path_factory.mktemp("mlm")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, folder / name)
    vocab = (FIXTURE / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert all(word in vocab for word in CONTINUATIONS)
    (folder / "vocab.txt").write_text("\n".join(CONTINUATIONS.get(w, w) for w in vocab) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def glove_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("glove") / "glove.txt"
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in GLOVE.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(mlm_dir) -> FullTokenizer:
    return FullTokenizer(mlm_dir / "vocab.txt")


@pytest.fixture(scope="module")
def model(mlm_dir):
    return load_mlm(mlm_dir)


def write_tsv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([header] if header else []) + rows
    path.write_text("".join("\t".join(r) + "\n" for r in lines), encoding="utf-8")


def read_tsv(path: Path):
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the masked LM


def forward(model, ids, segments, mask):
    with flow.no_grad():
        return model(*(flow.tensor(np.asarray(a, dtype=np.int64)) for a in (ids, segments, mask))).numpy()


def test_mlm_reproduces_hf_prediction_logits():
    ref = np.load(FIXTURE / "reference.npz")
    model = load_mlm(FIXTURE)
    logits = forward(model, ref["input_ids"], ref["token_type_ids"], ref["attention_mask"])
    assert logits.shape == ref["prediction_logits"].shape == (3, 7, 99)
    np.testing.assert_allclose(logits, ref["prediction_logits"], atol=1e-4, rtol=0)
    positions = np.array([2, 1, 5])
    with flow.no_grad():
        at = model.logits_at(
            *(flow.tensor(ref[k].astype(np.int64)) for k in ("input_ids", "token_type_ids", "attention_mask")),
            flow.tensor(positions),
        ).numpy()
    np.testing.assert_allclose(at, ref["prediction_logits"][np.arange(3), positions], atol=1e-4, rtol=0)


def variant_checkpoint(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "variant"
    folder.mkdir(parents=True)
    for name in ("config.json", "vocab.txt"):
        shutil.copy(FIXTURE / name, folder / name)
    tensors = read_hf_weights(FIXTURE)
    edit(tensors)
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def test_masked_lm_layout_with_old_names_and_a_stored_tied_decoder_loads(tmp_path):
    """BertForMaskedLM (no pooler), gamma/beta names, decoder.weight stored, bias as decoder.bias."""

    def edit(t):
        for name in [n for n in t if n.startswith(("bert.pooler.", "cls.seq_relationship."))]:
            del t[name]
        for name in [n for n in t if ".LayerNorm." in n]:
            t[name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")] = t.pop(
                name
            )
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].copy()
        t["cls.predictions.decoder.bias"] = t.pop("cls.predictions.bias")

    ref = np.load(FIXTURE / "reference.npz")
    logits = forward(
        load_mlm(variant_checkpoint(tmp_path, edit)), ref["input_ids"], ref["token_type_ids"], ref["attention_mask"]
    )
    np.testing.assert_allclose(logits, ref["prediction_logits"], atol=1e-4, rtol=0)


def test_checkpoints_without_a_usable_head_are_refused(tmp_path):
    with pytest.raises(UsageError, match="needs a BERT with its masked-LM head"):
        load_mlm(ROOT / "tests" / "fixtures" / "hf_tiny_cls_safetensors")
    untied = variant_checkpoint(
        tmp_path / "a",
        lambda t: t.update({"cls.predictions.decoder.weight": t["bert.embeddings.word_embeddings.weight"] + 1.0}),
    )
    with pytest.raises(UsageError, match="differs from the word embeddings"):
        load_mlm(untied)
    misshapen = variant_checkpoint(
        tmp_path / "b", lambda t: t.update({"cls.predictions.transform.dense.weight": np.zeros((32, 31), np.float32)})
    )
    with pytest.raises(UsageError, match=r"cls.predictions.transform.dense.weight' has shape \(32, 31\)"):
        load_mlm(misshapen)
    with pytest.raises(UsageError, match="does not exist"):
        load_mlm(tmp_path / "nowhere")


# ---------------------------------------------------------------- candidates


def test_top_k_equals_a_stable_full_sort():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 50, size=(20, 3000)).astype(np.float32)  # many ties
    scores[3, :] = -np.inf
    scores[3, 7] = 1.0
    expected = [np.argsort(-row, kind="stable")[:15].tolist() for row in scores]
    assert top_k(scores, 15) == expected
    assert top_k(scores[:, :10], 15) == [np.argsort(-row, kind="stable").tolist() for row in scores[:, :10]]


def glove_reference(word: str, m: int):
    """Cosine neighbours computed directly: all-zero vectors and the word itself excluded."""
    if word not in GLOVE:
        return []
    words = list(GLOVE)
    vectors = np.array([GLOVE[w] for w in words], dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1)
    target = vectors[words.index(word)] / norms[words.index(word)]
    scored = [
        (-float(vectors[i] @ target / norms[i]), i) for i in range(len(words)) if norms[i] > 0 and words[i] != word
    ]
    return [words[i] for _, i in sorted(scored)[:m]]


def test_glove_neighbours_are_cosine_nearest_and_the_file_is_read_up_to_the_limit(glove_file, tmp_path):
    glove = GloveIndex.load(glove_file)
    assert glove.words == list(GLOVE)
    assert glove.neighbours("films", 2) == ["movies", "pictures"] == glove_reference("films", 2)
    assert glove.neighbours("schools", 3) == glove_reference("schools", 3) == ["colleges", "academies", "cities"]
    assert "<unk>" not in glove.neighbours("cities", 20) and "cities" not in glove.neighbours("cities", 20)
    assert len(glove.neighbours("cities", 20)) == 7 and glove.neighbours("filming", 5) == []
    np.testing.assert_allclose(np.linalg.norm(glove.vectors[:8], axis=1), 1.0, rtol=1e-6)
    assert GloveIndex.load(glove_file, limit=3).words == ["films", "movies", "pictures"]
    spaced = tmp_path / "spaced.txt"  # glove.840B has words with spaces in them
    spaced.write_text("at . com 1 0.5\nfilms 2 1.5\nmovies 0.1 5\n", encoding="utf-8")
    glove = GloveIndex.load(spaced)
    assert glove.words == ["at . com", "films", "movies"] and glove.neighbours("films", 1) == ["at . com"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.txt:2: expected a word and 3 numbers"):
        GloveIndex.load(bad)
    with pytest.raises(UsageError, match="nope.txt does not exist"):
        GloveIndex.load(tmp_path / "nope.txt")


def test_stop_words_are_nltks_english_list():
    assert len(STOP_WORDS) == 173  # the original script's list (NLTK's, plus 's and 're)
    assert {"the", "and", "was", "more", "most", "other", "some", "all", "own", "can", "first"} - STOP_WORDS == {
        "first"
    }
    assert (
        not augment.is_replaceable("the")
        and not augment.is_replaceable("3")
        and not augment.is_replaceable("café")
        and not augment.is_replaceable("Film")
    )
    assert augment.is_replaceable("film") and augment.is_replaceable("first")


def reference_candidates(model, tokenizer, sentence: str, m: int, max_len: int = 64):
    """What the original script computes, one masked sequence at a time without padding."""
    words = tokenizer.basic_tokenizer.tokenize(sentence)
    pieces = tokenizer.tokenize(sentence)
    spans = []  # the original's alignment: a piece without '##' starts a word
    for i, piece in enumerate(pieces):
        if not piece.startswith("##"):
            spans.append([i])
        else:
            spans[-1].append(i)
    assert len(spans) == len(words)
    result = {}
    for w, word in enumerate(words):
        if not re.fullmatch("[a-z]+", word) or word in STOP_WORDS:
            continue
        if len(spans[w]) > 1:
            cands = glove_reference(word, m)
        else:
            masked = list(pieces)
            masked[spans[w][0]] = "[MASK]"
            tokens = (["[CLS]"] + masked + ["[SEP]"] + pieces + ["[SEP]"])[:max_len]
            segments = ([0] * (len(pieces) + 2) + [1] * (len(pieces) + 1))[:max_len]
            position = spans[w][0] + 1
            cands = []
            if position < max_len:
                ids = tokenizer.convert_tokens_to_ids(tokens)
                logits = forward(model, [ids], [segments], [[1] * len(ids)])[0, position]
                top = tokenizer.convert_ids_to_tokens(np.argsort(-logits, kind="stable")[:m].tolist())
                cands = [t for t in top if not t.startswith("##") and not re.fullmatch(r"\[.+\]", t)]
        result[w] = cands or [word]
    return result


@pytest.fixture(scope="module")
def augmentor(model, tokenizer, glove_file):
    # batches of 5 mix sequences of different lengths (padding) and of different sentences
    return Augmentor(
        MaskedLMPredictor(model, batch_size=5),
        tokenizer,
        GloveIndex.load(glove_file),
        M=M,
        N=10,
        p=0.5,
        max_seq_length=64,
    )


def test_candidates_equal_a_direct_unbatched_computation(augmentor, model, tokenizer):
    sentences = [r[0] for r in SST2_ROWS] + [r[1] for r in RTE_ROWS] + [r[2] for r in RTE_ROWS]
    found = augmentor.candidates(sentences)
    for sentence, cands in zip(sentences, found):
        assert cands == reference_candidates(model, tokenizer, sentence, M), sentence
    words = tokenizer.basic_tokenizer.tokenize(SST2_ROWS[1][0])  # two films in the city of the world .
    assert found[1][words.index("films")][:2] == ["movies", "pictures"]
    filming = found[3][tokenizer.basic_tokenizer.tokenize(SST2_ROWS[3][0]).index("filming")]
    assert filming == ["filming"]  # several pieces, not in GloVe
    assert found[6] == {}  # "It is, and was." has no candidate word
    mlm_lists = [c for cands in found for w, c in cands.items() if c]
    assert any(len(c) > 1 for c in mlm_lists)


def test_a_mask_truncated_away_leaves_the_word_itself(model, tokenizer, glove_file):
    short = Augmentor(
        MaskedLMPredictor(model), tokenizer, GloveIndex.load(glove_file), M=M, N=1, p=1.0, max_seq_length=8
    )
    sentence = "good film day game city world time year"
    cands = short.candidates([sentence])[0]
    assert cands == reference_candidates(model, tokenizer, sentence, M, max_len=8)
    assert cands[7] == ["year"] and len(cands) == 8  # position 8 is cut away
    assert reference_candidates(model, tokenizer, sentence, M)[7] != ["year"]  # untruncated, it has some


def test_long_sequences_come_in_smaller_batches(model):
    lengths = [10] * 70 + [300] * 20 + [512] * 5 + [40] * 3
    sequences = [([1] * n, [0] * n, 1) for n in lengths]
    batches = list(MaskedLMPredictor(model, batch_size=64)._batches(sequences))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    widths = [max(lengths[i] for i in b) for b in batches]
    assert len(batches[0]) == 64 and widths[0] == 10
    assert all(len(b) * max(w, 128) ** 2 <= 64 * 128**2 for b, w in zip(batches, widths))
    assert [len(b) for b, w in zip(batches, widths) if w == 512] == [4, 1]
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)


class FixedPredictor:
    """Predicts the same tokens at every [MASK]."""

    def __init__(self, tokenizer, tokens):
        self.ids = tokenizer.convert_tokens_to_ids(tokens)
        self.seen = []

    def top_ids(self, sequences, m):
        self.seen += sequences
        return [self.ids[:m] for _ in sequences]


def test_continuation_pieces_and_special_tokens_are_no_candidates(tokenizer, glove_file):
    glove = GloveIndex.load(glove_file)
    predictor = FixedPredictor(tokenizer, ["##s", "[UNK]", "game", "[MASK]", "##ing", "city", "day"])
    cands = Augmentor(predictor, tokenizer, glove, M=6, N=1).candidates(["The film, the films."])[0]
    assert cands == {1: ["game", "city"], 4: glove_reference("films", 6)} and len(cands[4]) == 6
    assert len(predictor.seen) == 1
    ids, segments, position = predictor.seen[0]
    unk = "[UNK]"  # the tiny vocab has no punctuation
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "[CLS]",
        "the",
        "[MASK]",
        unk,
        "the",
        "film",
        "##s",
        unk,
        "[SEP]",
        "the",
        "film",
        unk,
        "the",
        "film",
        "##s",
        unk,
        "[SEP]",
    ]
    assert segments == [0] * 9 + [1] * 8 and position == 2
    only_pieces = FixedPredictor(tokenizer, ["##s", "[SEP]", "##ing"])
    assert Augmentor(only_pieces, tokenizer, glove, M=3, N=1).candidates(["Film"])[0] == {0: ["film"]}


def test_variants_follow_the_original_draws(augmentor):
    candidates = {1: ["a", "b"], 3: ["c"]}
    rng, mirror = random.Random(5), random.Random(5)
    result = augmentor.variants("W X Y Z", candidates, rng)
    expected, seen = ["W X Y Z"], {"w x y z"}
    for _ in range(augmentor.N):
        new = ["w", "x", "y", "z"]
        for w, cands in candidates.items():
            choice = mirror.choice(cands)
            if mirror.random() < augmentor.p:
                new[w] = choice
        if " ".join(new) not in seen:
            seen.add(" ".join(new))
            expected.append(" ".join(new))
    assert result == expected and 2 <= len(result) <= 1 + augmentor.N


# ---------------------------------------------------------------- train_aug.tsv end to end


def run_main(argv, capsys):
    status = cli_main(["augment", *[str(a) for a in argv]])
    out = capsys.readouterr().out
    return status, (json.loads(out) if status == 0 else None)


def groups(original_rows, output_rows):
    """Split the output into one group per input row (each starts with that row, unchanged)."""
    result, j = [], -1
    for row in output_rows:
        if j + 1 < len(original_rows) and row == original_rows[j + 1]:
            j += 1
            result.append([])
        assert j >= 0, f"output starts with {row}, not with the first training row"
        result[-1].append(row)
    assert j == len(original_rows) - 1, "some training rows are missing from the output"
    return result


def assert_valid_variant(original: str, variant: str, candidates) -> int:
    """A variant only changes candidate words, into one of their candidates; returns how many changed."""
    words = BasicTokenizer().tokenize(original)
    new = variant.split(" ")
    assert len(new) == len(words), (original, variant)
    changed = 0
    for w, (old, now) in enumerate(zip(words, new)):
        if old != now:
            assert re.fullmatch("[a-z]+", old) and old not in STOP_WORDS, (original, variant, old)
            assert now in candidates[w], (original, variant, old, now)
            assert not now.startswith("##")
            changed += 1
    return changed


def sst2_dir(tmp_path: Path) -> Path:
    write_tsv(tmp_path / "glue" / "SST-2" / "train.tsv", ["sentence", "label"], SST2_ROWS)
    return tmp_path / "glue"


def test_sst2_train_aug_has_trains_layout_and_replaces_only_candidate_words(
    tmp_path, mlm_dir, glove_file, model, tokenizer, capsys
):
    glue = sst2_dir(tmp_path)
    n = 30
    status, summary = run_main(
        [
            "--pretrained_model",
            mlm_dir,
            "--glove_embs",
            glove_file,
            "--glue_dir",
            glue,
            "--task_name",
            "SST-2",
            "--M",
            M,
            "--N",
            n,
            "--seed",
            7,
        ],
        capsys,
    )
    assert status == 0
    output = glue / "SST-2" / "train_aug.tsv"
    rows = read_tsv(output)
    assert rows[0] == ["sentence", "label"] and all(len(r) == 2 for r in rows)
    assert summary["rows_in"] == len(SST2_ROWS) and summary["rows_out"] == len(rows) - 1
    assert summary["N"] == n and summary["output"] == str(output) and summary["seconds"] >= 0
    assert not list((glue / "SST-2").glob(".*tmp*"))
    changed_by_kind = {"mlm": 0, "glove": 0}
    for original, group in zip(SST2_ROWS, groups(SST2_ROWS, rows[1:])):
        assert group[0] == original and 1 <= len(group) <= 1 + n
        texts = [r[0] for r in group[1:]]
        assert len(set(texts)) == len(texts) and all(r[1] == original[1] for r in group)
        candidates = reference_candidates(model, tokenizer, original[0], M)
        words = tokenizer.basic_tokenizer.tokenize(original[0])
        for text in texts:
            assert text != " ".join(words)
            assert assert_valid_variant(original[0], text, candidates) >= 1
            for old, now in zip(words, text.split(" ")):
                if old != now:
                    kind = "glove" if len(tokenizer.wordpiece_tokenizer.tokenize_words([old])) > 1 else "mlm"
                    changed_by_kind[kind] += 1
                    if kind == "glove":
                        assert now in glove_reference(old, M)
        if original[0] == "It is, and was.":
            assert group == [original]
        if "Filming" in original[0]:
            assert not any(t.split(" ")[0] != "filming" for t in texts)  # no GloVe entry: never replaced
    assert changed_by_kind["mlm"] > 10 and changed_by_kind["glove"] > 3
    # the two identical rows draw from their own RNGs
    first, second = (g for g, o in zip(groups(SST2_ROWS, rows[1:]), SST2_ROWS) if o == SST2_ROWS[0])
    assert first[1:] != second[1:]

    # the task reader takes the output as a training file
    task = get_task("SST-2")
    copy = tmp_path / "copy"
    (copy / "SST-2").mkdir(parents=True)
    shutil.copy(output, copy / "SST-2" / "train.tsv")
    examples = list(read_examples(task, "train", copy))
    assert [(e.text_a, e.label) for e in examples] == [tuple(r) for r in rows[1:]]
    if "train_aug" in task.splits:
        assert [e.text_a for e in read_examples(task, "train_aug", glue)] == [r[0] for r in rows[1:]]


def test_same_seed_same_file_other_seed_other_file_and_p0_gives_the_training_set(tmp_path, mlm_dir, glove_file, capsys):
    glue = sst2_dir(tmp_path)
    output = glue / "SST-2" / "train_aug.tsv"
    base = [
        "--pretrained_model",
        mlm_dir,
        "--glove_embs",
        glove_file,
        "--glue_dir",
        glue,
        "--task_name",
        "SST-2",
        "--M",
        M,
        "--N",
        8,
    ]
    contents = []
    for seed in (1, 1, 2):
        assert run_main(base + ["--seed", seed], capsys)[0] == 0
        contents.append(output.read_bytes())
    assert contents[0] == contents[1] and contents[0] != contents[2]
    status, summary = run_main(base + ["--p", 0], capsys)
    assert status == 0 and summary["rows_out"] == len(SST2_ROWS)
    assert output.read_text(encoding="utf-8") == (glue / "SST-2" / "train.tsv").read_text(encoding="utf-8")


def test_pair_task_augments_each_text_column_on_its_own(tmp_path, mlm_dir, glove_file, model, tokenizer, capsys):
    header = ["index", "sentence1", "sentence2", "label"]
    write_tsv(tmp_path / "glue" / "RTE" / "train.tsv", header, RTE_ROWS)
    n = 12
    status, summary = run_main(
        [
            "--pretrained_model",
            mlm_dir,
            "--glove_embs",
            glove_file,
            "--glue_dir",
            tmp_path / "glue",
            "--task_name",
            "rte",
            "--M",
            M,
            "--N",
            n,
        ],
        capsys,
    )
    assert status == 0 and summary["task"] == "RTE"
    rows = read_tsv(tmp_path / "glue" / "RTE" / "train_aug.tsv")
    assert rows[0] == header and all(len(r) == 4 for r in rows)
    for original, group in zip(RTE_ROWS, groups(RTE_ROWS, rows[1:])):
        assert group[0] == original
        per_column = {1: 0, 2: 0}
        for row in group[1:]:
            assert row[0] == original[0] and row[3] == original[3]
            changed = [c for c in (1, 2) if row[c] != original[c]]
            assert len(changed) == 1
            c = changed[0]
            per_column[c] += 1
            assert (
                assert_valid_variant(original[c], row[c], reference_candidates(model, tokenizer, original[c], M)) >= 1
            )
        assert per_column[1] <= n and per_column[2] <= n
        if original[0] == "2":
            assert group == [original]  # stop words only
        else:
            assert per_column[1] > 0 and per_column[2] > 0
    examples = (
        list(read_examples(get_task("RTE"), "train_aug", tmp_path / "glue"))
        if "train_aug" in get_task("RTE").splits
        else None
    )
    copy = tmp_path / "copy" / "RTE"
    copy.mkdir(parents=True)
    shutil.copy(tmp_path / "glue" / "RTE" / "train_aug.tsv", copy / "train.tsv")
    read = list(read_examples(get_task("RTE"), "train", tmp_path / "copy"))
    assert [(e.text_a, e.text_b, e.label) for e in read] == [(r[1], r[2], r[3]) for r in rows[1:]]
    assert examples is None or [e.text_a for e in examples] == [e.text_a for e in read]


def test_headerless_cola_keeps_its_layout(tmp_path, mlm_dir, glove_file, capsys):
    cola = [["gj04", "1", "", "The film was good."], ["gj04", "0", "*", "Game the city big world."]]
    write_tsv(tmp_path / "glue" / "CoLA" / "train.tsv", None, cola)
    status, summary = run_main(
        [
            "--pretrained_model",
            mlm_dir,
            "--glove_embs",
            glove_file,
            "--glue_dir",
            tmp_path / "glue",
            "--task_name",
            "CoLA",
            "--M",
            M,
        ],
        capsys,
    )
    assert status == 0 and summary["N"] == 30 and summary["rows_in"] == 2  # CoLA's default N
    rows = read_tsv(tmp_path / "glue" / "CoLA" / "train_aug.tsv")
    assert all(len(r) == 4 for r in rows)
    for original, group in zip(cola, groups(cola, rows)):
        assert group[0] == original and len(group) > 1
        assert all(r[:3] == original[:3] for r in group)


# ---------------------------------------------------------------- bad input and the script


def test_missing_inputs_are_named_with_exit_status_2(tmp_path, mlm_dir, glove_file, capsys, caplog):
    glue = sst2_dir(tmp_path)
    base = {"--pretrained_model": mlm_dir, "--glove_embs": glove_file, "--glue_dir": glue, "--task_name": "SST-2"}
    cases = [
        ("--glove_embs", tmp_path / "no_glove.txt", "no_glove.txt does not exist"),
        ("--pretrained_model", tmp_path / "no_model", "no_model does not exist"),
        ("--glue_dir", tmp_path / "no_glue", str(tmp_path / "no_glue" / "SST-2" / "train.tsv")),
        ("--pretrained_model", ROOT / "tests" / "fixtures" / "hf_tiny_cls_safetensors", "masked-LM head"),
        ("--task_name", "SST3", "unknown task 'SST3'"),
    ]
    for flag, value, message in cases:
        caplog.clear()
        argv = [str(x) for k, v in {**base, flag: value}.items() for x in (k, v)]
        assert cli_main(["augment", *argv]) == 2, flag
        assert message in caplog.text, (flag, caplog.text)
    assert not (glue / "SST-2" / "train_aug.tsv").exists()
    assert cli_main(["augment", "--task_name", "SST-2"]) == 2  # argparse: required flags
    assert cli_main(["augment", *[str(x) for k, v in base.items() for x in (k, v)], "--p", "1.5"]) == 2


def test_script_prints_usage_on_h(tmp_path):
    result = run(["bash", str(SCRIPT), "-h"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: bash scripts/run_data_augmentation.sh [TASK]")
    assert "PRETRAINED_MODEL" in result.stdout and "GLOVE_EMB" in result.stdout and "GLUE_DIR" in result.stdout


def test_script_names_a_missing_glove_file_and_exits_2(tmp_path, mlm_dir):
    glue = sst2_dir(tmp_path)
    missing = tmp_path / "glove" / "glove.840B.300d.txt"
    env = {"GLUE_DIR": str(glue), "PRETRAINED_MODEL": str(mlm_dir), "GLOVE_EMB": str(missing)}
    result = run(["bash", str(SCRIPT), "SST-2"], env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"GloVe file {missing} does not exist" in result.stderr
    assert not (glue / "SST-2" / "train_aug.tsv").exists()


def test_script_writes_train_aug(tmp_path, mlm_dir, glove_file):
    glue = sst2_dir(tmp_path)
    env = {"GLUE_DIR": str(glue), "PRETRAINED_MODEL": str(mlm_dir), "GLOVE_EMB": str(glove_file), "N": "4", "M": str(M)}
    result = run(["bash", str(SCRIPT), "SST-2", "--seed", "3"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["N"] == 4 and summary["M"] == M and summary["seed"] == 3 and summary["rows_in"] == len(SST2_ROWS)
    rows = read_tsv(glue / "SST-2" / "train_aug.tsv")
    assert len(rows) - 1 == summary["rows_out"] and all(len(g) <= 5 for g in groups(SST2_ROWS, rows[1:]))
