"""The throughput callback logs model FLOPs (recompute excluded), token rates and MFU, with one
host-device sync per logging interval."""

import csv

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from train.throughput import ModelFlops, Throughput, compute_dtype

D, TOKENS = 16, 12


def _item(rows: int = 2, length: int = 8, pad: int = 4) -> dict:
    """`rows` x `length` ids, the last row padded by `pad`; x holds one D-vector per real token."""
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[-1, length - pad:] = 0
    return {"x": torch.randn(int(mask.sum()), D), "input_ids": torch.zeros(rows, length, dtype=torch.long),
            "attention_mask": mask}


class _Linear(L.LightningModule):
    """Two bias-free d x d layers; a batch is one item, or `{name: item}` with loss weights."""

    def __init__(self, batches: list):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False))
        self.batches = batches

    def training_step(self, batch, batch_idx):
        parts = [batch] if "x" in batch else batch.values()
        return sum(self.model(p["x"]).pow(2).mean() for p in parts)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


class _Validated(_Linear):
    def validation_step(self, batch, batch_idx):
        return self.training_step(batch, batch_idx)

    val_dataloader = _Linear.train_dataloader


def _fit(tmp_path, callback, batches, module=_Linear, **trainer_kwargs) -> list[dict]:
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=len(batches), accelerator="cpu", logger=logger, callbacks=[callback],
                        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, **trainer_kwargs)
    trainer.fit(module(batches))
    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("throughput/tokens_per_s")]


def test_counts_model_flops_per_token_and_logs_rates(tmp_path):
    callback = Throughput(log_every_n_steps=4, warmup_steps=1, peak_tflops=1.0)
    rows = _fit(tmp_path, callback, [_item()] * 12)
    # per token and layer: forward 2*D^2, weight gradient 2*D^2, input gradient 2*D^2 for the
    # second layer only (the data needs no gradient)
    assert callback.flops_per_token == 10 * D * D
    # step 1 counted (and warm-up): the window opens at its end; logs after steps 5 and 9; 10-12
    # are not yet a full window. The device is synced and the clock read at those steps only.
    assert callback.clock_reads == [1, 5, 9]
    assert len(rows) == 2
    for r in rows:
        tps, sps = float(r["throughput/tokens_per_s"]), float(r["throughput/samples_per_s"])
        assert tps > 0 and abs(tps / sps - TOKENS / 2) < 1e-6  # 12 non-padding tokens per 2 samples
        assert abs(float(r["throughput/step_seconds"]) - TOKENS / tps) < 1e-9
        flops = float(r["throughput/model_tflops_per_s"]) * 1e12
        assert abs(flops - tps * 10 * D * D) < 1e-6 * flops
        assert abs(float(r["throughput/mfu"]) - flops / 1e12) < 1e-12


def test_validation_closes_the_window(tmp_path):
    callback = Throughput(log_every_n_steps=3, warmup_steps=0)
    rows = _fit(tmp_path, callback, [_item()] * 10, module=_Validated, val_check_interval=5, limit_val_batches=1,
                num_sanity_val_steps=0)
    # logs after steps 4 and 9: validation after step 5 drops the window holding step 5, and it
    # reopens at the end of step 6 (without validation the logs would come after 4, 7 and 10)
    assert callback.clock_reads == [1, 4, 6, 9]
    assert len(rows) == 2


def test_multisource_steps_count_every_source(tmp_path):
    step = {"laion": {**_item(rows=3, length=4, pad=0), "loss_weight": 0.2},   # 12 tokens, 3 samples
            "mmc4": {**_item(rows=2, length=8, pad=4), "loss_weight": 1.0}}   # 12 tokens, 2 samples
    callback = Throughput(log_every_n_steps=2, warmup_steps=0)
    rows = _fit(tmp_path, callback, [step] * 5)
    assert callback.flops_per_token == 10 * D * D  # both sources' FLOPs over both sources' tokens
    assert callback.clock_reads == [1, 3, 5]
    assert len(rows) == 2
    for r in rows:
        tps, sps = float(r["throughput/tokens_per_s"]), float(r["throughput/samples_per_s"])
        assert abs(tps / sps - 24 / 5) < 1e-6


def test_without_a_known_peak_mfu_is_left_out_and_said_once(tmp_path, caplog):
    callback = Throughput(log_every_n_steps=2, warmup_steps=0)
    rows = _fit(tmp_path, callback, [_item()] * 5)
    assert callback.peak is None  # CPU: Lightning knows no peak
    said = [r.message for r in caplog.records if "no peak FLOP/s known" in r.message]
    assert said == ["Throughput: no peak FLOP/s known for cpu (torch.float32), so MFU is not logged; "
                    "set `peak_tflops` to log it"]
    assert len(rows) == 2 and all(r["throughput/model_tflops_per_s"] and not r.get("throughput/mfu") for r in rows)


def test_compute_dtype_follows_precision_then_parameters():
    module = _Linear([])
    assert compute_dtype(L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False), module) == torch.bfloat16
    trainer = L.Trainer(accelerator="cpu", precision="32-true", logger=False)
    assert compute_dtype(trainer, module) == torch.float32
    assert compute_dtype(trainer, module.to(torch.bfloat16)) == torch.bfloat16


def _count(model: nn.Module, forward) -> tuple[int, int]:
    """(model FLOPs, FLOPs FlopCounterMode sees executed) of one forward and backward."""
    with ModelFlops() as counter:
        loss = forward(model)
        counter.in_backward = True
        loss.backward()
    with FlopCounterMode(display=False) as executed:
        forward(model).backward()
    return counter.flops, executed.get_total_flops()


@pytest.mark.parametrize("frozen, per_token", [
    (0, 6 * D * D),  # layer 1 forward only; layer 2 forward + weight gradient (its input needs none)
    (1, 8 * D * D),  # both forward; layer 2 input gradient (for layer 1); layer 1 weight gradient
])
def test_frozen_layers_cost_forward_and_the_gradients_autograd_runs(frozen, per_token):
    model = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False))
    model[frozen].requires_grad_(False)
    x = torch.randn(TOKENS, D)
    assert _count(model, lambda m: m(x).pow(2).mean()) == (per_token * TOKENS, per_token * TOKENS)


def test_checkpoint_recompute_is_not_counted(tmp_path):
    from models.language import LanguageModel
    from tests.tiny import LM_CONFIG, tiny_world

    tokenizer = str(tiny_world(tmp_path) / "tokenizer")
    embeds, mask = torch.randn(2, 9, LM_CONFIG["hidden_size"]), torch.ones(2, 9, dtype=torch.long)
    counts = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        lm = LanguageModel(config=dict(LM_CONFIG), tokenizer=tokenizer, gradient_checkpointing=ckpt).train()
        counts[ckpt] = _count(lm, lambda m: m(embeds, mask).logsumexp(-1).mean())
    (plain, plain_executed), (ckpt, ckpt_executed) = counts[False], counts[True]
    assert plain == ckpt == plain_executed  # the uncheckpointed step executes exactly the model FLOPs
    assert ckpt_executed > ckpt  # the recompute really ran, and was left out
