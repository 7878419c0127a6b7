"""Segments from a tokenizer's own Jinja `chat_template`, so released chat models see their own format.

The text is rendered once with `apply_chat_template(..., tokenize=False)`. A target starts where
the generation prompt for that answer ends (rendering the turns before it with
`add_generation_prompt=True`) and runs to the end of the answer's content plus the special token
that closes it (`<|im_end|>`, `<|eot_id|>`, `</s>`) when the template writes one right after it
(rendering the turns up to that answer tells where its turn ends).

Message content is a string ("<image>\nWhat is ...") for a template that writes it as it is
(ChatML-style text templates), or transformers' list of parts (`{"type": "image"}` per `<image>`,
then `{"type": "text", ...}`) for a multimodal template that reads parts (llava-hf's): the one that
would silently drop a string's text is given parts.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerBase

from data.templates import IMAGE_TOKEN, Segment


def messages(conversations: list[dict], system: str = "", parts: bool = False) -> list[dict]:
    """LLaVA turns -> chat messages (`role`/`content`), with an optional system message first;
    `parts`: content as transformers' list of parts (images first, as LLaVA's "<image>\n" prefix)."""
    out = [{"role": "system", "content": system}] if system else []
    out += [{"role": "user" if i % 2 == 0 else "assistant", "content": t["value"]} for i, t in enumerate(conversations)]
    return [{**m, "content": content_parts(m["content"])} for m in out] if parts else out


def content_parts(value: str) -> list[dict]:
    """"<image>\nWhat is ..." -> [{"type": "image"}, {"type": "text", "text": "What is ..."}]."""
    images = value.count(IMAGE_TOKEN)
    text = value.replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "")
    return [{"type": "image"}] * images + ([{"type": "text", "text": text}] if text else [])


def text_of(content: str | list[dict]) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


_PROBE = "Is the probe text rendered?"


def takes_parts(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat_template reads content as a list of parts: it drops a string content's text."""
    return _PROBE not in render(tokenizer, [{"role": "user", "content": _PROBE}], add_generation_prompt=True)


def end_token_pattern(tokenizer: PreTrainedTokenizerBase) -> re.Pattern:
    """Optional whitespace then one of the tokenizer's special tokens (longest first)."""
    specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special}, key=len, reverse=True)
    return re.compile(r"\s*(?:" + "|".join(map(re.escape, specials)) + ")") if specials else re.compile(r"(?!)")


def render(tokenizer: PreTrainedTokenizerBase, msgs: list[dict], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the chat_template style needs a tokenizer with a `chat_template`")
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_template_segments(conversations: list[dict], tokenizer: PreTrainedTokenizerBase, system: str = "",
                           add_generation_prompt: bool = False) -> list[Segment]:
    msgs = messages(conversations, system, parts=takes_parts(tokenizer))
    full = render(tokenizer, msgs, add_generation_prompt)
    closing = end_token_pattern(tokenizer)
    segs, cursor = [], 0
    for k, msg in enumerate(msgs):
        if msg["role"] != "assistant":
            continue
        prompt = render(tokenizer, msgs[:k], add_generation_prompt=True)
        if not full.startswith(prompt) or len(prompt) < cursor:
            raise ValueError("this chat_template renders earlier turns differently once later turns follow, "
                             "so answers cannot be located in the text")
        answer = text_of(msg["content"])
        at = full.find(answer, len(prompt))
        if at < 0:
            raise ValueError(f"assistant turn {k} content not found in the rendered chat_template text")
        end = at + len(answer)
        # the closing token is searched for in this turn's own text only, never the next turn's start
        turn = render(tokenizer, msgs[:k + 1], add_generation_prompt=False)
        found = closing.match(full, end, len(turn) if full.startswith(turn) else len(full))
        end = found.end() if found else end
        segs += [Segment(full[cursor:len(prompt)], False), Segment(full[len(prompt):end], True)]
        cursor = end
    segs.append(Segment(full[cursor:], False))
    return [s for s in segs if s.text]
