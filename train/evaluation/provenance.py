"""Content hashes recorded in results.json, so a score names exactly the weights and data behind it."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def content_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; of a folder (a release, a save_to_disk dataset): of each file's
    relative path and bytes, in sorted order, so a renamed or edited file changes it."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if f is not path:
            digest.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
