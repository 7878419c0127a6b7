"""Sharded training strategies from config, with what to wrap read off the model itself.

Lightning's `strategy: fsdp` wraps the whole model as one unit (nothing is sharded layer by
layer) and checkpoints nothing; getting per-layer units means naming the layer classes, which
differ per backbone (LlamaDecoderLayer, MptBlock, GPTNeoXLayer, open_clip's
ResidualAttentionBlock, ...). Here they are found on the model being trained: the LM's decoder
layers by `models.language.decoder_layer_list` (as Flamingo and the adapters find them: from
transformers' `_no_split_modules`, the blocks its authors declare indivisible), the vision
tower's blocks as its largest list of same-class modules. Never from a model name.

    trainer:
      strategy:
        class_path: train.strategies.FSDP
        init_args: {sharding: FULL_SHARD, mixed_precision: bf16, activation_checkpointing: true}
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from models.flamingo import Flamingo, FlamingoLayer
from models.language import decoder_layer_list

Sharding = Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _unwrap(layer: nn.Module) -> nn.Module:
    """A Flamingo decoder layer is the LM's own layer inside our cross-attention wrapper."""
    return layer.decoder_layer if isinstance(layer, FlamingoLayer) else layer


def repeated_block_class(module: nn.Module) -> type[nn.Module] | None:
    """The class of the largest (by parameters) ModuleList/Sequential of >= 2 modules all of one class."""
    best, best_size = None, 0
    for m in module.modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            kinds = {type(_unwrap(child)) for child in m}
            size = sum(p.numel() for p in m.parameters())
            if len(kinds) == 1 and size > best_size:
                best, best_size = kinds.pop(), size
    return best


def decoder_layer_classes(vlm: nn.Module) -> set[type[nn.Module]]:
    """The LM's decoder-layer classes, seen inside Flamingo's wrappers: a Flamingo's own list (maybe at a
    declared path), else `decoder_layer_list`, the one finder."""
    layers = vlm.decoder_layers if isinstance(vlm, Flamingo) else decoder_layer_list(vlm.language.model)[1]
    return {type(_unwrap(layer)) for layer in layers}


def vision_block_classes(vision: nn.Module) -> set[type[nn.Module]]:
    """The tower's repeated block (CLIPEncoderLayer, ResidualAttentionBlock, timm's Block); none for a
    CNN whose stages hold one block each."""
    block = repeated_block_class(vision)
    return set() if block is None else {block}


class _IsInstance:
    """check_fn for activation checkpointing (a class, not a lambda: strategies may be pickled)."""

    def __init__(self, classes: set[type[nn.Module]]) -> None:
        self.classes = tuple(classes)

    def __call__(self, module: nn.Module) -> bool:
        return isinstance(module, self.classes)


class FSDP(FSDPStrategy):
    """FSDP with one unit per LM decoder layer (and per vision block), its layers checkpointed; a
    Flamingo's resampler and each gated cross-attention block are units too. `shard_frozen` shards
    a frozen model kept outside the trained module (DPO's reference) with the same units.

    sharding: FULL_SHARD shards parameters, gradients and optimizer state (ZeRO-3-like);
        SHARD_GRAD_OP keeps parameters whole between forward and backward (ZeRO-2-like);
        HYBRID_SHARD shards within a node and replicates across nodes; NO_SHARD is DDP.
    wrap_vision: each vision block its own unit too (a frozen tower's are sharded, not replicated).
    activation_checkpointing: recompute each decoder layer in backward (the LM's own
        `gradient_checkpointing` is turned off then, so nothing is recomputed twice). Only the
        LM's layer runs again: a Flamingo's cross-attention in front of it reads the media of
        the current call, so it is stored, not recomputed.
    mixed_precision: "bf16"/"fp16": unit parameters cast to that dtype for compute and the
        gradients reduced in fp32; buffers (rotary frequencies) and the sharded master weights
        stay fp32. None: as `trainer.precision` says (Lightning's default: all in that dtype).
    cpu_offload: parameters and gradients live in CPU memory between uses.
    state_dict_type: "full" checkpoints one file gathered on rank 0; "sharded" one per rank.
    """

    def __init__(self, sharding: Sharding = "FULL_SHARD", wrap_vision: bool = True,
                 activation_checkpointing: bool = True, mixed_precision: Literal["bf16", "fp16"] | None = None,
                 cpu_offload: bool = False, state_dict_type: Literal["full", "sharded"] = "full",
                 process_group_backend: str | None = None) -> None:
        mp = None
        if mixed_precision is not None:
            from torch.distributed.fsdp import MixedPrecision

            mp = MixedPrecision(param_dtype=_DTYPES[mixed_precision], reduce_dtype=torch.float32,
                                buffer_dtype=torch.float32)
        super().__init__(sharding_strategy=sharding, cpu_offload=cpu_offload, mixed_precision=mp,
                         state_dict_type=state_dict_type, process_group_backend=process_group_backend)
        self.wrap_vision, self.checkpoint_layers = wrap_vision, activation_checkpointing
        self.wrapped: set[type[nn.Module]] = set()
        self.checkpointed: set[type[nn.Module]] = set()

    def plan(self, vlm: nn.Module) -> tuple[set[type[nn.Module]], set[type[nn.Module]]]:
        """(classes wrapped as FSDP units, classes checkpointed) for a LLaVA or Flamingo. A Flamingo's
        resampler and gated cross-attention blocks are units too, not left whole in the root unit."""
        layers = decoder_layer_classes(vlm)
        wrapped = layers | (vision_block_classes(vlm.vision) if self.wrap_vision else set())
        if isinstance(vlm, Flamingo):
            wrapped |= {type(vlm.connector)} | {type(block) for block in vlm.cross_attention}
        return wrapped, (layers if self.checkpoint_layers else set())

    def shard_frozen(self, module: nn.Module) -> nn.Module:
        """A frozen model kept beside the trained one (DPO's reference) in its own FSDP instance, with
        the trained model's units: sharded like it, yet outside the trained module, so never in the
        optimizer or the checkpoint. Call it through its forward, which gathers its root's parameters."""
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if isinstance(module, FullyShardedDataParallel):
            return module
        kwargs = {**self.kwargs, "auto_wrap_policy": ModuleWrapPolicy(self.wrapped)}
        return FullyShardedDataParallel(module, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=self.root_device, **kwargs)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        vlm = self.lightning_module.model
        self.wrapped, self.checkpointed = self.plan(vlm)
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(self.wrapped)
        if self.checkpointed:
            self._activation_checkpointing_kwargs = {"check_fn": _IsInstance(self.checkpointed)}
            lm = vlm.language.model
            if getattr(lm, "is_gradient_checkpointing", False):
                lm.gradient_checkpointing_disable()
        rank_zero_info(f"FSDP units: {sorted(c.__name__ for c in self.wrapped)}; "
                       f"checkpointed: {sorted(c.__name__ for c in self.checkpointed)}")
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        # Lightning passes device_id=root_device.index, None on CPU, which torch's FSDP refuses
        # ("needs a non-CPU accelerator"); given the CPU device itself it runs on gloo (tests, debugging)
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                         mixed_precision=self.mixed_precision_config,
                                         sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                         **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


class DeepSpeed(DeepSpeedStrategy):
    """DeepSpeed ZeRO stage 2 (optimizer state and gradients sharded) or 3 (parameters too).

    Needs the `deepspeed` package. Precision follows `trainer.precision`; activation
    checkpointing is the LM's own (`LanguageModel(gradient_checkpointing=true)`). The model is
    built before the strategy sees it, so with stage 3 it must fit in CPU memory once at start.
    config: a DeepSpeed JSON file, used instead of the settings above.
    """

    def __init__(self, stage: Literal[2, 3] = 2, offload_optimizer: bool = False, offload_parameters: bool = False,
                 config: str | None = None) -> None:
        if importlib.util.find_spec("deepspeed") is None:
            raise ModuleNotFoundError("train.strategies.DeepSpeed needs the `deepspeed` package, which is not "
                                      "installed: `pip install deepspeed`, or use train.strategies.FSDP")
        super().__init__(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
                         config=config)
