"""`chimera eval --hf-llava DIR`: a transformers LLaVA directory (tiny, random, built from configs, saved
with save_pretrained) predicts what transformers' own processor + greedy `generate` predict."""

import json
import shutil

import numpy as np
import PIL.Image
import pytest
import torch

from tests.offline_tokenizers import llama2_style
from train.cli import main

# llava-hf's LLaVA-1.5 chat template: content as a list of parts, images first; no BOS written (the
# processor's tokenizer adds it)
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
QUESTIONS = ["What is the shape?", "How many objects are there?", "Describe the image.",
             "What colour is the small circle at the top left?", "Is there a square?"]
SIZES = [(45, 31), (28, 28), (20, 60), (64, 33), (30, 30)]  # (width, height): most not square


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaImageProcessor, LlavaProcessor)

    out = tmp_path_factory.mktemp("hf_llava")
    tok = llama2_style()
    tok.add_special_tokens({"pad_token": "<pad>"})
    tok.chat_template = LLAVA_HF_TEMPLATE
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=7, projection_dim=16)  # 16 patches
    # large weights: a random LM that answers each prompt differently, so equal outputs are not luck
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256, initializer_range=0.4,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=16, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # no byte-fallback piece ever wins: decoded texts tell token sequences apart
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        model.lm_head.weight[[i for i, p in enumerate(pieces) if p.startswith("<0x")]] = 0.0
    model.save_pretrained(out)
    images = LlavaImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                 do_center_crop=True, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=7, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=LLAVA_HF_TEMPLATE,
                   image_token="<image>").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vqa_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa")
    rng = np.random.default_rng(0)
    lines = []
    for i, (question, (w, h)) in enumerate(zip(QUESTIONS, SIZES)):
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(json.dumps({"id": i, "image": f"{i}.png", "question": question, "answer": "circle"}))
    (root / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    return root / "vqa.jsonl"


def transformers_predictions(hf_dir, vqa_file, max_new_tokens: int) -> list[str]:
    """transformers alone, one sample at a time: processor.apply_chat_template(tokenize=True) + greedy generate."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(hf_dir, backend="pil")
    model = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    out = []
    for line in vqa_file.read_text().splitlines():
        rec = json.loads(line)
        text = rec["question"] + "\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA suffix
        messages = [{"role": "user", "content": [{"type": "image", "image": PIL.Image.open(vqa_file.parent / rec["image"])},
                                                 {"type": "text", "text": text}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=["\n"],
                                 tokenizer=processor.tokenizer)
        out.append(processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


@pytest.mark.parametrize("batch_size", [1, 3])
def test_hf_llava_eval_predicts_what_transformers_generates(hf_dir, vqa_file, tmp_path, batch_size):
    out = tmp_path / "out"
    main(["eval", "--hf-llava", str(hf_dir), "--tasks", "vqa", "--data", str(vqa_file), "--out", str(out),
          "--batch-size", str(batch_size), "--max-new-tokens", "6"])
    rows = [json.loads(line) for line in (out / "vqa.jsonl").read_text().splitlines()]
    expected = transformers_predictions(hf_dir, vqa_file, 6)
    assert len(set(expected)) >= 3, expected  # the samples are answered differently
    assert all(len(e) >= 6 and "\ufffd" not in e for e in expected), expected
    assert [r["resps"][0][0] for r in rows] == expected
    assert [r["prediction"] for r in rows] == [e.split("\n")[0].strip() for e in expected]
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["checkpoint"] == str(hf_dir) and meta["prompts"]["vqa"]["template"] == "chat_template"


def test_hf_llava_errors_name_the_cause(hf_dir, vqa_file, tmp_path):
    with pytest.raises(ValueError, match="--ckpt or --hf-llava, not both"):
        main(["eval", "--hf-llava", str(hf_dir), "--ckpt", str(hf_dir), "--tasks", "vqa", "--data", str(vqa_file),
              "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a transformers LLaVA directory"):
        main(["eval", "--hf-llava", str(tmp_path), "--tasks", "vqa", "--data", str(vqa_file), "--out", str(tmp_path)])
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    config = json.loads((other / "processor_config.json").read_text())
    config["image_processor"]["crop_size"] = {"height": 32, "width": 32}  # not the tower's 28px
    (other / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="crop {'height': 32, 'width': 32}\\) does not make the vision tower's 28px square"):
        main(["eval", "--hf-llava", str(other), "--tasks", "vqa", "--data", str(vqa_file), "--out", str(tmp_path)])


def test_a_parts_reading_chat_template_gets_the_text_in_prompts_and_training(hf_dir):
    """llava-hf's template reads content as parts (a string's text would vanish: "USER: ASSISTANT:"); its
    processor's tokenizer adds BOS, which the template does not write."""
    from transformers import AutoTokenizer

    from data.templates import ChatTemplate
    from data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_prompt

    tok = AutoTokenizer.from_pretrained(hf_dir)
    template = ChatTemplate.named("chat_template")
    ids = tokenize_prompt("What is the shape?", tok, template)
    assert ids == tok("USER: <image>\nWhat is the shape? ASSISTANT:")["input_ids"] and ids[0] == tok.bos_token_id
    turns = [{"from": "human", "value": "<image>\nWhat is the shape?"}, {"from": "gpt", "value": "A circle."}]
    ids, labels = tokenize_conversation(turns, tok, template)
    assert ids == tok("USER: <image>\nWhat is the shape? ASSISTANT: A circle. ")["input_ids"]
    assert tok.decode([i for i in labels if i != IGNORE_INDEX]).strip() == "A circle."


@pytest.mark.parametrize("image_mode", ["pad", "crop"])
def test_an_exported_checkpoint_predicts_the_same_through_hf_llava(vqa_file, tmp_path, image_mode):
    """`chimera export --format hf-llava` then `chimera eval --hf-llava`: the checkpoint's own predictions
    (its vicuna_v1 template comes back as the export's Jinja chat_template, its image mode as the processor)."""
    from data.tokenizer import train_tokenizer
    from tests.tiny import LM_CONFIG
    from train.checkpoint import build_module

    train_tokenizer(QUESTIONS + ["Answer the question using a single word or phrase."], tmp_path / "tok",
                    vocab_size=300)
    clip = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 28, "patch_size": 7, "projection_dim": 16}
    config = {"class_path": "train.module.VLMModule", "init_args": {"template": {"name": "vicuna_v1"}, "model": {
        "class_path": "models.llava.LLaVA", "init_args": {
            "vision": {"class_path": "models.vision.HFVision",
                       "init_args": {"config": clip, "select_layer": -2, "image_mode": image_mode}},
            "language": {"class_path": "models.language.LanguageModel",
                         "init_args": {"config": {**LM_CONFIG, "initializer_range": 0.4},
                                       "tokenizer": str(tmp_path / "tok")}},
            "connector": {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 2}}}}}}
    torch.manual_seed(0)
    module = build_module(config)
    torch.save({"state_dict": module.state_dict(), "chimera_config": config}, tmp_path / "tiny.ckpt")
    main(["export", "--ckpt", str(tmp_path / "tiny.ckpt"), "--format", "hf-llava", "--out", str(tmp_path / "hf")])
    preds = {}
    for name, source in (("ckpt", ["--ckpt", str(tmp_path / "tiny.ckpt")]), ("hf", ["--hf-llava", str(tmp_path / "hf")])):
        main(["eval", *source, "--tasks", "vqa", "--data", str(vqa_file), "--out", str(tmp_path / name),
              "--batch-size", "2", "--max-new-tokens", "5", "--stop", "@@"])
        preds[name] = [json.loads(line)["prediction"] for line in (tmp_path / name / "vqa.jsonl").read_text().splitlines()]
    assert len(set(preds["ckpt"])) >= 3, preds
    assert preds["hf"] == preds["ckpt"]
