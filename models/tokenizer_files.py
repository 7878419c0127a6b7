"""A tokenizer as data: the text files `save_pretrained` writes, as `{file name: text}`.

A checkpoint that stores a tokenizer *path* fails on any machine without that folder, so a
checkpoint carries these files instead. Only the fast tokenizer's files are kept
(`tokenizer.json`, its config with the special tokens and `chat_template`): all text, so they
travel inside a `weights_only` checkpoint as plain strings, and they reload through
`AutoTokenizer.from_pretrained`, the same path as any tokenizer directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def tokenizer_to_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The fast tokenizer's files as `{name: text}`; a tokenizer without a fast form is refused,
    since its sentencepiece model would be binary."""
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: it cannot be stored as text "
                         "(load it with use_fast=True)")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp, legacy_format=False)
        return {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def write_tokenizer_files(files: dict[str, str], out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if Path(name).name != name:
            raise ValueError(f"tokenizer file name {name!r} is not a plain file name")
        (out / name).write_text(text, encoding="utf-8")


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerBase:
    """The tokenizer `tokenizer_to_files` described, through `AutoTokenizer.from_pretrained`."""
    if "tokenizer.json" not in files:
        raise ValueError(f"tokenizer data has no tokenizer.json (files: {sorted(files)})")
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(files, tmp)
        return AutoTokenizer.from_pretrained(tmp)
