"""Real-format shard fixtures for the reader tests: solid-colour images encoded as JPEG / PNG / WebP
by PIL, tar shards written with webdataset's TarWriter, and a word-level tokenizer whose ids can be
written down by hand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from webdataset import TarWriter

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|endofchunk|>"]
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def image_bytes(colour: str, fmt: str = "JPEG", size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), COLOURS[colour]).save(buf, format=fmt)
    return buf.getvalue()


def colour_of(pixels: torch.Tensor) -> str:
    """The named colour nearest to a (3, 1, 1) pixel from `mean_colour`."""
    rgb = pixels.flatten().numpy()
    return min(COLOURS, key=lambda c: float(np.abs(rgb - np.array(COLOURS[c])).sum()))


def mean_colour(image: Image.Image) -> torch.Tensor:
    """A transform that keeps only the image's mean colour, (3, 1, 1), so tests can tell images apart."""
    return torch.tensor(np.asarray(image, dtype=np.float32).mean((0, 1))).view(3, 1, 1)


def write_tar(path: Path, samples: list[dict]) -> str:
    """samples: {"__key__": ..., extension: bytes} -> one shard; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        writer = TarWriter(f, encoder=False, mtime=0.0)
        for sample in samples:
            writer.write(sample)
        writer.close()
    return str(path)


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """One id per word or punctuation mark: id = SPECIALS + words order."""
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>", "<|endofchunk|>"])


def ids_of(tok: PreTrainedTokenizerFast, tokens: str) -> list[int]:
    """Space-separated token strings -> ids, straight from the vocabulary (no tokenizer run)."""
    vocab = tok.get_vocab()
    return [vocab[t] for t in tokens.split()]
