"""`chimera pipeline run PIPELINE.yaml`: stages in order, each an experiment config (or a data or
eval step) plus overrides that point at earlier stages' outputs.

Every stage writes into `<out>/<stage name>/`. A stage that finished writes `complete.json`
with a digest of what it was run from: its resolved spec, the text of the config files it
names, and the digests of the stages it reads from. It is skipped while that digest holds;
when it changes (an edited experiment YAML, a changed upstream stage) the stage runs afresh
and its old folder is kept beside it as `<stage name>.previous-<digest>`. A fit stage that was
interrupted resumes from `<stage>/checkpoints/last.ckpt`. A failing stage leaves earlier
stages' outputs untouched, so rerunning picks up where it stopped.

Pipeline YAML:
    out: runs/demo
    stages:
      - {name: data, data: {world: shapes, train_images: 2000, val_images: 200}}
      - {name: clip, fit: configs/experiments/clip_shapes_tiny.yaml,
         set: {trainer.max_steps: 300, model.init_args.export_path: "{clip}/open_clip.pt"}}
      - {name: eval_sft, eval: {ckpt: "{sft}/checkpoints/last.ckpt", tasks: [vqa], data: {vqa: ...}}}
      - {name: report, report: {variants: [sft, ...]}}
Curation stages (configs/pipelines/curation.yaml): `noise` (known noise injected into shards),
`curate` (`chimera curate` into the stage directory), `conversations` (shards -> LLaVA JSON).
`{stage}` in any string is replaced by that stage's directory; `{out}` by the pipeline's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

STAGE_KINDS = ("data", "noise", "curate", "conversations", "fit", "eval", "report")


def load_pipeline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path}: needs a non-empty `stages` list")
    names = []
    for n, st in enumerate(stages):
        kinds = [k for k in STAGE_KINDS if k in st]
        if "name" not in st or len(kinds) != 1:
            raise ValueError(f"{path}: stage {n} needs a `name` and exactly one of {STAGE_KINDS}, got {sorted(st)}")
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", st["name"]) or st["name"] in names:
            raise ValueError(f"{path}: stage name {st['name']!r} must be unique and use letters, digits, _ or -")
        names.append(st["name"])
    spec.setdefault("out", f"runs/{path.stem}")
    return spec


def _substitute(value, dirs: dict[str, str]):
    if isinstance(value, str):
        return re.sub(r"\{([A-Za-z0-9_\-]+)\}", lambda m: dirs.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, dirs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, dirs) for v in value]
    return value


def set_dotted(config: dict, key: str, value) -> None:
    """`a.b.0.c` -> config["a"]["b"][0]["c"] = value (list indices allowed; missing dicts made)."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


class StageFailed(RuntimeError):
    """A stage run in its own process failed; it has printed why."""


def one_process(trainer: dict) -> bool:
    """Whether a trainer config runs in this process: exactly one device on one node. Anything else
    (`devices: 2`, `auto` on a multi-GPU machine, several nodes) has Lightning launch ranks."""
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    single = devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1)
    return single and int(nodes) == 1


def resolved_fit_config(stage: dict, stage_dir: Path) -> dict:
    """The experiment config with the stage's overrides, logging into the stage directory and
    checkpointing `last.ckpt` there (so the pipeline can resume and later stages can find it)."""
    path = Path(stage["fit"])
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage['name']!r}: experiment config not found: {path}")
    cfg = yaml.safe_load(path.read_text())
    for key, value in (stage.get("set") or {}).items():
        set_dotted(cfg, key, value)
    trainer = cfg.setdefault("trainer", {})
    logger = trainer.get("logger") or {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("CSVLogger"):
        logger["init_args"] = {**(logger.get("init_args") or {}), "save_dir": str(stage_dir), "name": "logs",
                               "version": 0}
    trainer["logger"] = logger
    callbacks = [c for c in trainer.get("callbacks") or []
                 if not str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(stage_dir / "checkpoints"), "save_last": True,
                                    "every_n_train_steps": int(stage.get("checkpoint_every", 100))}})
    trainer["callbacks"] = callbacks
    return cfg


def _config_texts(stage: dict) -> list[str]:
    """The text of every YAML file the stage names (experiment and curation configs)."""
    texts = []

    def visit(node) -> None:
        if isinstance(node, dict):
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
        elif isinstance(node, str) and node.endswith((".yaml", ".yml")) and Path(node).is_file():
            texts.append(Path(node).read_text())

    visit(stage)
    return texts


def _spec_hash(stage: dict, upstream: dict[str, str] | None = None) -> str:
    blob = json.dumps({"spec": stage, "configs": _config_texts(stage), "upstream": upstream or {}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, path: str | Path, log=print) -> None:
        self.spec = load_pipeline(path)
        self.out = Path(self.spec["out"])
        self.dirs = {"out": str(self.out), **{s["name"]: str(self.out / s["name"]) for s in self.spec["stages"]}}
        self.log = log
        self.digests: dict[str, str] = {}
        for raw in self.spec["stages"]:  # in order, so every upstream digest is known
            text = json.dumps(raw, default=str)
            upstream = {n: d for n, d in self.digests.items()
                        if "{" + n + "}" in text or "report" in raw}  # a report reads every stage before it
            self.digests[raw["name"]] = _spec_hash(_substitute(copy.deepcopy(raw), self.dirs), upstream)

    def stage_dir(self, name: str) -> Path:
        return Path(self.dirs[name])

    def _finished_digest(self, name: str) -> str | None:
        marker = self.stage_dir(name) / "complete.json"
        return json.loads(marker.read_text()).get("spec_hash") if marker.is_file() else None

    def is_complete(self, stage: dict) -> bool:
        return self._finished_digest(stage["name"]) == self.digests[stage["name"]]

    def _set_aside(self, name: str, old: str) -> None:
        """A finished stage whose digest changed: keep its outputs beside the new run's."""
        src = self.stage_dir(name)
        dst = src.with_name(f"{name}.previous-{old}")
        k = 1
        while dst.exists():
            dst, k = src.with_name(f"{name}.previous-{old}-{k}"), k + 1
        src.rename(dst)
        self.log(f"[pipeline] {name}: its spec, configs or inputs changed since it finished; "
                 f"earlier outputs moved to {dst}")

    def run(self, only: list[str] | None = None) -> None:
        for raw in self.spec["stages"]:
            stage = _substitute(copy.deepcopy(raw), self.dirs)
            name = stage["name"]
            if only and name not in only:
                continue
            if self.is_complete(stage):
                self.log(f"[pipeline] {name}: complete, skipped")
                continue
            old = self._finished_digest(name)
            if old is not None:
                self._set_aside(name, old)
            stage_dir = self.stage_dir(name)
            stage_dir.mkdir(parents=True, exist_ok=True)
            self.log(f"[pipeline] {name}: running")
            start = time.perf_counter()
            kind = next(k for k in STAGE_KINDS if k in stage)
            getattr(self, f"_run_{kind}")(stage, stage_dir)
            seconds = time.perf_counter() - start
            (stage_dir / "complete.json").write_text(json.dumps(
                {"spec_hash": self.digests[name], "seconds": seconds, "kind": kind}, indent=2) + "\n")
            self.log(f"[pipeline] {name}: done in {seconds / 60:.1f} min")

    # -- stage kinds -------------------------------------------------------------------

    def _run_data(self, stage: dict, stage_dir: Path) -> None:
        args = dict(stage["data"])
        world = args.pop("world", "shapes")
        if world == "shapes":
            from data.shapes import write_shapes as write
        elif world == "sort-of-clevr":
            from data.sort_of_clevr import write_sort_of_clevr as write
        else:
            raise ValueError(f"stage {stage['name']!r}: unknown world {world!r} (shapes, sort-of-clevr)")
        write(stage_dir, **args)

    def _run_noise(self, stage: dict, stage_dir: Path) -> None:
        from data.curation.noise import inject_noise

        args = dict(stage["noise"])
        if "src" not in args:
            raise ValueError(f"stage {stage['name']!r}: `noise` needs `src` (the clean shards' pattern)")
        self.log(f"[pipeline] {stage['name']}: {inject_noise(args.pop('src'), stage_dir, **args)['counts']}")

    def _run_curate(self, stage: dict, stage_dir: Path) -> None:
        """`curate: {config: YAML or mapping, in: [[NAME=]PATTERN, ...], models: {step name: model spec}}`;
        `models` points a step at a checkpoint of an earlier stage (e.g. `{clip}`)."""
        from data.curation.curate import curate

        spec = dict(stage["curate"])
        unknown = set(spec) - {"config", "in", "models"}
        if unknown or "config" not in spec or "in" not in spec:
            raise ValueError(f"stage {stage['name']!r}: `curate` takes config, in and optional models; "
                             f"got {sorted(spec)}")
        inputs = [spec["in"]] if isinstance(spec["in"], str) else spec["in"]
        report = curate(spec["config"], inputs, stage_dir, models=spec.get("models"))
        self.log(f"[pipeline] {stage['name']}: kept {report['kept']} of {report['input']}")

    def _run_conversations(self, stage: dict, stage_dir: Path) -> None:
        """`conversations: {shards: PATTERN or list, prompt?: ...}` -> `<stage>/train.json` + images."""
        from data.curation.conversations import shards_to_llava

        spec = dict(stage["conversations"])
        if "shards" not in spec:
            raise ValueError(f"stage {stage['name']!r}: `conversations` needs `shards`")
        summary = shards_to_llava(spec.pop("shards"), stage_dir, **spec)
        self.log(f"[pipeline] {stage['name']}: {summary['samples']} conversations, {summary['skipped']} skipped")

    def _run_fit(self, stage: dict, stage_dir: Path) -> None:
        cfg = resolved_fit_config(stage, stage_dir)
        path = stage_dir / "stage.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        last = stage_dir / "checkpoints" / "last.ckpt"  # a file, or a directory when FSDP saves it sharded
        args = ["fit", "--config", str(path)]
        if last.exists():
            self.log(f"[pipeline] {stage['name']}: resuming from {last}")
            args += ["--ckpt_path", str(last)]
        if one_process(cfg.get("trainer") or {}):
            from train.cli import main

            main(args)
            return
        # Lightning starts the other ranks by re-running its own command line: from inside the
        # pipeline that would be the whole pipeline, once per rank. A `chimera fit` process of its
        # own gives every rank exactly this stage.
        self.log(f"[pipeline] {stage['name']}: several processes; launching `chimera fit` for them")
        proc = subprocess.run([sys.executable, "-m", "train.cli", *args])
        if proc.returncode != 0:
            raise StageFailed(f"stage {stage['name']!r}: `chimera fit` exited with status {proc.returncode} "
                              f"(its output is above; logs in {stage_dir})")

    def _run_eval(self, stage: dict, stage_dir: Path) -> None:
        from train.checkpoint import load_module
        from train.evaluation.decoding import Decoding
        from train.evaluation.runner import evaluate_model

        spec = stage["eval"]
        decoding = Decoding(**(spec.get("decoding") or {}))
        module = load_module(spec["ckpt"])
        evaluate_model(module, spec["data"], stage_dir, decoding, spec.get("limit"), spec["ckpt"])

    def _run_report(self, stage: dict, stage_dir: Path) -> None:
        from train.report import write_report

        self.log(write_report(self, stage["report"], stage_dir))
