"""Shard I/O for curation: webdataset tars (`key.png|jpg` + `key.txt` [+ `key.json`]) and JSONL corpora.

A sample is a dict: `__key__`, `__shard__` (source file) and one bytes value per extension
(`png`, `txt`, `json`; a JSONL document is stored whole under `jsonl`). Bytes are written back
unchanged, so curation never re-encodes what it keeps. Tars are written with mtime 0 (as
`data.writers.write_shards`) so the same input and config reproduce identical files.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
TEXT_EXTS = (".tar", ".jsonl")


def expand(pattern: str) -> list[str]:
    """A glob (`shards/train-*.tar`), a brace pattern (`train-{000000..000003}.tar`), a directory
    (every .tar/.jsonl in it) or one file; sorted, each must exist."""
    if Path(pattern).is_dir():
        urls = sorted(str(p) for p in Path(pattern).iterdir() if p.suffix in TEXT_EXTS)
    elif "{" in pattern:
        from braceexpand import braceexpand

        urls = list(braceexpand(pattern))
    else:
        urls = sorted(glob.glob(pattern))
    missing = [u for u in urls if not Path(u).is_file()]
    if not urls or missing:
        raise FileNotFoundError(f"no shard files match {pattern!r}" + (f" (missing {missing[0]})" if missing else ""))
    return urls


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the base name, ext = the rest."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def read_shard(path: str | Path, text_field: str = "text") -> list[dict]:
    """All samples of one shard, in file order. A tar member that cannot be read is skipped."""
    path = str(path)
    samples: list[dict] = []
    if path.endswith(".jsonl"):
        stem = Path(path).name[:-len(".jsonl")]
        with open(path, "rb") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                key = str(row.get("id", f"{stem}-{i:06d}")) if isinstance(row, dict) else f"{stem}-{i:06d}"
                samples.append({"__key__": key, "__shard__": path, "jsonl": line.rstrip(b"\n"),
                                "__text__": row.get(text_field, "") if isinstance(row, dict) else str(row)})
        return samples
    index: dict[str, dict] = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            f = tar.extractfile(member)
            if f is None or not ext:
                continue
            if key not in index:
                index[key] = {"__key__": key, "__shard__": path}
                samples.append(index[key])
            index[key][ext] = f.read()
    return samples


def write_shard(path: str | Path, samples: Iterable[dict]) -> int:
    """Write samples in the format of `path` (.tar or .jsonl); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if path.suffix == ".jsonl":
        with path.open("wb") as f:
            for s in samples:
                f.write(s["jsonl"] + b"\n")
                n += 1
        return n
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext in sorted(k for k in s if not k.startswith("__")):
                data = s[ext]
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def sample_text(sample: dict) -> str:
    """The caption (`txt`) or the document text (JSONL field)."""
    if "__text__" in sample:
        return sample["__text__"]
    raw = sample.get("txt")
    return raw.decode("utf-8", errors="replace") if raw is not None else ""


def image_bytes(sample: dict) -> bytes | None:
    return next((sample[e] for e in IMAGE_EXTS if e in sample), None)


def sample_image(sample: dict) -> Image.Image | None:
    """Decoded RGB image, or None when the sample has none or it is corrupt."""
    raw = image_bytes(sample)
    if raw is None:
        return None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
        return image.convert("RGB")
    except Exception:
        return None
