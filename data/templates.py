"""One chat-template definition: the single source of prompt text AND label masks.

LLaVA hand-writes a label-masking routine per template and then checks lengths against
the tokenizer ("tokenization mismatch"). Here a conversation becomes an ordered list of
segments, each flagged as a training target or not; tokenizing segment by segment makes
the label mask correct by construction, and the generation prompt is the same segment
list cut before the last answer.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool  # True: the model is trained to produce these tokens


@dataclass(frozen=True)
class ChatTemplate:
    """Vicuna-v1 style by default (LLaVA-1.5): `{system} USER: {q} ASSISTANT: {a}</s>`."""

    system: str = ""
    user_prefix: str = "USER: "
    user_suffix: str = " "
    assistant_prefix: str = "ASSISTANT: "
    assistant_suffix: str = EOS_TOKEN

    def segments(self, conversations: list[dict], add_generation_prompt: bool = False) -> list[Segment]:
        """LLaVA `conversations` ([{"from", "value"}, ...]) -> ordered segments.

        Turns must alternate human/assistant starting with human. With
        `add_generation_prompt`, the list ends with the assistant prefix (for generate).
        """
        segs: list[Segment] = []
        if self.system:
            segs.append(Segment(self.system + " ", False))
        for i, turn in enumerate(conversations):
            role, value = turn.get("from"), turn.get("value")
            expected = HUMAN_ROLES if i % 2 == 0 else ASSISTANT_ROLES
            if role not in expected or not isinstance(value, str):
                raise ValueError(
                    f"turn {i} must be a {'human' if i % 2 == 0 else 'gpt'} turn with a string value, got {turn!r}"
                )
            if i % 2 == 0:
                segs.append(Segment(self.user_prefix + value + self.user_suffix + self.assistant_prefix, False))
            else:
                segs.append(Segment(value + self.assistant_suffix, True))
        if add_generation_prompt and (not conversations or len(conversations) % 2 == 0):
            raise ValueError("a generation prompt needs a conversation ending with a human turn")
        return segs

    def prompt_text(self, question: str, image: bool = True) -> list[Segment]:
        """Single-turn generation prompt for a question (with `<image>` first when `image`)."""
        value = f"{IMAGE_TOKEN}\n{question}" if image and IMAGE_TOKEN not in question else question
        return self.segments([{"from": "human", "value": value}], add_generation_prompt=True)

    def corpus_strings(self) -> list[str]:
        """Template text a tokenizer must have seen (so role markers tokenize compactly)."""
        return [s for s in (self.system, self.user_prefix, self.assistant_prefix) if s]
