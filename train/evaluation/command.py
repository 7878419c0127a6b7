"""Argument handling for `chimera eval` (model mode and --predictions mode)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from train.evaluation.decoding import Decoding
from train.evaluation.loglik import MC_MODES
from data.templates import NAMED
from train.evaluation.runner import check_prompt_suffixes, evaluate_model, make_task, score_prediction_file
from train.evaluation.wandb_log import log_eval_to_wandb, wandb_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chimera eval", description="Evaluate a checkpoint on tasks, or score "
                                "existing predictions; writes OUT/results.json and OUT/<task>.jsonl.")
    p.add_argument("--config", help="experiment YAML: default data files (beside data.val_qa) and logger")
    p.add_argument("--ckpt", help="checkpoint from `chimera fit` or a release directory (without it: the config's untrained model)")
    p.add_argument("--hf-llava", metavar="DIR", help="a transformers LlavaForConditionalGeneration directory, "
                   "evaluated with its own chat_template and image processor settings (instead of --ckpt)")
    p.add_argument("--tasks", required=True, help="comma-separated, e.g. vqa,caption,pope, vqav2,gqa,textvqa,vizwiz,"
                   "okvqa, coco_caption,nocaps,flickr30k, chair, mme,scienceqa_img,mmbench,seed_bench,mmmu,mmstar, "
                   "retrieval,zeroshot")
    p.add_argument("--data", action="append", default=[],
                   help="FILE (one task) or TASK=FILE; repeatable. FILE: our .jsonl, a .parquet or .arrow file, or a "
                        "`datasets` save_to_disk folder (lmms-lab column names). Default: the task's file beside "
                        "data.val_qa")
    p.add_argument("--predictions", help='predictions to score without loading a model: JSONL or JSON list of '
                   '{"id", "prediction"} or LLaVA answer files {"question_id", "text"}')
    p.add_argument("--id-field", help="--predictions: the field holding the id (default: recognised by name)")
    p.add_argument("--text-field", help="--predictions: the field holding the prediction (default: recognised by name)")
    p.add_argument("--allow-missing", action="store_true",
                   help="--predictions: score a file that lacks some samples (they count as skipped) instead of failing")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, help="default: per task (vqa 8, pope 4, caption 48)")
    p.add_argument("--stop", action="append", help='stop string (repeatable; default "\\n")')
    p.add_argument("--limit", type=int, help="first N samples of each task")
    p.add_argument("--shots", type=int, default=0, help="k-shot prompting: demonstrations per query")
    p.add_argument("--demos", choices=["rices", "random"], default="rices",
                   help="demonstration choice: RICES (most similar images, most similar last) or random")
    p.add_argument("--support", help="demonstration pool (task format); default: the evaluated set, leave-one-out")
    p.add_argument("--template", choices=sorted(NAMED),
                   help="render prompts with this named template instead of the checkpoint's own")
    p.add_argument("--prompt-suffix", action="append", default=[], metavar="TASK=TEXT",
                   help="text appended to each question of TASK (repeatable; \\n is a newline; empty TEXT: none). "
                        "Default: LLaVA-1.5's, vqa/pope: '\\nAnswer the question using a single word or phrase.', "
                        "caption: none")
    p.add_argument("--chair-synonyms", metavar="FILE",
                   help='chair: JSON synonym table {"class": ["synonym", ...]} (default: the Shapes world\'s)')
    p.add_argument("--mc-mode", choices=list(MC_MODES), default="generate",
                   help="multiple-choice tasks: generate an answer and read the option from it (default), or pick "
                        "the option whose text (MMStar: letter) has the highest summed log-probability after the prompt")
    return p


def task_options(args, tasks: list[str]) -> dict[str, dict]:
    """Per-task settings from their options; one for a task not evaluated is an error."""
    if args.chair_synonyms and "chair" not in tasks:
        raise ValueError("--chair-synonyms is for the chair task, which is not in --tasks")
    return {"chair": {"synonyms_file": args.chair_synonyms}} if args.chair_synonyms else {}


def parse_prompt_suffixes(args: list[str], tasks: list[str]) -> dict[str, str]:
    """`TASK=TEXT` entries -> {task: text}, with `\\n` in TEXT read as a newline."""
    out: dict[str, str] = {}
    for arg in args:
        name, sep, text = arg.partition("=")
        if not sep:
            raise ValueError(f"--prompt-suffix {arg!r}: write TASK=TEXT")
        out[name] = text.replace("\\n", "\n")
    check_prompt_suffixes(out, tasks)
    return out


def _read_config(path: str | None) -> dict:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise FileNotFoundError(f"experiment config not found: {path}")
    return yaml.safe_load(Path(path).read_text()) or {}


def default_val_qa(config: dict) -> str | None:
    return ((config.get("data") or {}).get("init_args") or {}).get("val_qa")


def resolve_task_files(tasks: list[str], data_args: list[str], val_qa: str | None) -> dict[str, str]:
    """`--data` entries (FILE or TASK=FILE), else each task's default file beside `val_qa`."""
    files: dict[str, str] = {}
    for arg in data_args:
        name, sep, path = arg.partition("=")
        if sep:
            files[name] = path
        elif len(tasks) == 1:
            files[tasks[0]] = arg
        else:
            raise ValueError(f"--data {arg}: with several tasks write TASK=FILE")
    unknown = set(files) - set(tasks)
    if unknown:
        raise ValueError(f"--data names tasks not in --tasks: {sorted(unknown)}")
    for name in tasks:
        if name not in files:
            if not val_qa:
                raise ValueError(f"no data file for task {name!r}: pass --data or a --config with data.val_qa")
            files[name] = str(Path(val_qa).parent / make_task(name).default_file)
        if not Path(files[name]).exists():
            raise FileNotFoundError(f"data file for task {name!r} not found: {files[name]}")
    return files


def _load_module(args, config: dict):
    from train.checkpoint import build_module, load_module

    if args.ckpt and args.hf_llava:
        raise ValueError("give --ckpt or --hf-llava, not both")
    if args.hf_llava:
        from train.evaluation.hf_llava_model import load_hf_llava

        return load_hf_llava(args.hf_llava)
    if args.ckpt:
        return load_module(args.ckpt)
    if not config.get("model"):
        raise ValueError("give --ckpt, or a --config with a model section (evaluates the untrained model)")
    module = build_module(config["model"])
    module.chimera_config = config["model"]
    return module.eval()


def eval_main(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    suffixes = parse_prompt_suffixes(args.prompt_suffix, tasks)
    options = task_options(args, tasks)
    for t in tasks:  # unknown names, suffixes for prompt-less tasks, bad task options fail before anything loads
        make_task(t, suffixes.get(t), options.get(t))
    config = _read_config(args.config)
    files = resolve_task_files(tasks, args.data, default_val_qa(config))
    if args.predictions:
        if len(tasks) != 1:
            raise ValueError("--predictions scores one task at a time")
        results, rows = score_prediction_file(tasks[0], args.predictions, files[tasks[0]], args.out,
                                              suffixes.get(tasks[0]), args.allow_missing, args.id_field,
                                              args.text_field, options.get(tasks[0]))
    else:
        module = _load_module(args, config)
        decoding = Decoding(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                            stop=args.stop if args.stop is not None else ["\n"], batch_size=args.batch_size,
                            shots=args.shots, demos=args.demos, support=args.support, template=args.template,
                            prompt_suffix=suffixes, mc_mode=args.mc_mode)
        results, rows = evaluate_model(module, files, args.out, decoding, args.limit, args.ckpt or args.hf_llava,
                                       options)
    settings = wandb_settings(config)
    if settings is not None:
        log_eval_to_wandb(results, rows, files, settings)
    print(format_results(results))
    print(f"wrote {Path(args.out) / 'results.json'}")
    return results


def format_results(results: dict) -> str:
    lines = []
    for task, metrics in results.items():
        if task == "meta":
            continue
        lines.append(f"{task}")
        lines += [f"  {k:<28} {v:>10.4f}" for k, v in metrics.items()]
    return "\n".join(lines)
