"""Conversation -> token ids and labels, segment by segment from one ChatTemplate."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from data.templates import ChatTemplate, Segment

IGNORE_INDEX = -100


def tokenize_segments(
    segments: list[Segment], tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> tuple[list[int], list[int]]:
    """BOS + each segment's ids; labels copy target segments and are IGNORE_INDEX elsewhere.

    Truncation keeps the head but never cuts through an image placeholder.
    """
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for seg in segments:
        seg_ids = tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        ids += seg_ids
        labels += seg_ids if seg.target else [IGNORE_INDEX] * len(seg_ids)
    if max_length is not None and len(ids) > max_length:
        image_id = tokenizer.convert_tokens_to_ids("<image>")
        if image_id in ids[max_length:]:
            raise ValueError(f"max_length {max_length} would cut an <image> token (sequence has {len(ids)} tokens)")
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def tokenize_conversation(
    conversations: list[dict], tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    return tokenize_segments(template.segments(conversations), tokenizer, max_length)


def tokenize_prompt(question: str, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate,
                    image: bool = True) -> list[int]:
    """Generation prompt ids for a single-turn question (ends with the assistant prefix)."""
    ids, _ = tokenize_segments(template.prompt_text(question, image=image), tokenizer)
    return ids
