"""Our named templates as Jinja `chat_template`s, and which of ours a released Jinja template is.

An export writes `jinja_chat_template(template)` into the tokenizer and processor, so HF users'
`apply_chat_template` renders the text our template renders. Our tokenization adds BOS; the Jinja
template writes `{{ bos_token }}` first only for a tokenizer that adds none itself (`with_bos`), so
`processor(text=...)` gives our ids either way. Messages may hold a string (LLaVA's "<image>\\n..." text) or
transformers' list of parts (`{"type": "image"}` / `{"type": "text", "text": ...}`): images
first, each "<image>\\n", then the text. A leading system message replaces the template's.

`template_for_chat_template` reads the other direction, from data: a Jinja template whose
generation prompt for an image question is laid out as LLaVA-1.5's (`USER: <image>\\n... ASSISTANT:`,
with or without the system prompt; llava-hf's releases drop it) is `vicuna_v1`, the format
LLaVA-1.5 was trained and evaluated with; any other is used as it is (`chat_template`).
"""

from __future__ import annotations

import json

from data.templates import ChatTemplate

_CONTENT = (
    "{%- macro content(c) -%}"
    "{%- if c is string -%}{{ c }}"
    "{%- else -%}"
    "{%- for p in c if p['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for p in c if p['type'] == 'text' -%}{{ p['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
_IMAGES = ("{%- if c is string -%}{{ '<image>' * c.count('<image>') }}"
           "{%- else -%}{{ '<image>' * (c | selectattr('type', 'equalto', 'image') | list | length) }}{%- endif -%}")


def _literal(text: str) -> str:
    """A Jinja string literal (Jinja unescapes literals as Python's unicode-escape, which JSON's
    ASCII escapes are a subset of)."""
    return json.dumps(text)


def adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` starts with BOS by itself (Llama's do; a bare BPE tokenizer does not)."""
    return tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]


def jinja_chat_template(template: ChatTemplate, with_bos: bool = False) -> str:
    """A Jinja `chat_template` that renders what `template.render` / `template.prompt_text` do,
    after `{{ bos_token }}` when `with_bos`."""
    if template.style == "chat_template":
        raise ValueError("the chat_template style already is the tokenizer's own Jinja template")
    return ("{{ bos_token }}" if with_bos else "") + _body(template)


def _body(template: ChatTemplate) -> str:
    if template.style == "plain":
        return ("{%- for m in messages if m['role'] != 'system' -%}{%- set c = m['content'] -%}"
                "{%- if m['role'] == 'user' -%}" + _IMAGES +
                "{%- else -%}{%- for p in ([c] if c is string else (c | selectattr('type', 'equalto', 'text') "
                "| map(attribute='text') | list)) -%}{{ p }}{%- endfor -%}{{ " + _literal(template.sep2) + " }}"
                "{%- endif -%}{%- endfor -%}")
    user, assistant = template.roles
    sep, sep2 = _literal(template.sep), _literal(template.sep2)
    return (
        _CONTENT
        + "{%- set ns = namespace(system=" + _literal(template.system) + ") -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = content(messages[0]['content']) -%}"
        "{%- endif -%}"
        "{%- if ns.system -%}{{ ns.system }}{{ " + sep + " }}{%- endif -%}"
        "{%- for m in messages if m['role'] != 'system' -%}"
        "{%- if m['role'] == 'user' -%}{{ " + _literal(user + ": ") + " }}{{ content(m['content']) }}{{ " + sep
        + " }}{{ " + _literal(assistant + ":") + " }}"
        "{%- else -%}{{ ' ' }}{{ content(m['content']) }}{{ " + sep2 + " }}"
        "{%- endif -%}{%- endfor -%}"
    )


PROBE_QUESTION = "What is shown?"


def _probe_prompts(tokenizer, chat_template: str) -> list[str]:
    """The source template's generation prompt for one image question, with string and list content
    (a leading BOS dropped)."""
    from jinja2 import TemplateError

    out = []
    for content in (f"<image>\n{PROBE_QUESTION}", [{"type": "image"}, {"type": "text", "text": PROBE_QUESTION}]):
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=chat_template,
                                                 tokenize=False, add_generation_prompt=True)
        except (TemplateError, TypeError, KeyError):
            continue
        out.append(text.removeprefix(tokenizer.bos_token or ""))
    return out


def template_for_chat_template(tokenizer, chat_template: str | None) -> tuple[dict, str]:
    """`({"name": ...}, reason)`: the template to use with a released model's Jinja template."""
    if not chat_template:
        return {"name": "vicuna_v1"}, "no chat_template in the source: LLaVA-1.5's vicuna_v1"
    llava = ChatTemplate.named("vicuna_v1")
    layouts = {"".join(s.text for s in t.prompt_text(PROBE_QUESTION)) for t in (llava, ChatTemplate())}
    if layouts & set(_probe_prompts(tokenizer, chat_template)):
        return {"name": "vicuna_v1"}, ("the source chat_template lays out turns as LLaVA-1.5's vicuna_v1 "
                                       "(USER: ... ASSISTANT:): vicuna_v1, with its system prompt")
    return {"name": "chat_template"}, "the source's own chat_template"
