"""Evaluation throughput of `chimera eval`: one line per generative task, samples/s at each batch size.

usage: python scripts/bench_eval.py [--ckpt CKPT] [--config configs/experiments/llava_sort_of_clevr_tiny.yaml]
                                    [--tasks vqa,caption] [--samples 128] [--batch-sizes 1,64] [--threads 2]

Without --ckpt the config's model is built with random weights (same shapes, same cost per token);
nothing stops its answers early, so every sample decodes the task's max_new_tokens (or
--max-new-tokens). Data: small synthetic worlds written to a temporary folder, per `TASK_DATA`.
Decoding is `chimera eval`'s: prompts sorted by length into batches, KV cache on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: this checkout's packages

from scripts import eval_task_data as task_data  # noqa: E402


def _sort_of_clevr(root: Path, samples: int) -> Path:
    from data.sort_of_clevr import write_sort_of_clevr

    out = root / f"soc_{samples}"  # one world per size: a smaller one written first is never reused
    if not (out / "meta.json").exists():
        write_sort_of_clevr(out, train_images=8, val_images=samples // 10 + 1, seed=0)  # 10 questions each
    return out


def _shapes(root: Path, samples: int) -> Path:
    from data.shapes import write_shapes

    out = root / f"shapes_{samples}"
    if not (out / "val_captions.jsonl").exists():
        write_shapes(out, train_images=8, val_images=samples, seed=0)
    return out


# task -> writes (once) a data file with at least `samples` records under `root` and returns it.
# A new generative task is benchmarked, and batch-size-checked (tests/test_eval_batching.py), by one line here.
# The VQA and caption families read the worlds' own files (our field names); the others are written in
# their benchmark's layout by `eval_task_data` (a Shapes world of `samples` images has about 3 * `samples`
# multiple-choice questions).
TASK_DATA: dict[str, Callable[[Path, int], Path]] = {
    "vqa": lambda root, samples: _sort_of_clevr(root, samples) / "val_qa.jsonl",
    "caption": lambda root, samples: _shapes(root, samples) / "val_captions.jsonl",
    "pope": lambda root, samples: _shapes(root, samples) / "pope_val.jsonl",
    "vqav2": lambda root, samples: task_data.vqav2(_shapes(root, samples)),
    "gqa": lambda root, samples: _sort_of_clevr(root, samples) / "val_qa.jsonl",
    "textvqa": lambda root, samples: task_data.ten_answers(_shapes(root, samples), "bench_textvqa.jsonl"),
    "vizwiz": lambda root, samples: task_data.ten_answers(_shapes(root, samples), "bench_vizwiz.jsonl"),
    "okvqa": lambda root, samples: task_data.ten_answers(_sort_of_clevr(root, samples), "bench_okvqa.jsonl"),
    "coco_caption": lambda root, samples: _shapes(root, samples) / "val_captions.jsonl",
    "nocaps": lambda root, samples: _shapes(root, samples) / "val_captions.jsonl",
    "flickr30k": lambda root, samples: _shapes(root, samples) / "val_captions.jsonl",
    "chair": lambda root, samples: _shapes(root, samples) / "val_captions.jsonl",
    "scienceqa_img": lambda root, samples: task_data.scienceqa_img(_shapes(root, samples)),
    "mmbench": lambda root, samples: task_data.mmbench(_shapes(root, samples)),
    "seed_bench": lambda root, samples: task_data.seed_bench(_shapes(root, samples)),
    "mmmu": lambda root, samples: task_data.mmmu(_shapes(root, samples)),
    "mmstar": lambda root, samples: task_data.mmstar(_shapes(root, samples)),
    "mme": lambda root, samples: task_data.mme(_shapes(root, samples)),
}


def tokenizer_dir(root: Path) -> Path:
    """A tokenizer trained on the synthetic worlds' text (the tiny configs' own)."""
    return _sort_of_clevr(root, 1) / "tokenizer"


def samples_per_second(module, task: str, path: Path, out: Path, batch_size: int, samples: int,
                       max_new_tokens: int | None, stop: list[str]) -> float:
    from train.evaluation.decoding import Decoding
    from train.evaluation.runner import evaluate_model

    decoding = Decoding(batch_size=batch_size, max_new_tokens=max_new_tokens, stop=stop)
    t0 = time.perf_counter()
    results, _ = evaluate_model(module, {task: path}, out, decoding, limit=samples)
    return results[task]["n"] / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/experiments/llava_sort_of_clevr_tiny.yaml")
    p.add_argument("--ckpt")
    p.add_argument("--tasks", default=",".join(TASK_DATA))
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--max-new-tokens", type=int, help="default: each task's own")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from train.checkpoint import build_module, load_module
    from train.evaluation.runner import make_task

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASK_DATA))
    if unknown:
        raise SystemExit(f"no benchmark data for tasks {unknown}: add a line to TASK_DATA (have {sorted(TASK_DATA)})")
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    if args.ckpt:
        module = load_module(args.ckpt)
    else:
        cfg = yaml.safe_load(Path(args.config).read_text())["model"]
        cfg["init_args"]["model"]["init_args"]["language"]["init_args"]["tokenizer"] = str(tokenizer_dir(tmp))
        module = build_module(cfg).eval()
    n_params = sum(p.numel() for p in module.parameters())
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"model: {'checkpoint ' + args.ckpt if args.ckpt else 'random weights from ' + args.config} "
          f"({n_params / 1e6:.2f} M parameters), {args.threads} threads, {args.samples} samples per task")
    print(f"{'task':<14} {'new tokens':>10} " + " ".join(f"{f'samples/s@{b}':>14}" for b in sizes) + f" {'load':>5}")
    stop = ["\n"] if args.ckpt else []  # random weights: every sample decodes max_new_tokens
    samples_per_second(module, tasks[0], TASK_DATA[tasks[0]](tmp, args.samples), tmp / "warmup", 2, 4, 2, stop)
    for task in tasks:
        path = TASK_DATA[task](tmp, args.samples)
        max_new = args.max_new_tokens or make_task(task).max_new_tokens
        rates = [samples_per_second(module, task, path, tmp / f"out_{task}_{b}", b, args.samples, max_new, stop)
                 for b in sizes]
        # load: the 1-minute load average after the task's runs (on a shared machine, what else competed)
        print(f"{task:<14} {max_new:>10} " + " ".join(f"{r:>14.1f}" for r in rates) + f" {os.getloadavg()[0]:>5.1f}",
              flush=True)


if __name__ == "__main__":
    main()
