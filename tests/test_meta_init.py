"""FSDP ranks other than 0 build the model on the meta device (no storage, no weight file read) and
take rank 0's weights while it is wrapped: proven on 2 gloo processes launched by `chimera fit`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import Namespace
from safetensors.torch import load_file
from torch import nn

from models.language import LanguageModel
from models.meta_init import MaterializeEmpty, has_meta_tensors
from models.vision import HFVision
from tests.tiny import LM_CONFIG, experiment_config, launch_fit, tiny_world
from train.fit_cli import builds_on_meta

CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 8}


def pretrained_dirs(root: Path, world: Path) -> tuple[Path, Path]:
    """A tiny LM with tied input/output embeddings and a tiny CLIP tower, saved as transformers saves them."""
    lm = LanguageModel(config={**LM_CONFIG, "tie_word_embeddings": True}, tokenizer=str(world / "tokenizer"))
    lm.model.save_pretrained(root / "lm")
    lm.tokenizer.save_pretrained(root / "lm")
    HFVision(config=CLIP, select_layer=-1).model.save_pretrained(root / "clip")
    return root / "lm", root / "clip"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return (*pretrained_dirs(root, tiny_world(root)), tiny_world(root))


def test_pretrained_parts_on_meta_read_no_weights(dirs):
    lm_dir, clip_dir, _ = dirs
    with torch.device("meta"):
        lm = LanguageModel(name_or_path=str(lm_dir))
        tower = HFVision(name_or_path=str(clip_dir), select_layer=-1)
    real = LanguageModel(name_or_path=str(lm_dir))
    assert all(t.is_meta for t in (*lm.parameters(), *tower.parameters()))
    assert {n: p.shape for n, p in lm.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight  # tied, as built for real
    assert tower.image_size == 32 and lm.image_token_id == real.image_token_id


def test_quantized_lm_refuses_the_meta_device(dirs):
    with torch.device("meta"), pytest.raises(ValueError, match="quantized LM cannot be built on the meta device"):
        LanguageModel(name_or_path=str(dirs[0]), quantization="nf4")


def test_materialize_keeps_tied_weights_tied():
    with torch.device("meta"):
        model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False), nn.BatchNorm1d(5))
    model[1].weight = model[0].weight
    init = MaterializeEmpty(lambda: torch.device("cpu"))
    for module in model.modules():
        init(module)
    assert not has_meta_tensors(model)
    assert model[1].weight is model[0].weight and isinstance(model[0].weight, nn.Parameter)
    assert model[2].running_var.shape == (5,) and model[2].weight.requires_grad


@pytest.mark.parametrize("rank, strategy, expected", [
    ("1", {"class_path": "train.strategies.FSDP", "init_args": {"init_on_rank0": True}}, True),
    ("0", {"class_path": "train.strategies.FSDP", "init_args": {"init_on_rank0": True}}, False),
    ("1", {"class_path": "train.strategies.FSDP"}, False),  # opt-in
    ("1", {"class_path": "train.strategies.FSDP", "init_args": {"init_on_rank0": False}}, False),
    ("1", {"class_path": "lightning.pytorch.strategies.DDPStrategy"}, False),
    ("1", "ddp", False),
])
def test_which_processes_build_on_meta(monkeypatch, rank, strategy, expected):
    for key in ("RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", rank)
    value = Namespace(class_path=strategy["class_path"], init_args=Namespace(**strategy.get("init_args", {}))) \
        if isinstance(strategy, dict) else strategy
    assert builds_on_meta(Namespace(strategy=value)) is expected


class RecordStart(L.Callback):
    """Per rank, once wrapped: how many parameters it built on meta, and the full weights it trains from."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_start(self, trainer, pl_module) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel

        from train.strategies import plain_name

        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            weights = {plain_name(n): p.detach().clone() for n, p in pl_module.named_parameters()}
        rank = trainer.global_rank
        torch.save(weights, self.out_dir / f"start{rank}.pt")
        (self.out_dir / f"start{rank}.json").write_text(json.dumps({
            "built_on_meta": trainer.strategy.built_on_meta, "total": sum(w.numel() for w in weights.values()),
            "local": sum(p.numel() for p in pl_module.parameters())}))


def test_two_process_fsdp_builds_on_meta_and_trains_from_rank0_weights(tmp_path, dirs):
    """Rank 1 builds nothing but shapes (0 bytes of weights), rank 0 loads the pretrained LM and tower;
    once wrapped, both ranks' shards hold rank 0's values: the full weights gathered on either rank
    equal the pretrained files (the tied head included) and rank 0's seeded connector."""
    from train.checkpoint import build_module

    lm_dir, clip_dir, world = dirs
    cfg = experiment_config(world, tmp_path / "runs", max_steps=2)
    model = cfg["model"]["init_args"]["model"]["init_args"]
    model["language"]["init_args"] = {"name_or_path": str(lm_dir)}
    model["vision"] = {"class_path": "models.vision.HFVision",
                       "init_args": {"name_or_path": str(clip_dir), "select_layer": -1}}
    cfg["trainer"].update({"devices": 2, "limit_val_batches": 0, "enable_checkpointing": False,
                           "strategy": {"class_path": "train.strategies.FSDP", "init_args": {"init_on_rank0": True}},
                           "callbacks": [{"class_path": "tests.test_meta_init.RecordStart",
                                          "init_args": {"out_dir": str(tmp_path)}}]})
    launch_fit(cfg, tmp_path / "meta.yaml")

    records = [json.loads((tmp_path / f"start{r}.json").read_text()) for r in range(2)]
    assert records[0]["built_on_meta"] == 0
    assert records[1]["built_on_meta"] == records[1]["total"] > 0  # every parameter, no storage
    assert sum(r["local"] for r in records) == records[0]["total"]  # sharded alike: ties kept on rank 1
    starts = [torch.load(tmp_path / f"start{r}.pt") for r in range(2)]
    lm = load_file(lm_dir / "model.safetensors")
    clip = load_file(clip_dir / "model.safetensors")
    L.seed_everything(0)
    rank0 = dict(build_module(copy.deepcopy(cfg["model"])).named_parameters())
    for start in starts:
        assert start.keys() == rank0.keys()
        for name, value in start.items():
            assert torch.equal(value, rank0[name]), name
        assert torch.equal(start["model.language.model.model.embed_tokens.weight"], lm["model.embed_tokens.weight"])
        assert torch.equal(start["model.language.model.model.layers.1.mlp.down_proj.weight"],
                           lm["model.layers.1.mlp.down_proj.weight"])
        tower = {k: v for k, v in start.items() if k.startswith("model.vision.")}
        assert len(tower) == len(clip) and all(
            torch.equal(v, clip[next(c for c in clip if k.endswith(c))]) for k, v in tower.items())
