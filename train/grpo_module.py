"""The `grpo` stage: Group Relative Policy Optimization (DeepSeekMath, Shao et al. 2024) on a LLaVA or Flamingo.

Each step samples `group_size` completions per prompt with the model's own cached generation,
scores them with the configured reward functions against the prompt's reference answer, normalises
the rewards within each group into advantages, and takes `num_iterations` optimizer steps on the
clipped policy-ratio objective with a k3 KL penalty to the frozen reference (`train.grpo_loss`).
Optimization is manual (several steps per batch of samples); the sampling RNG is seeded from
(`seed`, global step, rank), so sampling is reproducible and a resumed run samples what the
uninterrupted one did. Validation is the parent's greedy generation-based VQA scoring.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor

from data.tokenize import IGNORE_INDEX
from models.losses import shifted_targets
from train.answers import accuracy_by_type
from train.evaluation.vqa_metric import vqa_accuracy
from train.grpo_loss import group_advantages, grpo_loss
from train.grpo_reference import build_reference, evaluating, token_logprobs
from train.module import VLMModule, zero_through_parameters
from train.rewards import ExactMatch, Reward


def rollout_rows(prompt_ids: Tensor, prompt_mask: Tensor, completion: Tensor, eos_id: int,
                 pad_id: int) -> dict[str, Tensor]:
    """Left-padded prompts + sampled completions -> right-padded rows `prompt completion` as training
    batches have them, labels -100 except on the completion's tokens up to and including its first
    EOS (what follows is padding). Also `lengths` (completion tokens per row) and `finished`."""
    is_eos = completion == eos_id
    kept = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # up to the first EOS, inclusive
    ids = torch.cat([prompt_ids, completion], 1)
    valid = torch.cat([prompt_mask.bool(), kept], 1)
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), completion.masked_fill(~kept, IGNORE_INDEX)], 1)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # each row's tokens first, in order
    valid = valid.gather(1, order)
    width = int(valid.sum(1).max())
    valid = valid[:, :width]
    return {"input_ids": ids.gather(1, order)[:, :width].masked_fill(~valid, pad_id),
            "attention_mask": valid.long(), "labels": labels.gather(1, order)[:, :width],
            "lengths": kept.sum(1), "finished": is_eos.any(1)}


class GRPOModule(VLMModule):
    """Args beyond VLMModule's:

    `rewards`: reward functions (`train.rewards`, by class_path), summed with `reward_weights`
    (default 1 each); default exact match. `group_size`: completions per prompt (G).
    `temperature`, `top_p`, `top_k` (0: off), `max_completion_tokens`: the sampling.
    `beta`: the KL coefficient (0.04 as in the paper; 0 skips the reference's forward).
    `clip_eps`: the ratio clip. `num_iterations`: optimizer steps per batch of samples (mu).
    `max_grad_norm`: gradient clipping (optimization is manual: leave `trainer.gradient_clip_val` unset).
    `seed`: of the sampling. Start from an SFT checkpoint with `init_from`.
    """

    def __init__(self, *args, rewards: list[Reward] | None = None, reward_weights: list[float] | None = None,
                 group_size: int = 4, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_completion_tokens: int = 16, beta: float = 0.04, clip_eps: float = 0.2,
                 num_iterations: int = 1, max_grad_norm: float | None = 1.0, seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rewards = list(rewards) if rewards else [ExactMatch()]
        self.reward_weights = list(reward_weights) if reward_weights is not None else [1.0] * len(self.rewards)
        if len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights: {len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are relative to the group), got {group_size}")
        for name, value in (("num_iterations", num_iterations),
                            ("max_completion_tokens", max_completion_tokens)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        self.group_size, self.temperature, self.top_p, self.top_k = group_size, temperature, top_p, top_k
        self.max_completion_tokens, self.beta, self.clip_eps = max_completion_tokens, beta, clip_eps
        self.num_iterations, self.max_grad_norm, self.seed = num_iterations, max_grad_norm, seed
        self.automatic_optimization = False  # several optimizer steps per batch of samples
        # a plain attribute, not a submodule: not trained, not saved, not in the optimizer
        self.__dict__["reference"] = build_reference(self.model)

    token_weighted_loss = False  # a mean over each completion's tokens, then over completions (the paper's)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # sampling inside the training step leaves FSDP units mid-forward for the backward that follows
            raise ValueError("grpo: trainer.strategy FSDP is not supported yet (sampling inside a training step); "
                             "use ddp")
        self.reference.to(self.device)

    def sample(self, batch: dict) -> Tensor:
        """(N, C) sampled completion ids for the (left-padded) prompts, in eval mode, under an RNG
        seeded from (seed, global step, rank) and restored afterwards."""
        state = int(np.random.SeedSequence([self.seed, self.global_step, self.global_rank]).generate_state(1)[0])
        devices = [self.device] if self.device.type == "cuda" else []
        synced = {"synced_gpus": True} if self._trainer is not None and self.sharded else {}
        with torch.random.fork_rng(devices=devices), evaluating(self.model):
            torch.manual_seed(state)
            return self.model.generate(
                batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                max_new_tokens=self.max_completion_tokens, do_sample=True, temperature=self.temperature,
                top_p=self.top_p, top_k=self.top_k, suppress_tokens=[self.model.language.image_token_id], **synced)

    def rollout(self, batch: dict) -> dict:
        tok = self.model.tokenizer
        completion = self.sample(batch)
        rows = rollout_rows(batch["input_ids"], batch["attention_mask"], completion, tok.eos_token_id,
                            tok.pad_token_id)
        rows["pixel_values"] = batch["pixel_values"]
        rows["texts"] = tok.batch_decode(completion, skip_special_tokens=True)  # stops at EOS; padding follows
        return rows

    def score(self, texts: list[str], meta: list[dict]) -> tuple[Tensor, dict[str, float]]:
        """(N,) weighted reward sums on this device, and each reward function's mean (for logging)."""
        answers = [str(m["answer"]) for m in meta]
        total = torch.zeros(len(texts), dtype=torch.float32)
        means = {}
        for fn, weight in zip(self.rewards, self.reward_weights):
            values = torch.tensor(fn(texts, answers), dtype=torch.float32)
            total += weight * values
            means[f"train/reward_{fn.name}"] = values.mean().item()
        return total.to(self.device), means

    def _zero_loss(self, batch_idx: int) -> Tensor:
        """A zero loss through the policy (every rank steps through the same collectives)."""
        if self._last_good is None:
            return zero_through_parameters(self)
        return token_logprobs(self.model, *self._last_good).sum() * 0.0

    def _optimizer_step(self, loss: Tensor) -> None:
        opt, sched = self.optimizers(), self.lr_schedulers()
        self.manual_backward(loss)
        if self.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        self.count_unused(batch)
        if "input_ids" not in batch:  # every prompt unreadable: zero losses every rank steps through
            for _ in range(self.num_iterations):
                self._optimizer_step(self._zero_loss(batch_idx))
            return
        rows = self.rollout(batch)
        meta = list(batch["meta"])
        rewards, reward_means = self.score(rows["texts"], meta)
        advantages = group_advantages(rewards, self.group_size)
        args = (rows["input_ids"], rows["attention_mask"], rows["pixel_values"], rows["labels"])
        mask = shifted_targets(rows["labels"]) != IGNORE_INDEX  # completion tokens only
        self._last_good = args
        lengths = rows["lengths"].float()
        self.data_guard.add_targets(int(lengths.sum()))
        with torch.no_grad():
            ref = self.reference(*args) if self.beta else None
            old = token_logprobs(self.model, *args) if self.num_iterations > 1 else None
        losses, kls, clipped = [], [], []
        for _ in range(self.num_iterations):
            logprobs = token_logprobs(self.model, *args)
            # one step per batch: the sampling policy is the policy (ratio 1, the gradient is the paper's)
            loss, stats = grpo_loss(logprobs, logprobs.detach() if old is None else old, ref, advantages, mask,
                                    self.clip_eps, self.beta)
            self.finite_guard.observe(loss, self.global_step, batch_idx)
            self._optimizer_step(loss)
            losses.append(loss.detach())
            kls.append(stats.kl)
            clipped.append(stats.clip_fraction)
        mean = lambda xs: torch.stack(xs).mean()  # noqa: E731  over the optimizer steps on this batch
        self.log_rollouts(mean(losses), mean(kls), mean(clipped), rewards, reward_means, lengths, rows, meta)

    def log_rollouts(self, loss, kl, clip_fraction, rewards, reward_means, lengths, rows, meta) -> None:
        """Means over the batch's optimizer steps (loss, KL, clip fraction) and over its rollouts."""
        n = rewards.numel()
        log = {"train/loss": loss, "train/reward": rewards.mean(), "train/reward_std": rewards.std(),
               "train/kl": kl, "train/clip_fraction": clip_fraction,
               "train/completion_length": lengths.mean(), "train/finished": rows["finished"].float().mean(),
               **reward_means}
        records = [{"type": m.get("type"), "correct": vqa_accuracy(t, [str(m["answer"])]) == 1.0}
                   for t, m in zip(rows["texts"], meta)]
        log.update({f"train/rollout_{k}": v for k, v in accuracy_by_type(records, self.type_groups).items()})
        self.log_dict(log, on_step=True, batch_size=n)
        self.log("train/grpo_loss", loss, prog_bar=True, on_step=True, batch_size=n)
