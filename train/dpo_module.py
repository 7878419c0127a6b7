"""The `dpo` stage: Direct Preference Optimization (Rafailov et al. 2023) on a trained LLaVA.

Sigmoid loss -log sigma(beta * ((log pi(y_w) - log pi(y_l)) - (log ref(y_w) - log ref(y_l)))),
log-probabilities summed over response tokens only. The reference is a frozen copy of the
starting policy, kept outside the trained module (not in the optimizer, not in checkpoints) and,
under `train.strategies.FSDP`, sharded in its own FSDP instance rather than copied whole to every
rank; validation is the parent's generation-based VQA scoring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.frozen_policy import FrozenPolicy
from train.module import VLMModule, zero_through_parameters
from train.strategies import FSDP


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen rewards, rejected rewards); rewards are beta * (policy - reference)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


class Reference(FrozenPolicy):
    """The frozen starting policy. Its forward is the sequence log-probabilities, so a copy sharded
    in its own FSDP instance gathers its parameters when called; it never leaves eval mode."""

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.model.sequence_logprobs(*args)


class DPOModule(VLMModule):
    """Args beyond VLMModule's: `beta` (0.1 as in the paper). Start from an SFT checkpoint with
    `init_from`; `stage` says what trains (e.g. `finetune`: connector + LM)."""

    def __init__(self, *args, beta: float = 0.1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        # a plain attribute, not a submodule: not trained, not saved, not in the optimizer
        self.__dict__["reference"] = Reference(self.model)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        strategy = self.trainer.strategy
        if isinstance(strategy, FSDP):  # sharded as the policy is, not a full copy per rank
            self.__dict__["reference"] = strategy.shard_frozen(self.reference).eval()
        else:
            self.reference.to(self.device)

    token_weighted_loss = False  # a loss per preference pair, not per token

    def _zero_loss(self, batch_idx: int) -> torch.Tensor:
        """VLMModule's zero loss, replaying the last good pairs through the policy's log-probabilities."""
        if self._last_good is None:
            return zero_through_parameters(self)
        return self.model.sequence_logprobs(*self._last_good).sum() * 0.0

    def training_step(self, batch: dict, batch_idx: int):
        self.count_unused(batch)
        if "input_ids" not in batch:  # every pair unreadable: a zero loss every rank steps through
            return self._zero_loss(batch_idx)
        args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["labels"],
                batch.get("image_positions"))  # found on the host by a collator with placeholders
        self._last_good = args
        self.data_guard.add_targets(batch["num_targets"])
        policy = self.model.sequence_logprobs(*args)
        with torch.no_grad():
            ref = self.reference(*args)
        b = batch["num_pairs"]
        loss, chosen, rejected = dpo_loss(policy[:b], policy[b:], ref[:b], ref[b:], self.beta)
        self.finite_guard.observe(loss, self.global_step, batch_idx)
        log = {"train/loss": loss, "train/reward_chosen": chosen.mean(), "train/reward_rejected": rejected.mean(),
               "train/reward_margin": (chosen - rejected).mean(),
               "train/reward_accuracy": (chosen > rejected).float().mean()}
        self.log_dict(log, prog_bar=False, on_step=True, batch_size=b)
        self.log("train/dpo_loss", loss, prog_bar=True, on_step=True, batch_size=b)
        return loss
