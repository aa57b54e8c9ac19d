"""Small file helpers: atomic JSON, atomic folder replacement, checksums, reading a folder's config.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from distil.errors import UsageError


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temporary name in the same folder, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def replace_dir(staged: Path, final: Path) -> None:
    """Move a complete folder into place; an older one is swapped out first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config_json(folder: str | Path, kind: str, not_one: str) -> dict[str, Any]:
    """<folder>/config.json, with errors naming the folder: missing (`kind` says what it should be), no
    config.json (`not_one` follows the folder's name), or not valid JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{kind} {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise UsageError(f"{folder}{not_one}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None


def text_lines(path: str | Path, stream: IO[bytes] | None = None, keep_bom: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without its line end) of a UTF-8 text file, or of a byte `stream` named `path`.

    Only '\\n' ends a line ('\\r' before it is dropped; text may hold a lone '\\r' or Unicode line separators); a
    byte-order mark opening the file is dropped unless `keep_bom`. A line that is not UTF-8 stops with a usage
    error naming file, line and byte, before anything of it is used.
    """
    handle = stream if stream is not None else open(path, "rb")
    try:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf") and not keep_bom:
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} "
                    "of the line); save the file as UTF-8"
                ) from None
            yield number, line.rstrip("\n").rstrip("\r")
    finally:
        if stream is None:
            handle.close()
