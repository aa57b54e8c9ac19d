"""Small file helpers: atomic JSON, atomic folder replacement, checksums, reading a folder's config.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Union

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


def read_config_json(folder: Union[str, Path], kind: str, not_one: str) -> Dict[str, Any]:
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
