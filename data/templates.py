"""One chat-template definition: the single source of prompt text AND of which characters are targets.

LLaVA hand-writes a label-masking routine per template and then checks lengths against the
tokenizer ("tokenization mismatch"). Here a template renders a conversation to an ordered list
of text segments, each flagged as a training target or not. The segments are joined and
tokenized ONCE (`data.tokenize`), so ids equal what any other stack gets for the same text, and
the label mask comes from the character spans of the target segments.

A target segment is everything the model must produce after the generation prompt: for
`vicuna_v1` that is " {answer}</s>" (the space after "ASSISTANT:" belongs to the answer, as the
tokenizer attaches it to the answer's first word), so a generation prompt is exactly the text
before a target and its ids are a prefix of the conversation's ids.

Templates by name (`ChatTemplate.named(name)`, or `template: {name: ...}` in a config):
- `vicuna_v1`: LLaVA-1.5 (`conv_vicuna_v1`): "{system} USER: {q} ASSISTANT: {a}</s>USER: ...".
- `plain`: LLaVA's pretraining (`preprocess_plain`): the human turn's images, then the caption
  + "\n"; the instruction text is dropped and only the caption is a target.
- `chat_template`: the tokenizer's own Jinja `chat_template` (`data.hf_chat_template`).
The default `ChatTemplate()` is `vicuna_v1` without a system prompt (the synthetic worlds').
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN]

HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def with_image_placeholders(text: str, images: int) -> str:
    """`text` as it is when it places its own `<image>`s, else with one `<image>` line per image
    before it (LLaVA's convention for records that do not say where their images go)."""
    return text if IMAGE_TOKEN in text else (IMAGE_TOKEN + "\n") * images + text


LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")

Style = Literal["roles", "plain", "chat_template"]
TemplateName = Literal["vicuna_v1", "plain", "chat_template"]


@dataclass(frozen=True)
class Segment:
    text: str
    target: bool  # True: the model is trained to produce these characters' tokens


def check_turns(conversations: list[dict], add_generation_prompt: bool = False) -> None:
    """Turns alternate human/assistant from a human turn; a generation prompt ends on a human turn."""
    for i, turn in enumerate(conversations):
        role, value = turn.get("from"), turn.get("value")
        if role not in (HUMAN_ROLES if i % 2 == 0 else ASSISTANT_ROLES) or not isinstance(value, str):
            raise ValueError(
                f"turn {i} must be a {'human' if i % 2 == 0 else 'gpt'} turn with a string value, got {turn!r}"
            )
    if add_generation_prompt and len(conversations) % 2 == 0:
        raise ValueError("a generation prompt needs a conversation ending with a human turn")


@dataclass(frozen=True)
class ChatTemplate:
    """How conversations become text; the fields mirror LLaVA's `Conversation`.

    style: `roles` ("{system}{sep}{USER}: {q}{sep}{ASSISTANT}: {a}{sep2}" per turn, the system
    part omitted when empty), `plain` (images + answer + sep2) or `chat_template`.
    name: a named template; its fields fill the others (any also given must agree with it).
    """

    name: TemplateName | None = None
    style: Style = "roles"
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = EOS_TOKEN

    def __post_init__(self) -> None:
        if self.name is None:
            return
        if self.name not in NAMED:
            raise ValueError(f"unknown template name {self.name!r}; choose one of {sorted(NAMED)}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in NAMED[self.name].items():
            given = getattr(self, key)
            if given not in (defaults[key], value):
                raise ValueError(f"template {self.name!r} has {key}={value!r}; got {key}={given!r}")
            object.__setattr__(self, key, value)

    @classmethod
    def named(cls, name: TemplateName) -> ChatTemplate:
        return cls(name=name)

    @property
    def renders_bos(self) -> bool:
        """Whether the rendered text may carry its own BOS (a tokenizer's chat_template may write it;
        `data.tokenize.adds_bos_before` decides)."""
        return self.style == "chat_template"

    def segments(self, conversations: list[dict], add_generation_prompt: bool = False,
                 tokenizer: PreTrainedTokenizerBase | None = None) -> list[Segment]:
        """LLaVA `conversations` ([{"from", "value"}, ...]) -> ordered segments.

        With `add_generation_prompt` the conversation ends with a human turn and the text ends
        where the answer would start. `tokenizer` is needed by the `chat_template` style only.
        """
        check_turns(conversations, add_generation_prompt)
        if self.style == "chat_template":
            if tokenizer is None:
                raise ValueError("the chat_template style renders with the tokenizer: pass `tokenizer`")
            from data.hf_chat_template import chat_template_segments
            return chat_template_segments(conversations, tokenizer, self.system, add_generation_prompt)
        if self.style == "plain":
            return self._plain(conversations)
        return self._roles(conversations)

    def _roles(self, conversations: list[dict]) -> list[Segment]:
        user, assistant = self.roles
        segs = [Segment(self.system + self.sep, False)] if self.system else []
        for i, turn in enumerate(conversations):
            if i % 2 == 0:
                segs.append(Segment(f"{user}: {turn['value']}{self.sep}{assistant}:", False))
            else:
                segs.append(Segment(f" {turn['value']}{self.sep2}", True))
        return segs

    def _plain(self, conversations: list[dict]) -> list[Segment]:
        if len(conversations) > 2:
            raise ValueError(f"the plain template takes one human and one gpt turn, got {len(conversations)} turns")
        segs = [Segment(IMAGE_TOKEN * conversations[0]["value"].count(IMAGE_TOKEN), False)]
        if len(conversations) == 2:
            segs.append(Segment(conversations[1]["value"] + self.sep2, True))
        return segs

    def prompt_text(self, question: str, image: bool = True,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> list[Segment]:
        """Single-turn generation prompt for a question (with `<image>` first when `image`)."""
        value = with_image_placeholders(question, int(image))
        return self.segments([{"from": "human", "value": value}], add_generation_prompt=True, tokenizer=tokenizer)

    def render(self, conversations: list[dict], tokenizer: PreTrainedTokenizerBase | None = None) -> str:
        """The conversation's text, exactly as it is tokenized."""
        return "".join(s.text for s in self.segments(conversations, tokenizer=tokenizer))

    def corpus_strings(self) -> list[str]:
        """Template text a tokenizer must have seen (so role markers tokenize compactly)."""
        if self.style != "roles":
            return [self.system] if self.system else []
        return [s for s in (self.system, f"{self.roles[0]}:", f" {self.roles[1]}:") if s]


NAMED: dict[str, dict] = {
    "vicuna_v1": {"style": "roles", "system": LLAVA_SYSTEM, "roles": ("USER", "ASSISTANT"), "sep": " ",
                  "sep2": EOS_TOKEN},
    "plain": {"style": "plain", "system": "", "sep2": "\n"},
    "chat_template": {"style": "chat_template"},
}
