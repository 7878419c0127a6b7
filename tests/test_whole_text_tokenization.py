"""Ids equal whole-text tokenization of the rendered conversation, for SentencePiece-style and
byte-level tokenizers; labels cover exactly the answers and their end token; generation
prompts are prefixes of the conversation; LLaVA-1.5's own prompt ids are reproduced."""

import pytest

from data.templates import IMAGE_TOKEN, LLAVA_SYSTEM, ChatTemplate
from data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_prompt
from tests.offline_tokenizers import llama2_style, qwen2_style

QUESTION = "What is the shape of the red object?"
CONV = [{"from": "human", "value": f"{IMAGE_TOKEN}\n{QUESTION}"},
        {"from": "gpt", "value": "The red object is a circle."},
        {"from": "human", "value": "How many objects are there?"},
        {"from": "gpt", "value": "There are two objects."}]

TOKENIZERS = {"llama2": llama2_style(), "qwen2": qwen2_style()}
# (tokenizer, template, the end token each answer's target ends with)
CASES = [("llama2", ChatTemplate.named("vicuna_v1"), "</s>"),
         ("llama2", ChatTemplate(), "</s>"),
         ("qwen2", ChatTemplate(sep2="<|im_end|>"), "<|im_end|>"),
         ("qwen2", ChatTemplate.named("chat_template"), "<|im_end|>")]
IDS = [f"{tok}-{tpl.name or 'default'}" for tok, tpl, _ in CASES]


def target_runs(ids, labels):
    """Contiguous runs of target ids."""
    runs, run = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            run.append(i)
        elif run:
            runs, run = runs + [run], []
    return runs + ([run] if run else [])


def tokenizer_image_token(prompt, tokenizer, image_index):
    """LLaVA's reference: tokenize the text between images separately (each with BOS, kept once),
    joined by the image index."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(IMAGE_TOKEN)]
    offset = int(bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id)
    ids = chunks[0][:offset]
    for k, chunk in enumerate(chunks):
        ids += ([image_index] if k else []) + chunk[offset:]
    return ids


@pytest.mark.parametrize("name,template,end", CASES, ids=IDS)
def test_ids_equal_tokenizing_the_rendered_text(name, template, end):
    tok = TOKENIZERS[name]
    ids, _ = tokenize_conversation(CONV, tok, template)
    text = template.render(CONV, tokenizer=tok)
    # a chat_template's text carries its own BOS (none for Qwen2), as apply_chat_template tokenizes
    expected = tok(text, add_special_tokens=not template.renders_bos)["input_ids"]
    assert ids == expected
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1


@pytest.mark.parametrize("name,template,end", CASES, ids=IDS)
def test_labels_are_exactly_the_answers_and_their_end_token(name, template, end):
    tok = TOKENIZERS[name]
    ids, labels = tokenize_conversation(CONV, tok, template)
    runs = target_runs(ids, labels)
    assert [tok.decode(r).strip() for r in runs] == [CONV[1]["value"] + end, CONV[3]["value"] + end]
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    assert "circle" not in masked and "two objects" not in masked and QUESTION in masked


@pytest.mark.parametrize("name,template,end", CASES + [("llama2", ChatTemplate.named("plain"), "\n")],
                         ids=IDS + ["llama2-plain"])
def test_generation_prompt_is_a_prefix_of_the_conversation(name, template, end):
    tok = TOKENIZERS[name]
    ids, labels = tokenize_conversation(CONV[:2], tok, template)
    prompt = tokenize_prompt(QUESTION, tok, template)
    assert ids[:len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in labels[:len(prompt)])
    # the answer's target starts right after the prompt (a chat_template may add text after it)
    (answer,) = target_runs(ids, labels)
    assert ids[len(prompt):len(prompt) + len(answer)] == answer


def test_vicuna_v1_prompt_ids_equal_llava_1_5s():
    tok = llama2_style()
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    # conv_vicuna_v1.get_prompt() after appending (USER, "<image>\n" + q) and (ASSISTANT, None)
    llava_prompt = f"{LLAVA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT:"
    reference = tokenizer_image_token(llava_prompt, tok, image_id)
    assert tokenize_prompt(QUESTION, tok, ChatTemplate.named("vicuna_v1")) == reference
    assert tok.convert_ids_to_tokens(reference)[-1] == "▁ASSISTANT:"  # no lone '▁' after it
    # the training text, as LLaVA's preprocess_v1 builds it, tokenizes to the same ids too
    llava_text = (f"{LLAVA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT: {CONV[1]['value']}</s>"
                  f"USER: {CONV[2]['value']} ASSISTANT: {CONV[3]['value']}</s>")
    ids, _ = tokenize_conversation(CONV, tok, ChatTemplate.named("vicuna_v1"))
    assert ids == tokenizer_image_token(llava_text, tok, image_id)


def test_plain_is_llavas_preprocess_plain():
    tok = llama2_style()
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    caption = "A large blue square and a small green triangle."
    conv = [{"from": "human", "value": f"{IMAGE_TOKEN}\nDescribe the image."}, {"from": "gpt", "value": caption}]
    ids, labels = tokenize_conversation(conv, tok, ChatTemplate.named("plain"))
    # preprocess_plain: the human turn becomes the image token alone; text = image + caption + sep
    reference = tokenizer_image_token(IMAGE_TOKEN + caption + "\n", tok, image_id)
    assert ids == reference
    head = len(tokenizer_image_token(IMAGE_TOKEN, tok, image_id))  # [BOS, image] are masked
    assert head == 2 and labels == [IGNORE_INDEX] * head + reference[head:]
    assert "Describe" not in tok.decode(ids)


def test_a_chat_template_without_an_end_token_targets_the_answer_alone():
    """The next turn's opening special token is not the answer's end token."""
    tok = qwen2_style()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    ids, labels = tokenize_conversation(CONV, tok, ChatTemplate.named("chat_template"))
    assert [tok.decode(r) for r in target_runs(ids, labels)] == [CONV[1]["value"], CONV[3]["value"]]
