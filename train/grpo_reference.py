"""The frozen reference of the `grpo` stage and the per-token log-probabilities both it and the policy use.

With a LoRA-adapted LM the reference is the policy itself with its adapter disabled (peft's
`disable_adapter()`) and its other trained parameters (connector, cross-attention, ...) set back to
their starting values for the call: the (possibly 4-bit) LM is never copied. Otherwise it is a frozen
copy, as DPO's (`train.dpo_module.Reference`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from models.losses import shifted_targets, token_nll
from models.peft import LoRA
from train.frozen_policy import FrozenPolicy


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None,
                   labels: Tensor) -> Tensor:
    """(N, L) log p(next label) at each position whose next label is not -100, 0 elsewhere: position
    t scores token t+1 (`shifted_targets`), never holding an fp32 copy of the logits (`token_nll`)."""
    logits, _ = model(input_ids, attention_mask, pixel_values)
    nll = token_nll(logits.flatten(0, 1), shifted_targets(labels).flatten())
    return -nll.view(labels.shape)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the block (no dropout), each put back to its own mode after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class FrozenCopy(FrozenPolicy):
    """A frozen eval-mode copy of the starting policy; its forward is the per-token log-probabilities."""

    def forward(self, *args: Tensor) -> Tensor:
        return token_logprobs(self.model, *args)


class AdapterDisabledReference:
    """The policy with its LoRA adapter off and its other trained parameters at their starting values.

    Holds the policy by reference (not a submodule of anything) and a copy of only those other trained
    parameters, taken at construction: before a checkpoint is resumed, so from `init_from` or the seeded
    initialisation, as a frozen copy would be."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        adapter = {id(p) for p in policy.language.adapter_parameters()}
        self.start = {n: p.detach().clone() for n, p in policy.named_parameters()
                      if p.requires_grad and id(p) not in adapter}

    def to(self, device: torch.device) -> "AdapterDisabledReference":
        self.start = {n: v.to(device) for n, v in self.start.items()}
        return self

    @contextmanager
    def _starting_values(self) -> Iterator[None]:
        params = dict(self.policy.named_parameters())
        current = {n: params[n].data for n in self.start}
        try:
            for n, value in self.start.items():
                params[n].data = value
            yield
        finally:
            for n, value in current.items():
                params[n].data = value

    def __call__(self, *args: Tensor) -> Tensor:
        with torch.no_grad(), evaluating(self.policy), self._starting_values(), \
                self.policy.language.model.disable_adapter():
            return token_logprobs(self.policy, *args)


def build_reference(policy: nn.Module) -> FrozenCopy | AdapterDisabledReference:
    """Adapter-disabled for a LoRA-adapted LM (no second copy of the LM), a frozen copy otherwise."""
    if isinstance(getattr(policy.language, "adapter", None), LoRA):
        return AdapterDisabledReference(policy)
    return FrozenCopy(policy)
