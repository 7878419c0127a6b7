"""`chimera eval`: run tasks on a model (or score existing predictions) and write the results.

Output directory:
  results.json       {task: {metric: value, n, skipped}, ..., "meta": {model, checkpoint, model_sha256,
                     config_hash, data, data_sha256, decoding, max_new_tokens, prompts, date, ...}}
  <task>.jsonl       one record per sample: id, image, prompt, prediction, reference, score (+ type/split),
                     and lmms-eval's names for them: doc_id (position in the data), target, resps
                     ([[raw response]]), filtered_resps ([response cut at the stop strings])
  images/            images embedded in a parquet/arrow eval set, once per content (model runs only)

A set without references (VQAv2 test-dev) is generated and written, unscored: its metrics are
only n and skipped, and `chimera data vqav2-submission` turns <task>.jsonl into EvalAI's file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from train.evaluation.contrastive import CONTRASTIVE_TASKS
from train.evaluation.decoding import Decoding, cut_at_stop, generate_predictions, prompt_template
from train.evaluation.fewshot import fewshot_turns, pooled_image_embeddings, select_demonstrations
from train.evaluation.inputs import TaskData, read_task_data
from train.evaluation.loglik import check_mc_mode, loglik_predictions
from train.evaluation.predictions import id_key, read_predictions
from train.evaluation.provenance import content_sha256
from train.evaluation.tasks import GENERATIVE_TASKS
from train.evaluation.tasks_captions import CAPTION_TASKS
from train.evaluation.tasks_chair import CHAIR_TASKS
from train.evaluation.tasks_mmmu_mme import MMMU_MME_TASKS
from train.evaluation.tasks_multiple_choice import MULTIPLE_CHOICE_TASKS
from train.evaluation.tasks_vqa_family import VQA_FAMILY_TASKS

TASKS = {**GENERATIVE_TASKS, **CONTRASTIVE_TASKS}
TASKS.update({**VQA_FAMILY_TASKS, **CAPTION_TASKS, **CHAIR_TASKS, **MULTIPLE_CHOICE_TASKS, **MMMU_MME_TASKS})

log = logging.getLogger(__name__)
EXTRA_FIELDS = ("type", "split", "object")


def config_hash(config: dict | None) -> str | None:
    if config is None:
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_task(name: str, prompt_suffix: str | None = None, options: dict | None = None):
    """The task by name; `prompt_suffix` replaces its default (generative tasks only); `options`:
    the task's own settings (`chair`: `synonyms_file`)."""
    if name not in TASKS:
        raise ValueError(f"unknown eval task {name!r}; choose from {sorted(TASKS)}")
    task = TASKS[name](**(options or {}))
    if prompt_suffix is not None:
        if is_contrastive(task):
            raise ValueError(f"task {name!r} scores embeddings and has no prompt to suffix")
        task.prompt_suffix = prompt_suffix
    return task


def check_prompt_suffixes(suffixes: dict[str, str], tasks) -> None:
    unknown = sorted(set(suffixes) - set(tasks))
    if unknown:
        raise ValueError(f"prompt suffixes for tasks not evaluated: {unknown} (tasks: {sorted(tasks)})")


def prompt_settings(task, module, decoding: Decoding) -> dict:
    """What results.json records of a task's prompt: its suffix and the template's name (or fields);
    nothing for a contrastive task (a CLIP module has no chat template)."""
    if is_contrastive(task):
        return {}
    template = prompt_template(module, decoding)
    return {"suffix": task.prompt_suffix, "template": template.name or asdict(template)}


def is_contrastive(task) -> bool:
    return getattr(task, "kind", "generative") == "contrastive"


def _run_task(module, task, records: list[dict], root: Path, decoding: Decoding,
              image_dir: Path | None = None) -> tuple[dict, list[dict]]:
    model = module.model
    contrastive_model = hasattr(model, "encode_text")
    if is_contrastive(task) != contrastive_model:
        need = "a contrastive (CLIP) model" if is_contrastive(task) else "a generative model (LLaVA, Flamingo)"
        raise ValueError(f"task {task.name!r} needs {need}; the checkpoint holds a {type(model).__name__}")
    if is_contrastive(task):
        metrics, rows = task.run(model, records, root, decoding.batch_size)
        n = sum(1 for r in rows if not r.get("skipped"))
        metrics.update({"n": float(n), "skipped": float(len(rows) - n)})
        return metrics, rows
    prompts = [task.prompt(r) for r in records]
    gen_records, gen_prompts, demo_ids = records, prompts, None
    if decoding.shots > 0:
        gen_records, gen_prompts, demo_ids = with_demonstrations(module, task, records, root, decoding, image_dir)
    if decoding.mc_mode == "loglik":  # multiple choice by option log-likelihood; other tasks generate
        preds, raw = loglik_predictions(module, task, gen_records, root, gen_prompts, decoding,
                                        decoding.max_new_tokens or task.max_new_tokens)
    else:
        raw = generate_predictions(module, gen_records, root, gen_prompts, decoding,
                                   decoding.max_new_tokens or task.max_new_tokens)
        preds = [None if r is None else cut_at_stop(r, decoding.stop) for r in raw]
    metrics, rows = score_records(task, records, preds, prompts, raw)
    if demo_ids is not None:
        for row, ids in zip(rows, demo_ids):
            row["demos"] = ids
    return metrics, rows


def with_demonstrations(module, task, records: list[dict], root: Path, decoding: Decoding,
                        image_dir: Path | None = None):
    """Few-shot records (demonstration images then the query's, absolute paths) and prompts."""
    check_one_image_each(records, "the evaluated set")
    if decoding.support:
        pool = load_task_data(task, decoding.support, image_dir=image_dir)
        check_one_image_each(pool.records, decoding.support)
        support, support_root, exclude = pool.records, pool.root, None
    else:  # the evaluated set, never showing a query its own image
        by_image: dict = {}
        for i, r in enumerate(records):
            by_image.setdefault(r.get("image"), set()).add(i)
        support, support_root, exclude = records, root, [by_image[r.get("image")] for r in records]
    if not all(task.references(d) for d in support):
        raise ValueError(f"few-shot demonstrations need answers, and {decoding.support or 'the evaluated set'} has "
                         "records without: pass --support with an answered set of the same task")
    q_emb = s_emb = None
    if decoding.demos == "rices":
        q_emb = pooled_image_embeddings(module.model.vision, records, root, decoding.batch_size)
        s_emb = q_emb if support is records else pooled_image_embeddings(module.model.vision, support, support_root,
                                                                        decoding.batch_size)
    picks = select_demonstrations(len(records), len(support), decoding.shots, decoding.demos, q_emb, s_emb,
                                  exclude, decoding.seed)
    new_records, prompts = [], []
    for rec, pick in zip(records, picks):
        demos = [support[i] for i in pick]
        images = [str((support_root / d["image"]).resolve()) for d in demos] + [str((root / rec["image"]).resolve())]
        new_records.append({**rec, "image": images})
        prompts.append(fewshot_turns([(task.prompt(d), task.references(d)[0]) for d in demos], task.prompt(rec)))
    return new_records, prompts, [[support[i]["id"] for i in pick] for pick in picks]


def check_one_image_each(records: list[dict], source: str) -> None:
    """Few-shot prompts give each demonstration and the query one image: a record with several images or
    a video is an error naming it (zero-shot evaluation reads those)."""
    for rec in records:
        if "video" in rec or isinstance(rec.get("image"), list):
            what = "a video" if "video" in rec else f"{len(rec['image'])} images"
            raise ValueError(f"{source}: record {rec.get('id')!r} has {what}; few-shot prompting (--shots) takes "
                             f"one image per record")


def load_task_data(task, path: str | Path, limit: int | None = None, image_dir: Path | None = None) -> TaskData:
    """A task's records from any layout `read_task_data` reads, checked by the task; ids unique as `id_key`s."""
    data = read_task_data(path, task.name, limit, image_dir)
    if hasattr(task, "prepare"):  # multiple choice: MMBench's rotations, SEED's image subset, row ids
        data.records = task.prepare(data.records)
    if not data.records:
        raise ValueError(f"{path}: no records for the {task.name!r} task")
    task.check(data.records, str(path))
    seen: dict[str, object] = {}
    for rec in data.records:
        if id_key(rec["id"]) in seen:
            raise ValueError(f"{path}: ids are not unique ({seen[id_key(rec['id'])]!r} and {rec['id']!r})")
        seen[id_key(rec["id"])] = rec["id"]
    return data


def load_task_records(task, path: str | Path, limit: int | None = None) -> list[dict]:
    return load_task_data(task, path, limit).records


def score_records(task, records: list[dict], predictions: list[str | None], prompts: list[str],
                  raw: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Per-sample rows and the task's metrics. A sample without a prediction (unreadable image)
    is left out of the metrics and counted as `skipped`. `raw`: the responses before the stop
    strings were cut (default: the predictions). A set without references is not scored."""
    raw = predictions if raw is None else raw
    unscored = not any(task.references(r) for r in records)
    rows, skipped = [], 0
    for doc_id, (rec, pred, prompt, resp) in enumerate(zip(records, predictions, prompts, raw)):
        refs = task.references(rec)
        target = None if unscored else refs if (len(refs) > 1 or task.name == "caption") else refs[0]
        row = {"id": rec["id"], "image": rec.get("image"), "prompt": prompt, "prediction": pred, "reference": target}
        row.update({k: rec[k] for k in EXTRA_FIELDS + getattr(task, "row_fields", ()) if k in rec})
        row.update({"doc_id": doc_id, "target": target, "resps": [[resp]], "filtered_resps": [pred]})
        if pred is None:
            skipped += 1
            row["score"], row["skipped"] = None, True
        else:
            row["score"] = None if unscored else task.score_sample(pred, rec)
        rows.append(row)
    scored = [r for r in rows if r["prediction"] is not None]
    if not scored:
        raise ValueError(f"{task.name}: no sample could be scored ({skipped} skipped)")
    metrics = {} if unscored else task.aggregate(scored)  # may fill per-sample scores (CIDEr-D)
    metrics.update({"n": float(len(scored)), "skipped": float(skipped)})
    return metrics, rows


def write_outputs(out_dir: str | Path, results: dict, rows_by_task: dict[str, list[dict]]) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_task.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def _meta(**kw) -> dict:
    return {**kw, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def evaluate_model(module, task_files: dict[str, str | Path], out_dir: str | Path, decoding: Decoding | None = None,
                   limit: int | None = None, checkpoint: str | None = None,
                   task_options: dict[str, dict] | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """Generate and score every task; writes results.json and the per-sample files."""
    task_options = task_options or {}
    decoding = decoding or Decoding()
    check_prompt_suffixes(decoding.prompt_suffix, task_files)
    check_mc_mode(decoding.mc_mode)
    results: dict = {}
    rows_by_task: dict[str, list[dict]] = {}
    prompts: dict[str, dict] = {}
    max_new_tokens: dict[str, int] = {}
    image_dir = Path(out_dir) / "images"
    for name, path in task_files.items():
        task = make_task(name, decoding.prompt_suffix.get(name), task_options.get(name))
        data = load_task_data(task, path, limit, image_dir)
        results[name], rows_by_task[name] = _run_task(module, task, data.records, data.root, decoding, image_dir)
        prompts[name] = prompt_settings(task, module, decoding)
        if not is_contrastive(task):
            max_new_tokens[name] = decoding.max_new_tokens or task.max_new_tokens
        log.info("%s: %s", name, results[name])
    config = getattr(module, "chimera_config", None)
    results["meta"] = _meta(model=type(module.model).__name__, checkpoint=checkpoint,
                            model_sha256=content_sha256(checkpoint) if checkpoint else None,
                            config_hash=config_hash(config), data={k: str(v) for k, v in task_files.items()},
                            data_sha256={k: content_sha256(v) for k, v in task_files.items()},
                            decoding=asdict(decoding), max_new_tokens=max_new_tokens, limit=limit, prompts=prompts,
                            task_options=task_options)
    write_outputs(out_dir, results, rows_by_task)
    return results, rows_by_task


def score_prediction_file(task_name: str, predictions: str | Path, data: str | Path, out_dir: str | Path,
                          prompt_suffix: str | None = None, allow_missing: bool = False, id_field: str | None = None,
                          text_field: str | None = None,
                          task_options: dict | None = None) -> tuple[dict, dict[str, list[dict]]]:
    """Score predictions from any model (our `{"id", "prediction"}`, LLaVA's `{"question_id", "text"}`,
    or the named fields) against a data file, matched by `id_key`. A sample without a prediction is
    an error unless `allow_missing` (then it is counted as skipped); `prompt_suffix` only changes
    the prompts recorded per sample; `task_options`: the task's own settings (see `make_task`)."""
    task = make_task(task_name, prompt_suffix, task_options)
    if is_contrastive(task):
        raise ValueError(f"task {task_name!r} scores embeddings, not text predictions: run it with --ckpt")
    records = load_task_records(task, data)
    by_id = read_predictions(predictions, id_field, text_field)
    known = {id_key(r["id"]) for r in records}
    unknown = [i for i in by_id if i not in known]
    if unknown:
        raise ValueError(f"{predictions}: {len(unknown)} ids are not in {data} (e.g. {unknown[0]!r})")
    missing = [r["id"] for r in records if id_key(r["id"]) not in by_id]
    if missing and not allow_missing:
        raise ValueError(f"{predictions}: {len(missing)} of {len(records)} samples of {data} have no prediction "
                         f"(first ids: {', '.join(repr(i) for i in missing[:5])}); --allow-missing scores the rest")
    if missing:
        log.warning("%d of %d samples have no prediction in %s; they are counted as skipped",
                    len(missing), len(records), predictions)
    prompts = [task.prompt(r) for r in records]
    preds = [by_id.get(id_key(r["id"])) for r in records]
    metrics, rows = score_records(task, records, preds, prompts)
    results = {task_name: metrics, "meta": _meta(model=None, checkpoint=None, config_hash=None,
                                                 predictions=str(predictions),
                                                 predictions_sha256=content_sha256(predictions),
                                                 data={task_name: str(data)},
                                                 data_sha256={task_name: content_sha256(data)},
                                                 prompts={task_name: {"suffix": task.prompt_suffix}},
                                                 task_options={task_name: task_options} if task_options else {})}
    write_outputs(out_dir, results, {task_name: rows})
    return results, {task_name: rows}
