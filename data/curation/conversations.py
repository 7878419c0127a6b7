"""Image-text shards -> LLaVA caption conversations, so curated (or noisy) shards can train a VLM.

Why: curation works on webdataset pairs, the VLM stages read LLaVA's conversation JSON. Each
kept pair becomes one single-turn record `<image>\\n{prompt}` -> caption, the caption copied
verbatim (noise included: that is the point of training on noisy data). Images are written
once under `out/images/`, shard by shard, so memory stays bounded by one shard.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from data.curation.shards import IMAGE_EXTS, expand, read_shard, sample_text
from data.writers import CAPTION_PROMPT, caption_record


def shards_to_llava(shards: str | Sequence[str], out: str | Path, prompt: str = CAPTION_PROMPT,
                    name: str = "train.json") -> dict:
    """Write `out/<name>` (LLaVA records, ids = sample keys) and `out/images/<key>.<ext>`.

    shards: a pattern (glob, brace pattern or directory, as `chimera curate --in`) or a list of them.
    Samples without an image are skipped and counted. Returns {json, samples, skipped, shards}.
    """
    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [u for p in patterns for u in expand(p)]
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, seen, skipped = [], set(), 0
    for url in urls:
        for s in read_shard(url):
            key = s["__key__"]
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext is None:
                skipped += 1
                continue
            if key in seen or "/" in key:
                raise ValueError(f"{url}: sample key {key!r} is repeated or contains '/'; "
                                 "keys must be unique file names across the converted shards")
            seen.add(key)
            rel = f"images/{key}.{ext}"
            (out / rel).write_bytes(s[ext])
            records.append(caption_record(key, rel, sample_text(s), prompt))
    path = out / name
    path.write_text(json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"json": str(path), "samples": len(records), "skipped": skipped, "shards": len(urls)}
