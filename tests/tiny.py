"""Tiny components built from configs (random init) with the classes that load real checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

from data.sort_of_clevr import write_sort_of_clevr

VISION = {
    "class_path": "models.vision.TimmVision",
    "init_args": {"model_name": "resnet10t", "image_size": 75, "select_layer": -2, "add_coords": True,
                  "model_kwargs": {"channels": [8, 8, 16, 16], "stem_width": 8, "num_classes": 0}},
}
LM_CONFIG = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}


def tiny_world(root: Path) -> Path:
    out = root / "soc"
    if not (out / "meta.json").exists():
        write_sort_of_clevr(out, train_images=24, val_images=4, seed=0, questions_per_image=2)
    return out


def module_config(world: Path, stage: str = "full", lr: float = 3e-3) -> dict:
    """The `model:` section of an experiment, as a dict."""
    return {
        "class_path": "train.module.VLMModule",
        "init_args": {
            "stage": stage, "lr": lr, "warmup_ratio": 0.0, "max_new_tokens": 3,
            "model": {
                "class_path": "models.llava.LLaVA",
                "init_args": {
                    "vision": copy.deepcopy(VISION),
                    "language": {"class_path": "models.language.LanguageModel",
                                 "init_args": {"tokenizer": str(world / "tokenizer"), "config": dict(LM_CONFIG)}},
                    "connector": {"class_path": "models.connectors.MLPConnector", "init_args": {"depth": 2}},
                },
            },
        },
    }


def experiment_config(world: Path, run_root: Path, max_steps: int = 4, logger: dict | None = None) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": max_steps, "val_check_interval": max_steps,
                    "check_val_every_n_epoch": None, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": logger or {"class_path": "lightning.pytorch.loggers.CSVLogger",
                                         "init_args": {"save_dir": str(run_root), "name": "tiny"}}},
        "model": module_config(world),
        "data": {"class_path": "train.data_module.ConversationDataModule",
                 "init_args": {"train_json": str(world / "train.json"), "val_qa": str(world / "val_qa.jsonl"),
                               "batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "max_turns": 2,
                               "type_groups": {"non_relational": ["shape", "horizontal", "vertical"],
                                               "relational": ["closest", "furthest", "count"]}}},
    }


def launch_fit(config: dict, path: Path, *extra: str, timeout: int = 300):
    """`chimera fit --config PATH` in a fresh process, as a user launches it (with `trainer.devices: 2`
    Lightning starts the second rank itself); a hang fails at `timeout` instead of stalling CI."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parent.parent
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-m", "train.cli", "fit", "--config", str(path), *extra], cwd=root,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
