"""Strategies from config: FSDP units and checkpointed layers found on the model itself (tiny and
full-scale models), and a 2-process FSDP run on CPU (gloo) launched as users launch it."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from tests.tiny import experiment_config, launch_fit, module_config, tiny_world
from train.checkpoint import build_module
from train.strategies import FSDP, DeepSpeed, decoder_layer_classes, vision_block_classes

ROOT = Path(__file__).resolve().parent.parent
HF_CLIP = {"class_path": "models.vision.HFVision", "init_args": {"model_type": "clip", "select_layer": -1, "config": {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 32, "patch_size": 8}}}
OPEN_CLIP = {"class_path": "models.vision.OpenCLIPVision", "init_args": {"select_layer": -1, "model_config": {
    "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}}}


def names(classes) -> list[str]:
    return sorted(c.__name__ for c in classes)


def flamingo_section(world: Path, vision: dict, every: int = 1, layers: int = 2, stage: str = "full") -> dict:
    cfg = module_config(world, stage=stage)
    model = cfg["init_args"]["model"]
    model["class_path"] = "models.flamingo.Flamingo"
    model["init_args"].pop("connector")
    model["init_args"]["vision"] = copy.deepcopy(vision)
    model["init_args"]["language"]["init_args"]["config"]["num_hidden_layers"] = layers
    model["init_args"].update({"resampler": {"class_path": "models.resampler.PerceiverResampler",
                                             "init_args": {"num_latents": 4, "depth": 1, "heads": 2, "dim_head": 16}},
                               "cross_attn_every_n_layers": every, "xattn_heads": 2, "xattn_dim_head": 16})
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("world"))


def test_llava_units_are_decoder_layers_and_vision_blocks(world):
    cfg = module_config(world)
    cfg["init_args"]["model"]["init_args"]["vision"] = HF_CLIP
    vlm = build_module(cfg).model
    assert names(FSDP().plan(vlm)[0]) == ["CLIPEncoderLayer", "LlamaDecoderLayer"]  # not CLIP's embeddings
    assert names(FSDP().plan(vlm)[1]) == ["LlamaDecoderLayer"]
    bare = FSDP(wrap_vision=False, activation_checkpointing=False)
    assert bare.plan(vlm) == (decoder_layer_classes(vlm), set())
    # the tests' CNN tower (one block per stage) has no repeated block: it stays in the root unit
    assert vision_block_classes(build_module(module_config(world)).model.vision) == set()


def test_flamingo_units_look_through_the_cross_attention_wrappers(world):
    # cross-attention before every 2nd of 3 layers: the layer list holds a FlamingoLayer and two plain layers
    vlm = build_module(flamingo_section(world, OPEN_CLIP, every=2, layers=3)).model
    layers = vlm.language.model.model.layers
    assert sorted(type(m).__name__ for m in layers) == ["FlamingoLayer", "LlamaDecoderLayer", "LlamaDecoderLayer"]
    wrapped, checkpointed = FSDP().plan(vlm)
    # the resampler and the cross-attention blocks are units of their own, not parts of the root unit
    assert names(wrapped) == ["GatedCrossAttentionBlock", "LlamaDecoderLayer", "PerceiverResampler",
                              "ResidualAttentionBlock"]
    assert names(checkpointed) == ["LlamaDecoderLayer"]


FLAMINGO_BRIDGE = ("GatedCrossAttentionBlock", "PerceiverResampler")


@pytest.mark.parametrize("config, lm_layer, vision_block, bridge", [
    ("llava-1.5-7b/finetune.yaml", "LlamaDecoderLayer", "CLIPEncoderLayer", ()),
    ("openflamingo-3b.yaml", "MptBlock", "ResidualAttentionBlock", FLAMINGO_BRIDGE),
    ("openflamingo-4b.yaml", "GPTNeoXLayer", "ResidualAttentionBlock", FLAMINGO_BRIDGE),
])
def test_full_scale_models_on_meta(tmp_path, config, lm_layer, vision_block, bridge):
    from data.tokenizer import train_tokenizer
    from models.interop import build_on_meta

    train_tokenizer(["a small corpus"], tmp_path, vocab_size=300)
    module = build_on_meta(yaml.safe_load((ROOT / "configs/experiments" / config).read_text())["model"], str(tmp_path))
    wrapped, checkpointed = FSDP().plan(module.model)
    assert names(wrapped) == sorted([lm_layer, vision_block, *bridge]) and names(checkpointed) == [lm_layer]


def test_llava_finetune_config_asks_for_bf16_compute_fp32_reduce():
    cfg = yaml.safe_load((ROOT / "configs/experiments/llava-1.5-7b/finetune.yaml").read_text())["trainer"]["strategy"]
    assert cfg["class_path"] == "train.strategies.FSDP"
    strategy = FSDP(**cfg["init_args"])
    mp = strategy.mixed_precision_config
    assert (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype) == (torch.bfloat16, torch.float32, torch.float32)
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy.kwargs["use_orig_params"]
    assert strategy.init_on_rank0  # one host copy of the 7B weights (rank 0's), the other ranks build on meta


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_the_package_names_it():
    with pytest.raises(ModuleNotFoundError, match="needs the `deepspeed` package"):
        DeepSpeed(stage=3)


class RecordFSDP(L.Callback):
    """Per rank: the FSDP units and checkpointed layers, losses, local shard size and full weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.losses = Path(out_dir), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = trainer.strategy.model
        units = [type(getattr(m.module, "_checkpoint_wrapped_module", m.module)).__name__ for m in root.modules()
                 if isinstance(m, FullyShardedDataParallel) and m is not root]
        ckpt = [type(m._checkpoint_wrapped_module).__name__ for m in root.modules() if isinstance(m, CheckpointWrapper)]
        local = sum(p.numel() for p in pl_module.parameters())
        plain = lambda n: n.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")  # noqa: E731
        with FullyShardedDataParallel.summon_full_params(root, writeback=False):
            weights = {plain(n): p.detach().clone() for n, p in pl_module.named_parameters()}
        rank = trainer.global_rank
        torch.save(weights, self.out_dir / f"rank{rank}.pt")
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps({
            "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size, "units": sorted(units),
            "checkpointed": sorted(ckpt), "losses": self.losses, "local_params": local,
            "counted_params": sum(total for _, total, _ in pl_module._parameter_counts),
            "hf_checkpointing": pl_module.model.language.model.is_gradient_checkpointing,
            "param_groups": pl_module.param_group_names}))


def test_two_process_fsdp_on_cpu(tmp_path):
    """FULL_SHARD over 2 gloo ranks, bf16 compute / fp32 reduce: a Flamingo with a ViT tower trained on
    two weighted sources (two forwards per step through the same FSDP units, one backward) for two
    epochs, from 3 shards of unequal size per source (split, they would give one rank more batches
    than the other and hang at the epoch's end; resampled epochs are equal on every rank)."""
    from data.shapes import write_shapes

    shapes = tmp_path / "shapes"
    write_shapes(shapes, train_images=24, val_images=2, seed=0, max_objects=2, shard_size=10)  # 10 + 10 + 4
    assert len(list((shapes / "shards").glob("train-*.tar"))) == 3
    steps = 4  # 2 epochs of 2 batches per rank and source
    cfg = experiment_config(shapes, tmp_path / "runs", max_steps=-1)
    cfg["model"] = flamingo_section(shapes, HF_CLIP)
    cfg["model"]["init_args"]["model"]["init_args"]["language"]["init_args"]["gradient_checkpointing"] = True
    cfg["trainer"].update({
        "devices": 2, "limit_val_batches": 0, "enable_checkpointing": False, "max_epochs": 2,
        "val_check_interval": None,
        "strategy": {"class_path": "train.strategies.FSDP", "init_args": {"mixed_precision": "bf16"}},
        "callbacks": [{"class_path": "tests.test_strategies.RecordFSDP", "init_args": {"out_dir": str(tmp_path)}}]})
    cfg["data"] = {"class_path": "data.multisource.MultiSourceDataModule", "init_args": {"num_workers": 0, "sources": {
        "captions": {"shards": str(shapes / "shards" / "train-*.tar"), "weight": 0.2, "batch_size": 3,
                     "samples_per_epoch": 12},
        "documents": {"shards": str(shapes / "shards" / "interleaved-train-*.tar"), "weight": 1.0, "batch_size": 2,
                      "samples_per_epoch": 8}}}}
    launch_fit(cfg, tmp_path / "fsdp.yaml")

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rec in records:
        assert rec["strategy"] == "FSDP" and rec["world_size"] == 2
        # one unit per decoder layer (2), per CLIP encoder layer (2), per cross-attention block (2) and
        # the resampler; the decoder layers checkpointed
        assert rec["units"] == (["CLIPEncoderLayer"] * 2 + ["GatedCrossAttentionBlock"] * 2
                                + ["LlamaDecoderLayer"] * 2 + ["PerceiverResampler"])
        assert rec["checkpointed"] == ["LlamaDecoderLayer"] * 2
        assert rec["hf_checkpointing"] is False  # the strategy's checkpointing replaced the LM's own
        assert len(rec["losses"]) == steps and all(math.isfinite(x) for x in rec["losses"])
    assert records[0]["losses"] != records[1]["losses"]  # each rank its own batches
    # weight decay groups as in one process, though FSDP hands the optimizer flat 1-D shards
    one = build_module(cfg["model"])
    expected = {}
    for part in ("vision", "connector", "cross_attention", "special_tokens", "language"):
        named = [(n, p) for n, p in getattr(one.model, part).named_parameters() if p.requires_grad]
        expected[part] = sorted(n for n, p in named if p.ndim >= 2)
        expected[f"{part}_no_decay"] = sorted(n for n, p in named if p.ndim < 2)
    expected = {k: v for k, v in expected.items() if v}
    assert expected["language"] and expected["language_no_decay"]
    assert all(rec["param_groups"] == expected for rec in records)

    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    total = sum(w.numel() for w in weights[0].values())
    assert sum(r["local_params"] for r in records) == total  # sharded: each rank held its part only
    assert all(r["counted_params"] == total for r in records)  # the logged table counts the whole model
    assert all(r["local_params"] < 0.75 * total for r in records)
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    L.seed_everything(0)
    initial = dict(build_module(cfg["model"]).named_parameters())
    assert initial.keys() == weights[0].keys()
    for part in ("cross_attention", "connector", "language.model.model.layers", "vision"):
        assert any(not torch.equal(initial[k], weights[0][k]) for k in initial if k.startswith(f"model.{part}")), part


def test_two_process_fsdp_llava_validates_with_synced_generation(tmp_path):
    """FSDP validation generates on every rank through sharded layers (each forward an all-gather):
    ranks step together (`synced_gpus`) and the gathered predictions cover the whole val set. The
    run saves `last.ckpt` sharded (a directory), which loads whole in one process, as data, for
    eval/export (`load_module`) and for a later stage's `init_from`."""
    from models.language import checkpoint_weights
    from models.sharded_checkpoint import is_sharded_checkpoint
    from train.checkpoint import load_module

    world = tiny_world(tmp_path)
    cfg = experiment_config(world, tmp_path / "runs", max_steps=2)
    cfg["trainer"].update({"devices": 2, "val_check_interval": 2, "callbacks": [
        {"class_path": "tests.test_strategies.RecordFSDP", "init_args": {"out_dir": str(tmp_path)}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}],
        "strategy": {"class_path": "train.strategies.FSDP", "init_args": {"state_dict_type": "sharded"}}})
    cfg["model"]["init_args"].update({"stage": "finetune", "max_new_tokens": 6})
    cfg["data"]["init_args"].update({"max_val_samples": 7, "batch_size": 2})
    launch_fit(cfg, tmp_path / "fsdp_val.yaml")
    run = tmp_path / "runs" / "tiny" / "version_0"
    predictions = [json.loads(line) for line in (run / "predictions" / "val_step0000002.jsonl").open()]
    assert [p["index"] for p in predictions] == list(range(7))
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("val/acc")]
    assert len(rows) == 1 and float(rows[0]["val/acc"]) == sum(p["correct"] for p in predictions) / 7

    last = tmp_path / "ckpt" / "last.ckpt"
    assert is_sharded_checkpoint(last)
    trained = torch.load(tmp_path / "rank0.pt")
    module = load_module(last)
    loaded = dict(module.named_parameters())
    assert loaded.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key
    connector = checkpoint_weights(last, "model.connector.", "init_from")
    assert connector and all(torch.equal(v, trained[f"model.connector.{k}"]) for k, v in connector.items())


class RecordDPOReference(L.Callback):
    """Per rank: how the DPO reference is held under FSDP; rank 0 also its full weights and a checkpoint."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        ref = pl_module.reference
        units = [type(m.module).__name__ for m in ref.modules() if isinstance(m, FullyShardedDataParallel) and m is not ref]
        plain = lambda n: n.replace("_fsdp_wrapped_module.", "")  # noqa: E731
        local = sum(p.numel() for p in ref.parameters())
        with FullyShardedDataParallel.summon_full_params(ref, writeback=False):
            weights = {plain(n): p.detach().clone() for n, p in ref.named_parameters()}
        trainer.save_checkpoint(self.out_dir / "dpo.ckpt")  # every rank: FSDP gathers the full state dict
        rank = trainer.global_rank
        if rank == 0:
            torch.save(weights, self.out_dir / "reference.pt")
        (self.out_dir / f"dpo_rank{rank}.json").write_text(json.dumps({
            "sharded": isinstance(ref, FullyShardedDataParallel), "units": sorted(units), "local_params": local,
            "full_params": sum(w.numel() for w in weights.values()),
            "training": any(m.training for m in ref.modules()),
            "trainable": any(p.requires_grad for p in ref.parameters()),
            "optimized": sum(p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"]
                             if any(p is q for q in ref.parameters())),
        }))


def test_two_process_fsdp_dpo_shards_the_frozen_reference(tmp_path):
    """DPO under FSDP on 2 gloo ranks: the reference is sharded with the policy's units (not a full copy
    per rank), stays frozen and in eval mode, is in no optimizer group and not in the checkpoint."""
    from data.shapes import write_shapes

    shapes = tmp_path / "shapes"
    write_shapes(shapes, train_images=8, val_images=2, seed=0, max_objects=2)
    cfg = experiment_config(shapes, tmp_path / "runs", max_steps=2)
    cfg["model"] = module_config(shapes, stage="finetune")
    cfg["model"]["class_path"] = "train.dpo_module.DPOModule"
    cfg["model"]["init_args"]["model"]["init_args"]["vision"] = HF_CLIP
    cfg["trainer"].update({
        "devices": 2, "limit_val_batches": 0, "enable_checkpointing": False, "val_check_interval": None,
        "strategy": {"class_path": "train.strategies.FSDP", "init_args": {"activation_checkpointing": False}},
        "callbacks": [{"class_path": "tests.test_strategies.RecordDPOReference",
                       "init_args": {"out_dir": str(tmp_path)}}]})
    cfg["data"] = {"class_path": "train.data_module.PreferenceDataModule",
                   "init_args": {"train_json": str(shapes / "preference_train.jsonl"), "batch_size": 2,
                                 "num_workers": 0}}
    launch_fit(cfg, tmp_path / "dpo.yaml")

    records = [json.loads((tmp_path / f"dpo_rank{r}.json").read_text()) for r in range(2)]
    total = records[0]["full_params"]
    for rec in records:
        assert rec["sharded"] and rec["units"] == ["CLIPEncoderLayer"] * 2 + ["LlamaDecoderLayer"] * 2
        assert not rec["training"] and not rec["trainable"] and rec["optimized"] == 0
        assert rec["local_params"] < 0.75 * total
    assert sum(r["local_params"] for r in records) == total  # each rank holds its shard only
    rows = list(csv.DictReader(open(tmp_path / "runs" / "tiny" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), abs=1e-5)  # sharded reference == policy
    ckpt = torch.load(tmp_path / "dpo.ckpt", weights_only=True)
    L.seed_everything(0)
    initial = build_module(cfg["model"])
    assert set(ckpt["state_dict"]) == set(initial.state_dict())  # the policy's keys, no reference
    reference = torch.load(tmp_path / "reference.pt")
    policy_start = {f"model.{k}": v for k, v in initial.model.named_parameters()}
    assert reference.keys() == policy_start.keys()
    assert all(torch.equal(reference[k], policy_start[k]) for k in reference)  # the starting policy, untrained
    trained = ckpt["state_dict"]
    assert any(not torch.equal(trained[k], policy_start[k]) for k in policy_start if k.startswith("model.language"))
