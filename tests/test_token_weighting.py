"""The loss weights every target token of the global batch alike: 2 ranks x batch 2, 1 rank x
batch 4, and 1 rank x batch 2 with 2 accumulated micro-batches take the same first gradient and
end with the same weights (the same samples reach each optimizer step, `data.sampling`)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import yaml

from tests.test_ddp import ddp_config
from tests.tiny import experiment_config, launch_fit, tiny_world
from train.cli import main


class FirstGradient(L.Callback):
    """Saves the gradients the first optimizer step used (after the step, before the next zero_grad)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and not self.path.exists() and trainer.is_global_zero:
            torch.save({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}, self.path)


def with_recorders(cfg: dict, tmp_path: Path, name: str) -> dict:
    cfg["trainer"]["logger"]["init_args"]["name"] = name
    cfg["trainer"].update({"limit_val_batches": 0, "callbacks": [
        {"class_path": "tests.test_token_weighting.FirstGradient", "init_args": {"path": str(tmp_path / f"{name}.grad")}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / name), "save_last": True}}]})
    cfg["model"]["init_args"].update({"stage": "finetune", "lr": 1e-3})
    return cfg


def test_world_size_and_accumulation_do_not_change_token_weights(tmp_path):
    world = tiny_world(tmp_path)
    # 1 to 4 question/answer pairs per conversation: micro-batches hold different target counts
    records = json.loads((world / "train.json").read_text())
    for i, rec in enumerate(records):
        rec["conversations"] = rec["conversations"][: 2 * (1 + i % 4)]
    (world / "train_uneven.json").write_text(json.dumps(records))
    steps = 3

    def run_config(cfg: dict, name: str) -> dict:
        cfg["data"]["init_args"].update({"train_json": str(world / "train_uneven.json"), "max_turns": None})
        return with_recorders(cfg, tmp_path, name)

    launch_fit(run_config(ddp_config(world, tmp_path / "runs", "ddp", max_steps=steps, batch=2), "two"),
               tmp_path / "two.yaml")
    for name, batch, accumulate in (("one", 4, 1), ("accumulated", 2, 2)):
        cfg = run_config(experiment_config(world, tmp_path / "runs", max_steps=steps), name)
        cfg["data"]["init_args"]["batch_size"] = batch
        cfg["trainer"]["accumulate_grad_batches"] = accumulate
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        main(["fit", "--config", str(tmp_path / f"{name}.yaml")])

    grads = {name: torch.load(tmp_path / f"{name}.grad") for name in ("two", "one", "accumulated")}
    assert len(grads["one"]) > 10 and grads["one"].keys() == grads["two"].keys() == grads["accumulated"].keys()
    weights = {name: torch.load(tmp_path / name / "last.ckpt", weights_only=False)["state_dict"]
               for name in ("two", "one", "accumulated")}
    for other in ("two", "accumulated"):
        for key, g in grads["one"].items():
            torch.testing.assert_close(grads[other][key], g, rtol=1e-4, atol=1e-7, msg=f"{other} {key}")
        for key, w in weights["one"].items():
            torch.testing.assert_close(weights[other][key], w, rtol=1e-4, atol=1e-6, msg=f"{other} {key}")
