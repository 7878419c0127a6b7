"""Conversation -> token ids and labels: render once, tokenize once, mask by character offsets.

Tokenizing segment by segment adds lone space tokens at segment starts (SentencePiece's `▁`,
byte-level BPE's `Ġ`) that no other stack produces. Here the segments' text is joined and
tokenized in one call, and a token is a target iff its character span (from the fast tokenizer's
`offset_mapping`) overlaps a target segment's span; so ids equal `tokenizer(text)` and released
models see the prompts they were trained on.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from data.templates import IMAGE_TOKEN, ChatTemplate, Segment

IGNORE_INDEX = -100


class Unfit(ValueError):
    """A sample that cannot be trained on: truncation would cut an image, or leaves no target."""


def target_mask(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """(n,) bool: which tokens' (start, end) character spans overlap one of the sorted, disjoint
    target `spans` ((m, 2) start/end). A zero-width token counts where it starts."""
    if len(spans) == 0 or len(offsets) == 0:
        return np.zeros(len(offsets), dtype=bool)
    starts, ends = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1)
    k = np.searchsorted(spans[:, 1], starts, side="right")  # the first span ending after the token starts
    inside = k < len(spans)
    hit = np.zeros(len(offsets), dtype=bool)
    hit[inside] = spans[k[inside], 0] < ends[inside]
    return hit


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """`<image>`'s id when the tokenizer has it as one added token, else None."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


def truncate(ids: list[int], labels: list[int], max_length: int, image_id: int | None,
             image_tokens: int | list[int] = 1) -> tuple[list[int], list[int]]:
    """The head that fits `max_length` LM positions, each `<image>` counting as the `image_tokens`
    positions it widens to (one count for all, or one per image in reading order, any-resolution);
    raises Unfit rather than cut an image."""
    width = np.ones(len(ids), dtype=np.int64)
    if image_id is not None:
        is_image = np.asarray(ids, dtype=np.int64) == image_id
        if not isinstance(image_tokens, int) and len(image_tokens) != int(is_image.sum()):
            raise ValueError(f"{len(image_tokens)} image widths for {int(is_image.sum())} {IMAGE_TOKEN} tokens")
        width[is_image] = image_tokens
    keep = int(np.searchsorted(np.cumsum(width), max_length, side="right"))
    if keep < len(ids) and image_id is not None and image_id in ids[keep:]:
        raise Unfit(f"max_length {max_length} would cut an {IMAGE_TOKEN} "
                    f"(the sequence takes {int(width.sum())} positions with {image_tokens} per image)")
    return ids[:keep], labels[:keep]


def tokenize_segments(
    segments: list[Segment], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None,
    add_bos: bool = True, image_tokens: int | list[int] = 1,
) -> tuple[list[int], list[int]]:
    """[BOS] + ids of the joined text; labels copy the ids of tokens inside target segments and are
    IGNORE_INDEX elsewhere. `add_bos`: `adds_bos_before` (False when a chat_template wrote it).

    Truncation keeps the head and never cuts an image (Unfit).
    """
    if not tokenizer.is_fast:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer: label masks need its offsets")
    text = "".join(s.text for s in segments)
    image_id = image_token_id(tokenizer)
    if IMAGE_TOKEN in text and image_id is None:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token: add it as a special token")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bounds = np.cumsum([0] + [len(s.text) for s in segments])
    spans = np.array([(bounds[i], bounds[i + 1]) for i, s in enumerate(segments) if s.target and s.text],
                     dtype=np.int64).reshape(-1, 2)
    is_target = target_mask(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2), spans)
    ids = list(enc["input_ids"])
    labels = [i if t else IGNORE_INDEX for i, t in zip(ids, is_target.tolist())]
    if add_bos and tokenizer.bos_token_id is not None:
        ids, labels = [tokenizer.bos_token_id] + ids, [IGNORE_INDEX] + labels
    if max_length is not None:
        ids, labels = truncate(ids, labels, max_length, image_id, image_tokens)
    return ids, labels


def adds_bos_before(segments: list[Segment], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> bool:
    """Whether BOS goes before the rendered text. Our templates never write it: always. A tokenizer's
    chat_template: as transformers' processors tokenize its text (`processor(text=...)`, what
    `apply_chat_template(tokenize=True)` of a LLaVA processor does): the tokenizer's own special
    tokens unless the text already starts with BOS, so only a tokenizer that adds BOS itself gets one."""
    if not template.renders_bos:
        return True
    from data.template_jinja import adds_bos

    text = "".join(s.text for s in segments)
    return adds_bos(tokenizer) and not (tokenizer.bos_token and text.startswith(tokenizer.bos_token))


def tokenize_conversation(
    conversations: list[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
    max_length: int | None = None, image_tokens: int | list[int] = 1,
) -> tuple[list[int], list[int]]:
    """Training ids and labels; raises Unfit when no target token is left (an all-masked sample
    would make the loss NaN) or an image would be cut."""
    segments = template.segments(conversations, tokenizer=tokenizer)
    ids, labels = tokenize_segments(segments, tokenizer, max_length, adds_bos_before(segments, tokenizer, template),
                                    image_tokens)
    if all(lab == IGNORE_INDEX for lab in labels):
        raise Unfit(f"no target token left (max_length {max_length}, {len(ids)} tokens)")
    return ids, labels


def tokenize_prompt(question: str, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                    image: bool = True) -> list[int]:
    """Generation prompt ids for a single-turn question: the conversation's ids up to the answer."""
    segments = template.prompt_text(question, image=image, tokenizer=tokenizer)
    return tokenize_segments(segments, tokenizer, add_bos=adds_bos_before(segments, tokenizer, template))[0]


def tokenize_generation_prompt(conversations: list[dict], tokenizer: PreTrainedTokenizerBase,
                               template: ChatTemplate) -> list[int]:
    """Ids for a conversation ending with a human turn (few-shot prompts), up to the next answer."""
    segments = template.segments(conversations, add_generation_prompt=True, tokenizer=tokenizer)
    return tokenize_segments(segments, tokenizer, add_bos=adds_bos_before(segments, tokenizer, template))[0]
