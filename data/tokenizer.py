"""Tiny byte-level BPE tokenizers trained on a synthetic world's own text.

A world's vocabulary is a few dozen words, so a 512-entry BPE makes every world word
(and the chat-template role markers) a single token: short sequences, fast training,
and answers that are one token, which keeps small-LM experiments cheap to read.
Byte-level means nothing is ever out of vocabulary and decode(encode(x)) == x.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from data.templates import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, ChatTemplate


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (+ chat-template strings) and save it to `out_dir`.

    Special tokens come first (`<pad>`=0, `<s>`=1, `</s>`=2, `<image>`=3) and are never
    split. No post-processor: callers add BOS/EOS themselves, exactly where they want them.
    The result loads offline with `transformers.AutoTokenizer.from_pretrained(out_dir)`
    and exposes `image_token` / `image_token_id`.
    """
    min_size = 256 + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < min_size:
        raise ValueError(f"vocab_size must be an integer >= {min_size} (bytes + special tokens), got {vocab_size!r}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(chain(ChatTemplate().corpus_strings(), texts), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    return fast
