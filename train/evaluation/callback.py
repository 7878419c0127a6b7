"""Evaluation at the end of `chimera fit`, configured as a callback in the experiment YAML:

    trainer:
      callbacks:
        - class_path: train.evaluation.callback.EvalAtFitEnd
          init_args: {tasks: [vqa], limit: 500}
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from train.evaluation.command import format_results, resolve_task_files
from train.evaluation.decoding import Decoding
from data.templates import TemplateName
from train.evaluation.runner import check_prompt_suffixes, evaluate_model, make_task
from train.evaluation.wandb_log import flat_metrics, log_eval_to_wandb
from train.run_dir import run_folder


class EvalAtFitEnd(L.Callback):
    """Runs `chimera eval`'s tasks on the trained model; writes `<run folder>/eval/` unless `out` is set.

    Args:
        tasks: task names (vqa, caption, pope).
        data: task -> file; by default each task's file beside the data module's `val_qa`.
        prompt_suffix: task -> text after each question, replacing the task's default (LLaVA-1.5's
            short-answer instruction for vqa/pope); `{vqa: "", pope: ""}` for models trained without it.
        template: a named template instead of the module's own.
    """

    def __init__(self, tasks: list[str], data: dict[str, str] | None = None, out: str | None = None,
                 batch_size: int = 16, num_beams: int = 1, max_new_tokens: int | None = None,
                 limit: int | None = None, prompt_suffix: dict[str, str] | None = None,
                 template: TemplateName | None = None) -> None:
        prompt_suffix = dict(prompt_suffix or {})
        check_prompt_suffixes(prompt_suffix, tasks)
        for t in tasks:
            make_task(t, prompt_suffix.get(t))  # a typo fails when the config is parsed, not after training
        self.tasks, self.data, self.out, self.limit = list(tasks), dict(data or {}), out, limit
        self.decoding = Decoding(max_new_tokens=max_new_tokens, num_beams=num_beams, batch_size=batch_size,
                                 template=template, prompt_suffix=prompt_suffix)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the run folder may take a collective (train/run_dir.py): every rank reads it, then rank 0 evaluates
        out = Path(self.out) if self.out else run_folder(trainer) / "eval"
        if not trainer.is_global_zero:
            return
        val_qa = getattr(trainer.datamodule, "val_qa", None)
        files = resolve_task_files(self.tasks, [f"{k}={v}" for k, v in self.data.items()], val_qa)
        results, rows = evaluate_model(pl_module, files, out, self.decoding, self.limit)
        rank_zero_info(format_results(results) + f"\nwrote {out / 'results.json'}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                log_eval_to_wandb(results, rows, files, {}, run=logger.experiment)
            else:
                logger.log_metrics(flat_metrics(results), step=trainer.global_step)
                logger.save()
