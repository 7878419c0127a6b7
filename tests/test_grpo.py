"""GRPO: the loss math by hand, rollout rows, rewards, zero gradient for equal rewards, a toy update
that favours the rewarded completion, the adapter-disabled reference, seeded sampling, and a run
(LLaVA and Flamingo) that starts with KL 0 and resumes exactly."""

import copy
import csv
import math
import os

import pytest
import torch
import yaml

from tests.test_flamingo_stage import flamingo_config
from tests.tiny import experiment_config, module_config, tiny_world
from train.checkpoint import build_module
from models.losses import shifted_targets
from train.cli import main
from train.grpo_loss import group_advantages, grpo_loss, k3_kl
from train.grpo_module import rollout_rows
from train.grpo_reference import AdapterDisabledReference, FrozenCopy, token_logprobs
from train.rewards import CaptionCIDEr, ChoiceLetter, ExactMatch, FormatReward


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


# ---------------------------------------------------------------- the math, by hand

def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0]), group_size=4, eps=1e-4)
    # group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5; group 2: all equal -> 0
    assert adv.tolist() == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), 3)


def test_k3_kl_by_hand():
    kl = k3_kl(torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0]))
    # d = log(0.25 / 0.5): exp(d) - d - 1 = 0.5 + log 2 - 1; zero where policy == reference
    assert kl.tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0])


def test_clipped_objective_by_hand():
    old = torch.zeros(2, 3)
    # row 0 (A = +1): ratios 1.5 (clipped at 1.2), 1.0, and a masked token whose huge ratio must not count
    # row 1 (A = -1): ratio 1.5 is not clipped (min picks -1.5), ratio 0.5 is clipped at 0.8 (min picks -0.8)
    logp = torch.log(torch.tensor([[1.5, 1.0, 100.0], [1.5, 0.5, 1.0]])).requires_grad_()
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(logp, old, None, adv, mask, clip_eps=0.2, beta=0.0)
    # row objectives: (1.2 + 1.0) / 2 = 1.1 and (-1.5 - 0.8) / 2 = -1.15; loss = -(1.1 - 1.15) / 2
    assert loss.item() == pytest.approx(0.025)
    assert stats.clip_fraction.item() == pytest.approx(2 / 4)  # row 0's first token, row 1's second
    loss.backward()
    # d loss / d logp = -ratio * A / (|o| G) where unclipped, 0 where clipped or masked
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25, 0.0], [0.375, 0.0, 0.0]]))


def test_kl_penalty_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss, stats = grpo_loss(logp, logp, ref, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)
    kl_first = 0.5 + math.log(2) - 1
    assert stats.kl.item() == pytest.approx(kl_first / 2)
    assert loss.item() == pytest.approx(0.1 * kl_first / 2)


def test_rollout_rows_keep_completion_to_first_eos():
    eos, pad = 2, 0
    prompts = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]])
    completion = torch.tensor([[10, eos, pad], [11, 12, 13]])
    rows = rollout_rows(prompts, (prompts != 0).long(), completion, eos, pad)
    assert rows["input_ids"].tolist() == [[5, 6, 10, eos, pad, pad], [7, 8, 9, 11, 12, 13]]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert rows["labels"].tolist() == [[-100, -100, 10, eos, -100, -100], [-100, -100, -100, 11, 12, 13]]
    assert rows["lengths"].tolist() == [2, 3] and rows["finished"].tolist() == [True, False]


def test_rewards():
    assert ExactMatch()(["Yes.", "two", "a red circle"], ["yes", "2", "blue circle"]) == [1.0, 1.0, 0.0]
    assert ChoiceLetter()(["The answer is (B).", "C", "maybe"], ["B", "(A)", "A"]) == [1.0, 0.0, 0.0]
    cider = CaptionCIDEr()(["a red circle left", "a blue square"], ["a red circle left", "a green star top"])
    assert cider[0] > 1.0 and cider[1] == 0.0  # exact caption vs no shared n-gram beyond "a"
    assert FormatReward()(["yes", " two words ", "one two three four"], ["", "", ""]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="regular expression"):
        FormatReward("(")


def test_prompt_rows_from_conversations_and_qa(tmp_path):
    from data.prompt_answers import question_rows

    conv = {"id": "a", "image": "x.png", "types": ["shape", "count"], "conversations": [
        {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "circle"},
        {"from": "human", "value": "How many?"}, {"from": "gpt", "value": "2"}]}
    qa = {"id": "b", "image": "y.png", "question": "Color?", "answer": "red", "type": "color"}
    rows = question_rows([conv, qa], tmp_path / "f.json")
    assert [(r["id"], r["question"], r["answer"], r["type"], r["image"]) for r in rows] == [
        # a question keeps its own <image> and gets the earlier turns' first (multi-image prompts keep their order)
        ("a-0", "<image>\nWhat shape?", "circle", "shape", "x.png"), ("a-1", "<image>\nHow many?", "2", "count", "x.png"),
        ("b", "Color?", "red", "color", "y.png")]
    with pytest.raises(ValueError, match="lacks"):
        question_rows([{"id": "c", "question": "?"}], tmp_path / "f.json")
    kept = question_rows([conv, qa], tmp_path / "f.json", types=["count", "color"])
    assert [r["id"] for r in kept] == ["a-1", "b"]
    with pytest.raises(ValueError, match=r"no question of types \['caption'\] \(its types: \['color', 'count', 'shape'\]\)"):
        question_rows([conv, qa], tmp_path / "f.json", types=["caption"])


# ---------------------------------------------------------------- a tiny policy

def grpo_module(world, stage="finetune", adapter=None, **grpo):
    cfg = module_config(world, stage=stage)
    cfg["class_path"] = "train.grpo_module.GRPOModule"
    cfg["init_args"].update({"max_completion_tokens": 4, **grpo})
    if adapter is not None:
        cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["adapter"] = adapter
    return build_module(cfg)


def fixed_rollout(module, completions):
    """One text-only prompt, its group of the given completions (token ids), as training rows."""
    tok = module.model.tokenizer
    prompt = torch.tensor([tok("USER: What shape is the red object? ASSISTANT:")["input_ids"]] * len(completions))
    width = max(len(c) for c in completions)
    comp = torch.tensor([c + [tok.pad_token_id] * (width - len(c)) for c in completions])
    rows = rollout_rows(prompt, torch.ones_like(prompt), comp, tok.eos_token_id, tok.pad_token_id)
    return (rows["input_ids"], rows["attention_mask"], None, rows["labels"])


def completions_of(module, *words):
    tok = module.model.tokenizer
    return [tok(" " + w, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for w in words]


def test_equal_rewards_give_zero_advantages_and_zero_gradient(world):
    torch.manual_seed(0)
    module = grpo_module(world, beta=0.04)
    args = fixed_rollout(module, completions_of(module, "circle", "square", "triangle", "circle"))
    adv = group_advantages(torch.full((4,), 0.7), 4)
    assert torch.equal(adv, torch.zeros(4))
    mask = shifted_targets(args[3]) != -100
    logp = token_logprobs(module.model, *args)
    loss, stats = grpo_loss(logp, logp.detach(), module.reference(*args), adv, mask, beta=0.04)
    loss.backward()
    assert stats.kl.item() == 0.0  # the reference is the starting policy: KL 0 at step 0
    grads = {n: p.grad for n, p in module.model.named_parameters() if p.requires_grad}
    assert all(grads[n] is not None for n in grads if n.startswith("language."))  # a text-only prompt: no connector
    assert all(torch.count_nonzero(g) == 0 for g in grads.values() if g is not None)


def test_one_update_raises_the_rewarded_completion_and_lowers_the_others(world):
    torch.manual_seed(0)
    module = grpo_module(world, beta=0.0)
    args = fixed_rollout(module, completions_of(module, "circle", "square", "triangle", "star"))
    mask = shifted_targets(args[3]) != -100
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    before = (token_logprobs(module.model, *args) * mask).sum(1).detach()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.05)
    logp = token_logprobs(module.model, *args)
    loss, _ = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0)
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = (token_logprobs(module.model, *args) * mask).sum(1)
    change = (after - before).tolist()
    assert change[0] > 0 and all(c < 0 for c in change[1:]), change


def test_lora_reference_is_the_adapter_disabled_starting_policy(world):
    torch.manual_seed(0)
    lora = {"class_path": "models.peft.LoRA", "init_args": {"r": 4, "alpha": 8, "dropout": 0.0}}
    module = grpo_module(world, adapter=lora)
    assert isinstance(module.reference, AdapterDisabledReference)
    adapter = {id(p) for p in module.model.language.adapter_parameters()}
    # only the other trained parameters are copied (the connector here), never the LM
    assert set(module.reference.start) == {n for n, p in module.model.named_parameters()
                                           if p.requires_grad and id(p) not in adapter}
    assert all(n.startswith("connector.") for n in module.reference.start)
    args = fixed_rollout(module, completions_of(module, "circle", "square"))
    frozen = FrozenCopy(module.model)
    with torch.no_grad():
        start = frozen(*args)
        torch.testing.assert_close(module.reference(*args), start)
        for p in module.parameters():  # training moves the adapter (B starts at 0) and the connector
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        moved = token_logprobs(module.model, *args)
        assert not torch.allclose(moved, start)
        torch.testing.assert_close(module.reference(*args), start)  # still the starting policy
        torch.testing.assert_close(token_logprobs(module.model, *args), moved)  # the policy is put back


def test_sampling_is_reproducible_under_a_seed_and_leaves_the_global_rng(world):
    from data.collate import Collator
    from data.prompt_answers import GroupCollator, PromptAnswerDataset

    module = grpo_module(world, group_size=3, temperature=1.5)
    model = module.model
    ds = PromptAnswerDataset(world / "train.json", model.tokenizer, module.template, model.vision.transform(False))
    batch = GroupCollator(Collator(model.tokenizer.pad_token_id, True, model.image_placeholders), 3)([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 6 and batch["samples"] == 2
    torch.manual_seed(123)
    a = module.sample(batch)
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = module.sample(batch)
    assert torch.equal(a, b) and torch.equal(torch.rand(1), after_a)  # the global RNG is untouched
    module.seed = 1
    assert not torch.equal(module.sample(batch), a)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_module(world, group_size=1)
    assert not torch.equal(a[0], a[1])  # a group's completions differ (sampled, not greedy)


def test_flamingo_rollout_and_update(world, tmp_path):
    """Flamingo samples through its cross-attention (one `<image>` per prompt, not widened) and scores
    its completions with labels on the completion only; KL 0 against its frozen copy at the start."""
    from data.collate import Collator
    from data.prompt_answers import GroupCollator, PromptAnswerDataset

    torch.manual_seed(0)
    cfg = flamingo_config(world, tmp_path, stage="finetune")["model"]
    cfg["class_path"] = "train.grpo_module.GRPOModule"
    cfg["init_args"].update({"group_size": 2, "max_completion_tokens": 3})
    module = build_module(cfg)
    model = module.model
    ds = PromptAnswerDataset(world / "train.json", model.tokenizer, module.template, model.vision.transform(False))
    batch = GroupCollator(Collator(model.tokenizer.pad_token_id, left_pad=True), 2)([ds[0], ds[1]])
    rows = module.rollout(batch)
    assert (rows["input_ids"] == model.image_token_id).sum(1).tolist() == [1] * 4  # no image token sampled
    args = (rows["input_ids"], rows["attention_mask"], rows["pixel_values"], rows["labels"])
    mask = shifted_targets(rows["labels"]) != -100
    assert mask.sum(1).tolist() == rows["lengths"].tolist()
    logp = token_logprobs(model, *args)
    assert torch.count_nonzero(logp[~mask]) == 0 and (logp[mask] < 0).all()
    loss, stats = grpo_loss(logp, logp.detach(), module.reference(*args), torch.tensor([1.0, -1.0, 0.5, -0.5]),
                            mask)
    loss.backward()
    assert stats.kl.item() == 0.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cross_attention.parameters())


# ---------------------------------------------------------------- chimera fit

def grpo_config(base: dict, name: str, **grpo) -> dict:
    cfg = copy.deepcopy(base)
    cfg["trainer"]["logger"]["init_args"]["name"] = name
    cfg["trainer"]["limit_val_batches"] = 0
    model = cfg["model"]
    model["class_path"] = "train.grpo_module.GRPOModule"
    model["init_args"].update({"stage": "finetune", "group_size": 2, "max_completion_tokens": 3, **grpo})
    cfg["data"]["class_path"] = "train.grpo_data_module.PromptDataModule"
    cfg["data"]["init_args"].pop("max_turns")
    cfg["data"]["init_args"]["batch_size"] = 2
    return cfg


def _metrics(root, name, version=0):
    return [r for r in csv.DictReader(open(root / name / f"version_{version}" / "metrics.csv")) if r.get("train/loss")]


def test_resume_equals_uninterrupted(world, tmp_path):
    def config(name):
        # some random completions hold a vowel and some not: rewards differ within groups
        rewards = [{"class_path": "train.rewards.ExactMatch"},
                   {"class_path": "train.rewards.FormatReward", "init_args": {"pattern": "(?s).*[aeiou].*"}}]
        cfg = grpo_config(experiment_config(world, tmp_path, max_steps=4), name, num_iterations=2, rewards=rewards,
                          group_size=4)
        cfg["trainer"]["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                        "init_args": {"dirpath": str(tmp_path / name / "ckpt"), "save_last": True,
                                                      "every_n_train_steps": 2, "save_top_k": -1}}]
        return cfg

    full = config("full")
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(full))
    main(["fit", "--config", str(tmp_path / "full.yaml")])
    rows = _metrics(tmp_path, "full")
    assert float(rows[0]["train/reward_std"]) > 0.0 and float(rows[-1]["train/kl"]) > 0.0  # the policy moved

    cut = config("cut")
    cut["trainer"]["callbacks"].append({"class_path": "tests.test_resume.KillAfter", "init_args": {"n": 2}})
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cut))
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        main(["fit", "--config", str(tmp_path / "cut.yaml")])
    last = tmp_path / "cut" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2  # one batch, two optimizer steps
    cut["trainer"]["callbacks"] = cut["trainer"]["callbacks"][:1]
    (tmp_path / "cut.yaml").write_text(yaml.safe_dump(cut))
    main(["fit", "--config", str(tmp_path / "cut.yaml"), "--ckpt_path", str(last)])

    a = torch.load(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=False)
    b = torch.load(last, weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    resumed = _metrics(tmp_path, "cut", 1)
    keys = ("train/loss", "train/reward", "train/kl", "train/clip_fraction", "train/completion_length")
    # same samples, rewards, KL and loss after the resume
    assert resumed and [resumed[-1][k] for k in keys] == [rows[-1][k] for k in keys]


def test_flamingo_grpo_fit_logs_rollout_statistics(world, tmp_path):
    cfg = grpo_config(flamingo_config(world, tmp_path, max_steps=2), "flamingo_grpo")
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(tmp_path / "f.yaml")])
    rows = _metrics(tmp_path, "flamingo_grpo")
    assert len(rows) == 2 and float(rows[0]["train/kl"]) == 0.0
    for key in ("train/reward", "train/reward_std", "train/clip_fraction", "train/completion_length",
                "train/rollout_acc", "train/reward_exact_match"):
        assert key in rows[0] and rows[0][key] != "", key
    assert 1.0 <= float(rows[0]["train/completion_length"]) <= 3.0
    assert any(k.startswith("train/rollout_acc_") and rows[0][k] != "" for k in rows[0])  # per question type


def test_qlora_grpo_fit_against_the_adapter_disabled_reference(world, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = grpo_config(experiment_config(world, tmp_path, max_steps=3), "qlora", group_size=4, lr=1e-2,
                      optimizer="paged_adamw", rewards=[{"class_path": "train.rewards.FormatReward",
                                                         "init_args": {"pattern": "(?s).*[aeiou].*"}}])
    lm = cfg["model"]["init_args"]["model"]["init_args"]["language"]["init_args"]
    lm.update(adapter={"class_path": "models.peft.LoRA", "init_args": {"r": 4, "alpha": 8, "dropout": 0.0}},
              quantization="nf4", double_quant=True)
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(cfg))
    main(["fit", "--config", str(tmp_path / "q.yaml")])
    rows = _metrics(tmp_path, "qlora")
    # LoRA's B starts at 0: the adapter-disabled model is the policy at step 0, then the policy moves
    assert float(rows[0]["train/kl"]) == 0.0 and float(rows[0]["train/loss"]) == 0.0  # ratio 1, advantages sum to 0
    assert float(rows[0]["train/reward_std"]) > 0.0 and float(rows[-1]["train/kl"]) > 0.0


@pytest.mark.slow  # 20-35 s on 2 shared cores: two processes (gloo) launched as users launch them
def test_two_process_ddp_grpo(world, tmp_path):
    from tests.tiny import launch_fit

    cfg = grpo_config(experiment_config(world, tmp_path, max_steps=2), "ddp", rewards=[
        {"class_path": "train.rewards.FormatReward", "init_args": {"pattern": "(?s).*[aeiou].*"}}])
    cfg["trainer"].update({"devices": 2, "strategy": "ddp", "enable_checkpointing": False})
    launch_fit(cfg, tmp_path / "ddp.yaml", timeout=240)
    rows = _metrics(tmp_path, "ddp")
    assert len(rows) == 2 and float(rows[0]["train/kl"]) == 0.0 and float(rows[1]["train/kl"]) > 0.0


def test_fsdp_is_refused_before_training(world, tmp_path):
    cfg = grpo_config(experiment_config(world, tmp_path, max_steps=1), "fsdp")
    cfg["trainer"]["strategy"] = {"class_path": "train.strategies.FSDP"}
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)  # the strategy's setup exports LOCAL_RANK, MASTER_PORT, ... and starts a process group
    try:
        with pytest.raises(ValueError, match=r"^grpo: trainer.strategy FSDP is not supported yet .*; use ddp$"):
            main(["fit", "--config", str(tmp_path / "fsdp.yaml")])
    finally:  # left to later tests, they would make a launched `chimera fit` believe it is a spawned rank
        os.environ.clear()
        os.environ.update(env)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
