"""Writing helpers shared by the synthetic worlds, so every world emits the same formats.

Everything here is byte-deterministic (no timestamps, fixed key order) so that the
same seed reproduces identical files, which the determinism tests rely on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from webdataset import TarWriter

from data.templates import IMAGE_TOKEN, ChatTemplate

STREAMS = ("train", "val", "probes", "preferences-train", "preferences-val", "documents-train", "documents-val",
           "render-train", "render-val")  # append only: seeds stay stable


CAPTION_PROMPT = "Describe the image."  # every world's caption turn, and `chimera eval`'s caption prompt


@dataclass(frozen=True)
class QA:
    """One question with its answer and question type (used by every world)."""

    question: str
    answer: str
    type: str


def check_positive(name: str, value: int) -> int:
    """Reject non-integer or < 1 counts with an error naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def stream_rng(seed: int, stream: str) -> np.random.Generator:
    """Independent random stream per split/purpose: changing train_images leaves val unchanged."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), STREAMS.index(stream)])


def image_relpath(split: str, index: int) -> str:
    """Image path relative to the dataset root (what the json files store)."""
    return f"images/{split}/{index:06d}.png"


def record_id(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 array as PNG (PIL writes no timestamps, so this is stable)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: Path) -> bytes:
    """Write the PNG and return its bytes (for shards that hold the same image)."""
    png = png_bytes(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return png


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line; returns the number of lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def llava_record(rid: str, image: str, qas: Sequence[QA]) -> dict:
    """LLaVA conversation record; only the first human turn carries the image token.

    The extra `types` key lists each turn pair's question type (LLaVA readers ignore it).
    """
    if not qas:
        raise ValueError(f"record {rid} needs at least one question")
    conversations: list[dict] = []
    for i, qa in enumerate(qas):
        value = f"{IMAGE_TOKEN}\n{qa.question}" if i == 0 else qa.question
        conversations.append({"from": "human", "value": value})
        conversations.append({"from": "gpt", "value": qa.answer})
    return {"id": rid, "image": image, "conversations": conversations, "types": [qa.type for qa in qas]}


def caption_record(rid: str, image: str, caption: str, prompt: str = CAPTION_PROMPT) -> dict:
    """A one-turn LLaVA record: `prompt` about the image -> `caption` (question type "caption")."""
    return llava_record(rid, image, [QA(prompt, caption, "caption")])


def qa_rows(split: str, index: int, qas: Sequence[QA]) -> list[dict]:
    """Flat per-question evaluation rows (`val_qa.jsonl`), ids `{split}-{index}-{k}`."""
    rid, image = record_id(split, index), image_relpath(split, index)
    return [
        {"id": f"{rid}-{k:02d}", "image": image, "question": qa.question, "answer": qa.answer, "type": qa.type}
        for k, qa in enumerate(qas)
    ]


def qa_texts(records: Iterable[dict]) -> Iterable[str]:
    """Tokenizer training text: each conversation as the default template renders it, split at
    its images as the tokenizer splits text at added tokens. Whole-text tokenization puts an
    answer's leading space inside its first token ("ASSISTANT: yes" -> " yes"), so the tokenizer
    learns words in that context."""
    template = ChatTemplate()
    for rec in records:
        yield from template.render(rec["conversations"]).split(IMAGE_TOKEN)


def write_shards(pattern_dir: Path, prefix: str, samples: Iterable[dict], shard_size: int) -> list[Path]:
    """Write webdataset tar shards `{prefix}-000000.tar`, ... of `shard_size` samples each.

    `samples` hold `__key__` plus extension -> bytes. mtime is fixed at 0 so the tars
    are reproducible (webdataset defaults to the wall clock).
    """
    check_positive("shard_size", shard_size)
    pattern_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    writer: TarWriter | None = None
    handle = None
    try:
        for i, sample in enumerate(samples):
            if i % shard_size == 0:
                if writer is not None:
                    writer.close()
                    handle.close()
                paths.append(pattern_dir / f"{prefix}-{len(paths):06d}.tar")
                handle = paths[-1].open("wb")
                writer = TarWriter(handle, encoder=False, mtime=0.0)
            writer.write(sample)
    finally:
        if writer is not None:
            writer.close()
            handle.close()
    return paths
