"""Templates by name: typed config (`template: {name: ...}`), presets that cannot be half-overridden."""

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from data.templates import EOS_TOKEN, IMAGE_TOKEN, LLAVA_SYSTEM, ChatTemplate

CONV = [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat is it?"}, {"from": "gpt", "value": "A circle."}]


def parse(template: dict) -> ChatTemplate:
    parser = ArgumentParser()
    parser.add_argument("--template", type=ChatTemplate, default=ChatTemplate())
    return parser.instantiate(parser.parse_object({"template": template})).template


def test_a_name_in_config_selects_the_template_and_survives_a_dump():
    tpl = parse({"name": "vicuna_v1"})
    assert tpl == ChatTemplate.named("vicuna_v1")
    assert (tpl.style, tpl.system, tpl.roles, tpl.sep, tpl.sep2) == ("roles", LLAVA_SYSTEM, ("USER", "ASSISTANT"),
                                                                      " ", EOS_TOKEN)
    # a resolved config (as a checkpoint stores it) lists every field next to the name
    dumped = {k: getattr(tpl, k) for k in ("name", "style", "system", "sep", "sep2")}
    assert parse({**dumped, "roles": ["USER", "ASSISTANT"]}) == tpl


def test_a_field_that_contradicts_the_name_is_rejected():
    with pytest.raises(ValueError, match="sep2"):
        ChatTemplate(name="plain", sep2="###")
    assert ChatTemplate(name="plain", sep2="\n") == ChatTemplate.named("plain")


def test_rendered_texts():
    assert ChatTemplate().render(CONV) == f"USER: {IMAGE_TOKEN}\nWhat is it? ASSISTANT: A circle.</s>"
    assert ChatTemplate.named("vicuna_v1").render(CONV) == (
        f"{LLAVA_SYSTEM} USER: {IMAGE_TOKEN}\nWhat is it? ASSISTANT: A circle.</s>")
    assert ChatTemplate.named("plain").render(CONV) == f"{IMAGE_TOKEN}A circle.\n"
    segs = ChatTemplate().segments(CONV)
    assert [s.text for s in segs if s.target] == [" A circle.</s>"]


def test_plain_takes_one_exchange_and_chat_template_needs_the_tokenizer():
    with pytest.raises(ValueError, match="one human and one gpt turn"):
        ChatTemplate.named("plain").segments(CONV + CONV)
    with pytest.raises(ValueError, match="tokenizer"):
        ChatTemplate.named("chat_template").segments(CONV)


@pytest.mark.parametrize("config,name", [("pretrain", "plain"), ("finetune", "vicuna_v1"),
                                         ("finetune_lora", "vicuna_v1"), ("finetune_qlora", "vicuna_v1")])
def test_llava_1_5_configs_name_their_templates(config, name):
    cfg = yaml.safe_load(Path(f"configs/experiments/llava-1.5-7b/{config}.yaml").read_text())
    assert parse(cfg["model"]["init_args"]["template"]) == ChatTemplate.named(name)
