"""Small file helpers every writer shares: atomic JSON, atomic folder replacement, checksums."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


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
