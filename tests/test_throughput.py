"""The throughput callback logs counted model FLOPs and token rates."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from train.throughput import Throughput

D, TOKENS = 16, 12


class _Linear(L.LightningModule):
    """Every batch: TOKENS tokens (one row padded by 4) through two bias-free d x d layers."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False))

    def training_step(self, batch, batch_idx):
        return self.model(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1, 4:] = 0
        item = {"x": torch.randn(TOKENS, D), "input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": mask}
        return DataLoader([item] * 12, batch_size=None)


def test_counts_executed_flops_per_token_and_logs_rates(tmp_path):
    callback = Throughput(log_every_n_steps=4, warmup_steps=1, peak_tflops=1.0)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=logger, callbacks=[callback], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(_Linear())
    # per token and layer: forward 2*D^2, weight gradient 2*D^2, input gradient 2*D^2 for the
    # second layer only (the data needs no gradient): counted as executed, not assumed
    assert callback.flops_per_token == 10 * D * D
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv"))
            if r.get("throughput/tokens_per_s")]
    assert len(rows) == 2  # steps 3-6 and 7-10 (step 1 counted, step 2 warm-up, 11-12 not yet a full window)
    for r in rows:
        tps, sps = float(r["throughput/tokens_per_s"]), float(r["throughput/samples_per_s"])
        assert tps > 0 and abs(tps / sps - 6.0) < 1e-6  # 12 non-padding tokens per 2 samples
        flops = float(r["throughput/model_tflops_per_s"]) * 1e12
        assert abs(flops - tps * 10 * D * D) < 1e-6 * flops
        assert abs(float(r["throughput/mfu"]) - flops / 1e12) < 1e-12
