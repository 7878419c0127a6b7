"""PEFT stages end to end: LoRA/QLoRA train only adapters + connector, start from an earlier
stage's checkpoint, resume, reload to identical outputs, and merge to equal logits."""

import csv

import pytest
import torch
import yaml

from models.peft import LoRA
from tests.tiny import experiment_config, tiny_world
from train.checkpoint import build_module, load_module
from train.cli import main
from train.run_metrics import read_metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def sft_ckpt(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    cfg = experiment_config(world, root, max_steps=3)
    (root / "sft.yaml").write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(root / "sft.yaml")])
    return next((root / "tiny").rglob("*.ckpt"))


def peft_config(world, root, sft_ckpt, adapter, quantization=None, optimizer="adamw", max_steps=6):
    cfg = experiment_config(world, root, max_steps=max_steps)
    init = cfg["model"]["init_args"]
    init.update(stage="finetune", lr=1e-2, init_from=str(sft_ckpt), optimizer=optimizer)
    lm = init["model"]["init_args"]["language"]["init_args"]
    lm.update(adapter=adapter, weights_from=str(sft_ckpt))
    if quantization:
        lm.update(quantization=quantization, double_quant=True)
    cfg["trainer"]["logger"]["init_args"]["name"] = "peft"
    return cfg


LORA = {"class_path": "models.peft.LoRA", "init_args": {"r": 4, "alpha": 8, "dropout": 0.0}}


def _batch(module, world):
    from data.collate import Collator
    from data.conversation_dataset import ConversationDataset

    ds = ConversationDataset(world / "train.json", module.model.tokenizer, module.template,
                             module.model.vision.transform(), max_turns=2)
    return Collator(module.model.tokenizer.pad_token_id, placeholders=module.model.image_placeholders)(
        [ds[i] for i in range(4)])


def _logits(module, batch):
    module.eval()
    with torch.no_grad():
        return module.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])[0]


def test_lora_stage_trains_only_lora_and_connector_and_starts_from_the_sft_model(world, tmp_path, sft_ckpt):
    module = build_module(peft_config(world, tmp_path, sft_ckpt, LORA)["model"])
    table = {name: (total, trainable) for name, total, trainable in module.parameter_table()}
    assert table["vision"][1] == 0 and table["connector"][1] == table["connector"][0]
    lora = sum(p.numel() for p in module.model.language.adapter_parameters())
    assert table["language"][1] == lora > 0
    # by hand: r * (in + out) for every linear of the 2-layer Llama (q, k, v, o, gate, up, down)
    h, inter, r = 32, 64, 4
    per_layer = 4 * r * (h + h) + 2 * r * (h + inter) + r * (inter + h)
    assert lora == 2 * per_layer
    # B starts at zero, so the adapted model is exactly the SFT model it was loaded from
    sft = load_module(sft_ckpt)
    batch = _batch(sft, world)
    assert torch.equal(_logits(module, batch), _logits(sft, batch))


def test_qlora_fit_resume_reload_and_merge(world, tmp_path, sft_ckpt):
    import bitsandbytes as bnb

    cfg = peft_config(world, tmp_path, sft_ckpt, LORA, quantization="nf4", optimizer="paged_adamw", max_steps=10)
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(path)])
    run = tmp_path / "peft" / "version_0"
    assert [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")]
    ckpt = next((run / "checkpoints").glob("*.ckpt"))
    module = load_module(ckpt)
    # the loss on training rows fell from the SFT starting point (B = 0) to the trained adapter
    before = build_module(cfg["model"]).eval()
    rows = _batch(module, world)
    with torch.no_grad():
        args = (rows["input_ids"], rows["attention_mask"], rows["pixel_values"], rows["labels"])
        assert module.eval().model(*args)[1] < before.model(*args)[1]
    linears = [m for m in module.model.language.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in linears)
    batch = _batch(module, world)
    again = load_module(ckpt)
    adapted = _logits(module, batch)
    assert torch.equal(adapted, _logits(again, batch))
    # resume the run from its checkpoint for 2 more steps (in its own run folder: the metrics so far kept aside)
    main(["fit", "--config", str(path), "--trainer.max_steps", "12", "--ckpt_path", str(ckpt)])
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")]
    assert steps == [10, 11]  # continued from the checkpoint's step, not from 0
    assert [int(r["step"]) for r in read_metrics(run) if r.get("train/loss")] == list(range(12))
    # merge: a dense checkpoint whose logits match the 4-bit adapter model's
    main(["merge", "--ckpt", str(ckpt), "--out", str(tmp_path / "merged")])
    merged = load_module(tmp_path / "merged" / "merged.ckpt")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in merged.modules())
    assert merged.model.language.adapter is None
    diff = (_logits(merged, batch) - adapted).abs().max().item()
    assert diff < 1e-4, diff
    assert (tmp_path / "merged" / "language" / "config.json").is_file()


def test_merge_refuses_a_checkpoint_without_lora(world, tmp_path, sft_ckpt):
    with pytest.raises(ValueError, match="no adapter"):
        main(["merge", "--ckpt", str(sft_ckpt), "--out", str(tmp_path)])


def test_lora_defaults_are_typed():
    assert LoRA().r == 8 and LoRA().target_modules is None
