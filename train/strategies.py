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
from models.meta_init import MaterializeEmpty

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


_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def plain_name(name: str) -> str:
    """A parameter's name as in the unwrapped model (FSDP and activation-checkpoint wrappers dropped)."""
    for wrapper in _WRAPPERS:
        name = name.replace(wrapper, "")
    return name


def take_rank0_values(root: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """After wrapping, every FSDP unit's parameters and every buffer take rank 0's values.

    `values`: on rank 0, its parameters as built (`named_parameters` before wrapping, held so the
    flattening does not free them); empty elsewhere. One unit is unsharded at a time (its own
    parameters, not those of the units nested in it): rank 0 writes its values in, broadcasts,
    and every rank keeps its shard.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    for prefix, unit in root.named_modules():
        if not isinstance(unit, FullyShardedDataParallel):
            continue
        nested = {id(p) for sub in unit.modules() if sub is not unit and isinstance(sub, FullyShardedDataParallel)
                  for p in sub.parameters()}
        with FullyShardedDataParallel.summon_full_params(unit, recurse=False, writeback=True):
            for name, p in unit.named_parameters():
                if id(p) in nested:
                    continue
                if values:
                    p.data.copy_(values[plain_name(f"{prefix}.{name}" if prefix else name)])
                dist.broadcast(p.data, src=0)
    for buffer in root.buffers():
        dist.broadcast(buffer, src=0)


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
    init_on_rank0: only rank 0 builds the model with its weights; every other rank builds it on
        the meta device (no storage, no weight file read: `chimera fit` arranges it, see
        `models.meta_init`) and receives rank 0's values while FSDP wraps each unit. Host memory
        then holds one copy of the weights (rank 0's), not one per GPU. False (the default): every
        rank builds and loads the whole model itself (a QLoRA LM cannot be built on meta)."""

    def __init__(self, sharding: Sharding = "FULL_SHARD", wrap_vision: bool = True,
                 activation_checkpointing: bool = True, mixed_precision: Literal["bf16", "fp16"] | None = None,
                 cpu_offload: bool = False, state_dict_type: Literal["full", "sharded"] = "full",
                 process_group_backend: str | None = None, init_on_rank0: bool = False) -> None:
        mp = None
        if mixed_precision is not None:
            from torch.distributed.fsdp import MixedPrecision

            mp = MixedPrecision(param_dtype=_DTYPES[mixed_precision], reduce_dtype=torch.float32,
                                buffer_dtype=torch.float32)
        # a unit built on meta gets empty storage as it is wrapped; rank 0's values come after
        # (`take_rank0_values`: torch's `sync_module_states` refuses CPU tensors, so gloo runs could not test it)
        rank0 = {"param_init_fn": MaterializeEmpty(self._unit_device)} if init_on_rank0 else {}
        super().__init__(sharding_strategy=sharding, cpu_offload=cpu_offload, mixed_precision=mp,
                         state_dict_type=state_dict_type, process_group_backend=process_group_backend, **rank0)
        self.init_on_rank0 = init_on_rank0
        self.built_on_meta = 0  # parameters this rank built on the meta device (set when wrapping)
        self.wrap_vision, self.checkpoint_layers = wrap_vision, activation_checkpointing
        self.wrapped: set[type[nn.Module]] = set()
        self.checkpointed: set[type[nn.Module]] = set()

    def _rank0_values(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Rank 0's parameters as built, kept until broadcast (flattening would free the parts that
        other ranks' shards hold); nothing on other ranks or without `init_on_rank0`."""
        if not self.init_on_rank0 or self.global_rank != 0:
            return {}
        return {plain_name(n): p.detach() for n, p in module.named_parameters()}

    def _unit_device(self) -> torch.device:
        return self.root_device

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
        values = self._rank0_values(module)
        wrapped = FullyShardedDataParallel(module, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                           **kwargs)
        if self.init_on_rank0:
            take_rank0_values(wrapped, values)
        return wrapped

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        vlm = self.lightning_module.model
        self.built_on_meta = sum(p.numel() for p in model.parameters() if p.is_meta)
        if self.built_on_meta and not self.init_on_rank0:
            raise ValueError("the model was built on the meta device, but FSDP(init_on_rank0: false) has no "
                             "rank to take its weights from")
        self.wrapped, self.checkpointed = self.plan(vlm)
        self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(self.wrapped)
        if self.checkpointed:
            self._activation_checkpointing_kwargs = {"check_fn": _IsInstance(self.checkpointed)}
            lm = vlm.language.model
            if getattr(lm, "is_gradient_checkpointing", False):
                lm.gradient_checkpointing_disable()
        rank_zero_info(f"FSDP units: {sorted(c.__name__ for c in self.wrapped)}; "
                       f"checkpointed: {sorted(c.__name__ for c in self.checkpointed)}")
        values = self._rank0_values(model)
        if self.root_device.type != "cpu":
            model = super()._setup_model(model)
        else:
            # Lightning passes device_id=root_device.index, None on CPU, which torch's FSDP refuses
            # ("needs a non-CPU accelerator"); given the CPU device itself it runs on gloo (tests, debugging)
            from torch.distributed.fsdp import FullyShardedDataParallel

            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                                             **self.kwargs)
            _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        if self.init_on_rank0:
            take_rank0_values(model, values)
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
