"""Evaluating what validation evaluates: a tiny any-resolution LLaVA that also reads video clips answers
the same QA rows (non-square images, a two-image row, a clip) with the same strings through validation,
`EvalAtFitEnd` and `chimera eval` at batch sizes 1 and 4; option log-likelihoods equal a forward pass
by hand; `chimera generate` equals a greedy loop run by hand on the model."""

from __future__ import annotations

import json

import lightning as L
import PIL.Image
import PIL.ImageDraw
import pytest
import torch

from data.images import load_image
from data.tokenize import tokenize_prompt
from data.tokenizer import train_tokenizer
from tests.tiny import LM_CONFIG
from train.checkpoint import build_module, load_module
from train.cli import main
from train.data_module import ConversationDataModule
from train.evaluation.callback import EvalAtFitEnd
from train.run_dir import RunFolder

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 7, "projection_dim": 16}  # 4 x 4 patches per tile
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
MAX_NEW_TOKENS = 4
SIZES = {"wide": (30, 50), "tall": (50, 30), "square": (28, 28), "strip": (56, 20), "flat": (20, 56)}  # (h, w)


def module_config(tok: str) -> dict:
    """An any-resolution LLaVA (base view + up to 2 x 2 tiles) whose tower's 4 x 4 grid pools to 2 x 2 per
    video frame; large LM weights, so different inputs get different answers."""
    return {"class_path": "train.module.VLMModule", "init_args": {
        "stage": "full", "lr": 0.0, "warmup_ratio": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "model": {
            "class_path": "models.llava.LLaVA", "init_args": {
                "image_grid_pinpoints": PINPOINTS,
                "vision": {"class_path": "models.vision.HFVision", "init_args": {"config": CLIP, "select_layer": -2}},
                "language": {"class_path": "models.language.LanguageModel",
                             "init_args": {"config": {**LM_CONFIG, "max_position_embeddings": 1024,
                                                      "initializer_range": 0.4}, "tokenizer": tok}},
                "connector": {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 2}}}}}}


def draw(path, size, colour, x: float = 0.5) -> str:
    h, w = size
    im = PIL.Image.new("RGB", (w, h), (128, 128, 128))
    PIL.ImageDraw.Draw(im).rectangle((int(x * w) - 4, h // 2 - 4, int(x * w) + 4, h // 2 + 4), fill=colour)
    im.save(path)
    return path.name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("anyres_eval")
    train_tokenizer(["what colour is the square", "which image has the square", "which way does it move",
                     "red", "blue", "left", "right", "first", "second"], root / "tok", vocab_size=300)
    rows = [{"id": name, "image": draw(root / f"{name}.png", size, (40 * n, 200 - 30 * n, 90)),
             "question": "what colour is the square", "answer": "red", "type": "colour"}
            for n, (name, size) in enumerate(SIZES.items())]
    pair = [draw(root / "pair0.png", (28, 28), (220, 30, 30)), draw(root / "pair1.png", (40, 24), (30, 30, 220))]
    rows.append({"id": "pair", "image": pair, "question": "which image has the square", "answer": "first",
                 "type": "pair"})
    (root / "clip").mkdir()
    frames = [f"clip/{draw(root / 'clip' / f'{k}.png', (28, 28), (220, 30, 30), x)}" for k, x in
              enumerate((0.7, 0.5, 0.3))]
    rows.append({"id": "clip", "video": frames, "question": "which way does it move", "answer": "left",
                 "type": "video"})
    (root / "val_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "train.json").write_text(json.dumps([{"id": "t", "image": "wide.png", "conversations": [
        {"from": "human", "value": "<image>\nwhat colour is the square"}, {"from": "gpt", "value": "red"}]}]))
    config = module_config(str(root / "tok"))
    torch.manual_seed(0)
    module = build_module(config)
    torch.save({"state_dict": module.state_dict(), "chimera_config": config}, root / "anyres.ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a second thread only waits for a shared core
    try:
        yield root, rows
    finally:
        torch.set_num_threads(threads)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def eval_predictions(world, out, *extra) -> list[dict]:
    root, _ = world
    main(["eval", "--ckpt", str(root / "anyres.ckpt"), "--tasks", "vqa", "--data", str(root / "val_qa.jsonl"),
          "--out", str(out), "--prompt-suffix", "vqa=", "--max-new-tokens", str(MAX_NEW_TOKENS), *extra])
    return read_jsonl(out / "vqa.jsonl")


def test_eval_and_eval_at_fit_end_answer_as_validation_does(world, tmp_path):
    """One fit step at lr 0 (weights as saved): its validation, `EvalAtFitEnd` and `chimera eval` at batch
    1 and 4 give every row (non-square images, two images, a clip) the same answer."""
    root, rows = world
    module = load_module(root / "anyres.ckpt").train()
    data = ConversationDataModule(str(root / "train.json"), str(root / "val_qa.jsonl"), batch_size=1,
                                  eval_batch_size=3, num_workers=0)
    callback = EvalAtFitEnd(["vqa"], data={"vqa": str(root / "val_qa.jsonl")}, out=str(tmp_path / "fit_end"),
                            max_new_tokens=MAX_NEW_TOKENS, prompt_suffix={"vqa": ""}, batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, val_check_interval=1,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[RunFolder(tmp_path / "run"), callback])
    trainer.fit(module, datamodule=data)
    validation = {r["id"]: r["prediction"] for r in read_jsonl(tmp_path / "run" / "predictions" / "val_step0000001.jsonl")}
    assert sorted(validation) == sorted(r["id"] for r in rows)
    assert len(set(validation.values())) >= 4, validation  # answers depend on the media
    assert not any("\n" in p for p in validation.values())  # the default stop string cuts nothing
    fit_end = read_jsonl(tmp_path / "fit_end" / "vqa.jsonl")
    assert {r["id"]: r["prediction"] for r in fit_end} == validation
    for batch_size in (1, 4):
        preds = eval_predictions(world, tmp_path / f"bs{batch_size}", "--batch-size", str(batch_size), "--stop", "@@")
        assert [r["id"] for r in preds] == [r["id"] for r in rows]  # the data's order
        assert {r["id"]: r["prediction"] for r in preds} == validation, batch_size


def test_loglik_option_scores_equal_a_forward_by_hand(world, tmp_path):
    """`--mc-mode loglik` on any-resolution images: each option's summed log-probability equals the model's
    forward on prompt + option ids with the image's views and size, at batch sizes 1 and 4."""
    root, _ = world
    records = [{"id": name, "image": f"{name}.png", "question": "what colour is the square",
                "choices": ["red", "blue", "left"], "answer": 0} for name in SIZES]
    (root / "sqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = {}
    for batch_size in (1, 4):
        out = tmp_path / f"bs{batch_size}"
        main(["eval", "--ckpt", str(root / "anyres.ckpt"), "--tasks", "scienceqa_img", "--data", str(root / "sqa.jsonl"),
              "--out", str(out), "--mc-mode", "loglik", "--batch-size", str(batch_size)])
        scores[batch_size] = [r["resps"][0][0] for r in read_jsonl(out / "scienceqa_img.jsonl")]
    assert [v for r in scores[1] for v in r] == pytest.approx([v for r in scores[4] for v in r], abs=1e-4)
    module = load_module(root / "anyres.ckpt")
    model, tok = module.model, module.model.tokenizer
    prompt = json.loads((tmp_path / "bs1" / "scienceqa_img.jsonl").read_text().splitlines()[0])["prompt"]
    image = model.image_transform()(load_image(root / "wide.png"))
    assert image.size == SIZES["wide"] and image.views.shape[0] == 5  # base view + 2 x 2 tiles
    ids = torch.tensor(tokenize_prompt(prompt, tok, module.template))
    ids, _ = model.image_placeholders.widen(ids, None, [image.num_tokens])
    by_hand = []
    with torch.no_grad():
        for option in ("red", "blue", "left"):
            cont = torch.tensor(tok(option, add_special_tokens=False).input_ids)
            row = torch.cat([ids, cont])[None]
            logits, _ = model(row, torch.ones_like(row), image.views, image_sizes=[image.size])
            logprobs = logits[0, len(ids) - 1:-1].float().log_softmax(-1)
            by_hand.append(float(logprobs.gather(1, cont[:, None]).sum()))
    assert scores[1][0] == pytest.approx(by_hand, abs=1e-4)
    assert len({round(v, 3) for v in by_hand}) == 3


def test_generate_equals_a_greedy_loop_by_hand(world, capsys):
    """`chimera generate` on the any-resolution checkpoint and a non-square image: the answer a full
    recompute of the model, one argmax token at a time, gives for the same prompt, views and size."""
    root, _ = world
    question = "what colour is the square"
    main(["generate", "--ckpt", str(root / "anyres.ckpt"), "--image", str(root / "tall.png"), "--prompt", question,
          "--max-new-tokens", "6"])
    answer = capsys.readouterr().out.strip()
    module = load_module(root / "anyres.ckpt")
    model, tok = module.model, module.model.tokenizer
    image = model.image_transform()(load_image(root / "tall.png"))
    assert image.size == SIZES["tall"]
    ids, _ = model.image_placeholders.widen(torch.tensor(tokenize_prompt(question, tok, module.template)), None,
                                            [image.num_tokens])
    new: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            row = torch.cat([ids, torch.tensor(new, dtype=ids.dtype)])[None]
            logits, _ = model(row, torch.ones_like(row), image.views, image_sizes=[image.size])
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == tok.eos_token_id:
                break
    expected = tok.decode(new, skip_special_tokens=True).strip()
    assert expected and answer == expected


def test_prompt_lengths_are_the_collated_row_lengths(world):
    """Eval sorts prompts by the lengths their rows will have: each any-resolution image at its own
    width (read from the file's header), two images, a clip at frames x pooled frame width."""
    from train.data_module import image_placeholders, prompt_collator
    from train.evaluation.decoding import Decoding, prompt_dataset, prompt_lengths

    root, rows = world
    module = load_module(root / "anyres.ckpt")
    dataset = prompt_dataset(module, rows, root, [r["question"] for r in rows], Decoding())
    collate = prompt_collator(module.model)
    actual = [int(collate([dataset[i]])["attention_mask"].sum()) for i in range(len(rows))]
    assert prompt_lengths(dataset, image_placeholders(module.model)) == actual
    # same question: wide (30 x 50) takes 16 base + 4 rows x (8 + newline) = 52 positions, square 16 + 4 x 5 = 36
    assert actual[0] - actual[2] == 52 - 36


def test_few_shot_names_a_record_with_several_images_or_a_video(world, tmp_path):
    root, _ = world
    with pytest.raises(ValueError, match="record 'pair' has 2 images; few-shot prompting"):
        eval_predictions(world, tmp_path, "--shots", "1", "--demos", "random")
