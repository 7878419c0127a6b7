"""The `lm` stage pretrains the tiny LM on the world's text and hands it to a LLaVA."""

import csv

import torch
import yaml

from data.shapes import write_shapes
from data.templates import IMAGE_TOKEN, ChatTemplate
from data.tokenize import tokenize_conversation
from models.language import LanguageModel
from tests.tiny import LM_CONFIG, VISION
from train.checkpoint import build_module, load_module
from train.cli import main
from train.lm_module import world_ids


def test_lm_stage_sees_the_ids_the_vlm_stages_see_without_the_image(tmp_path):
    write_shapes(tmp_path, train_images=4, val_images=2, seed=0, max_objects=2)
    lm = LanguageModel(config=dict(LM_CONFIG), tokenizer=str(tmp_path / "tokenizer"))
    tok, template = lm.tokenizer, ChatTemplate()
    rec = {"conversations": [{"from": "human", "value": "<image>\nIs the red circle on the left?"},
                             {"from": "gpt", "value": "yes"},
                             {"from": "human", "value": "Where is the red circle?"},
                             {"from": "gpt", "value": "top left"}]}
    vlm_ids, _ = tokenize_conversation(rec["conversations"], tok, template)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert vlm_ids.count(image_id) == 1
    ids = world_ids(rec, tok, template)
    assert ids == [i for i in vlm_ids if i != image_id]
    assert tok.decode(ids, skip_special_tokens=False).endswith("ASSISTANT: top left</s>")
    # and the VLM's ids are the rendered text's, tokenized in one piece
    assert vlm_ids == [tok.bos_token_id] + tok(template.render(rec["conversations"]), add_special_tokens=False)["input_ids"]
    assert world_ids(rec, tok, template, max_length=5) == ids[:5]


def test_lm_stage_lowers_perplexity_and_feeds_a_llava(tmp_path):
    world = tmp_path / "shapes"
    write_shapes(world, train_images=32, val_images=8, seed=0, max_objects=2)
    lm = {"class_path": "models.language.LanguageModel",
          "init_args": {"tokenizer": str(world / "tokenizer"), "config": dict(LM_CONFIG)}}
    cfg = {"seed_everything": 0,
           "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 30, "val_check_interval": 10,
                       "check_val_every_n_epoch": None, "log_every_n_steps": 5, "num_sanity_val_steps": 0,
                       "enable_progress_bar": False, "enable_model_summary": False,
                       "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                  "init_args": {"save_dir": str(tmp_path), "name": "lm"}}},
           "model": {"class_path": "train.lm_module.LMModule", "init_args": {"lr": 1e-2, "language": lm}},
           "data": {"class_path": "train.lm_module.TextDataModule",
                    "init_args": {"train_json": str(world / "train.json"), "val_json": str(world / "val.json"),
                                  "batch_size": 8}}}
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(tmp_path / "lm.yaml")])
    run = tmp_path / "lm" / "version_0"
    ppl = [float(r["val/perplexity"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/perplexity")]
    assert len(ppl) == 3 and ppl[-1] < 0.5 * ppl[0]
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    # a LLaVA whose LM starts from the lm stage has exactly its weights
    llava = {"class_path": "train.module.VLMModule", "init_args": {"model": {
        "class_path": "models.llava.LLaVA", "init_args": {
            "vision": {**VISION, "init_args": {**VISION["init_args"], "image_size": 72}},
            "language": {**lm, "init_args": {**lm["init_args"], "weights_from": str(ckpt)}}}}}}
    module = build_module(llava)
    lm_module = load_module(ckpt)
    for a, b in zip(module.model.language.parameters(), lm_module.model["language"].parameters()):
        assert torch.equal(a, b)
