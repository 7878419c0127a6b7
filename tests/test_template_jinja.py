"""Our templates as Jinja chat_templates (what an export writes) and the reverse choice an import
makes from a released model's Jinja template."""

from __future__ import annotations

import pytest

from data.template_jinja import adds_bos, jinja_chat_template, template_for_chat_template
from data.templates import ChatTemplate
from data.tokenize import tokenize_segments
from tests.offline_tokenizers import CHATML, llama2_style

CONVERSATION = [{"from": "human", "value": "<image>\nWhat's \"this\"?"}, {"from": "gpt", "value": "A red circle."},
                {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "Two"}]
# llava-hf/llava-1.5-7b-hf's chat_template.json: LLaVA-1.5's layout without its system prompt
LLAVA_HF = ("{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
            "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
            "{{ '<image>\n' }}{% endfor %}{% if message['role'] != 'assistant' %}{% for content in "
            "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
            "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return llama2_style()


def as_messages(conversation: list[dict]) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t["value"]} for i, t in enumerate(conversation)]


@pytest.mark.parametrize("template", [ChatTemplate.named("vicuna_v1"), ChatTemplate()], ids=["vicuna_v1", "default"])
def test_jinja_renders_our_text_and_ids(tok, template):
    jinja = jinja_chat_template(template)
    text = tok.apply_chat_template(as_messages(CONVERSATION), chat_template=jinja, tokenize=False)
    assert text == template.render(CONVERSATION)
    prompt = tok.apply_chat_template(as_messages(CONVERSATION[:1]), chat_template=jinja, tokenize=False,
                                     add_generation_prompt=True)
    ours = template.segments(CONVERSATION[:1], add_generation_prompt=True)
    assert prompt == "".join(s.text for s in ours)
    assert tok(prompt)["input_ids"] == tokenize_segments(ours, tok)[0]  # BOS from the tokenizer, as ours adds it


def test_jinja_vicuna_v1_values(tok):
    jinja = jinja_chat_template(ChatTemplate.named("vicuna_v1"))
    parts = [{"type": "image"}, {"type": "text", "text": "What is it?"}]  # transformers' message parts
    text = tok.apply_chat_template([{"role": "user", "content": parts}], chat_template=jinja, tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT:")
    assert len(tok(text)["input_ids"]) > len(tok("USER: <image>\nWhat is it? ASSISTANT:")["input_ids"]) + 20
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(own_system, chat_template=jinja, tokenize=False) == "Be brief. USER: Hi ASSISTANT:"


def test_bos_is_rendered_only_for_tokenizers_that_add_none(tok):
    from tests.offline_tokenizers import qwen2_style

    assert adds_bos(tok) and not adds_bos(qwen2_style())
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   chat_template=jinja_chat_template(ChatTemplate(), with_bos=True))
    assert text == "<s>USER: Hi ASSISTANT:"


def test_jinja_plain(tok):
    template = ChatTemplate.named("plain")
    conversation = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A cat."}]
    text = tok.apply_chat_template(as_messages(conversation), chat_template=jinja_chat_template(template), tokenize=False)
    assert text == template.render(conversation) == "<image>A cat.\n"


def test_import_choice_is_read_from_the_template_text(tok):
    assert template_for_chat_template(tok, None)[0] == {"name": "vicuna_v1"}
    assert template_for_chat_template(tok, LLAVA_HF)[0] == {"name": "vicuna_v1"}
    assert template_for_chat_template(tok, jinja_chat_template(ChatTemplate.named("vicuna_v1")))[0] == {"name": "vicuna_v1"}
    with_bos = jinja_chat_template(ChatTemplate.named("vicuna_v1"), with_bos=True)
    assert template_for_chat_template(tok, with_bos)[0] == {"name": "vicuna_v1"}
    assert template_for_chat_template(tok, CHATML)[0] == {"name": "chat_template"}
    assert template_for_chat_template(tok, jinja_chat_template(ChatTemplate.named("plain")))[0] == {"name": "chat_template"}
