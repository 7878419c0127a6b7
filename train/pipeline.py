"""`chimera pipeline run PIPELINE.yaml`: stages in order, each an experiment config (or a data or
eval step) plus overrides that point at earlier stages' outputs.

Every stage writes into `<out>/<stage name>/`. A stage that finished writes `complete.json`
with a digest of what it was run from: its resolved spec, the text of the config files it
names, and the digests of the stages it reads from. It is skipped while that digest holds;
when it changes (an edited experiment YAML, a changed upstream stage) the stage runs afresh
and its old folder is kept beside it as `<stage name>.previous-<digest>`. A stage records its digest
in `started.json` before it runs: an interrupted fit stage with the same digest resumes from
`<stage>/checkpoints/last.ckpt` (its metrics before and after the resume stay one curve,
train/run_metrics.py); one whose digest changed starts afresh, the partial run kept as
`<stage name>.partial-<digest>`. `--only` runs named stages once every stage they read from has
finished from its current spec (else it names those). A failing stage leaves earlier stages'
outputs untouched, so rerunning picks up where it stopped.

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


def _is_checkpoint_callback(callback) -> bool:
    return isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("ModelCheckpoint")


def _triggers(init_args: dict) -> tuple:
    """What decides when a ModelCheckpoint saves; Lightning refuses two callbacks that share it."""
    return (init_args.get("monitor"), init_args.get("every_n_train_steps"), init_args.get("every_n_epochs"),
            init_args.get("train_time_interval"))


def resolved_fit_config(stage: dict, stage_dir: Path, log=print) -> dict:
    """The experiment config with the stage's overrides, running in the stage directory (`run.dir`,
    train/run_dir.py) and checkpointing `last.ckpt` into `<stage>/checkpoints` (so the pipeline can
    resume and later stages can find it). The experiment's own ModelCheckpoints are kept, each
    writing into `<stage>/checkpoints/callback<i>` (so stages never share a checkpoint folder)."""
    path = Path(stage["fit"])
    if not path.is_file():
        raise FileNotFoundError(f"stage {stage['name']!r}: experiment config not found: {path}")
    cfg = yaml.safe_load(path.read_text())
    for key, value in (stage.get("set") or {}).items():
        set_dotted(cfg, key, value)
    cfg["run"] = {**(cfg.get("run") or {}), "dir": str(stage_dir)}
    trainer = cfg.setdefault("trainer", {})
    if not trainer.get("logger"):  # the report draws its curves from the stage's metrics.csv
        trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
    ours = {"dirpath": str(stage_dir / "checkpoints"), "save_last": True,
            "every_n_train_steps": int(stage.get("checkpoint_every", 100))}
    callbacks = []
    for i, callback in enumerate(trainer.get("callbacks") or []):
        if not _is_checkpoint_callback(callback):
            callbacks.append(callback)
            continue
        args = dict(callback.get("init_args") or {})
        if ours is not None and _triggers(args) == _triggers(ours):
            args.update(dirpath=ours["dirpath"], save_last=True)
            ours = None
            log(f"[pipeline] {stage['name']}: your ModelCheckpoint (callbacks[{i}]) saves on the stage's "
                f"schedule; it writes the stage's last.ckpt, in {args['dirpath']}")
        else:
            args["dirpath"] = str(stage_dir / "checkpoints" / f"callback{i}")
            log(f"[pipeline] {stage['name']}: keeping your ModelCheckpoint (callbacks[{i}]); its checkpoints "
                f"go to {args['dirpath']}")
        callbacks.append({**callback, "init_args": args})
    if ours is not None:
        callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": ours})
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
        self.upstream: dict[str, list[str]] = {}
        for raw in self.spec["stages"]:  # in order, so every upstream digest is known
            text = json.dumps(raw, default=str)
            upstream = {n: d for n, d in self.digests.items()
                        if "{" + n + "}" in text or "report" in raw}  # a report reads every stage before it
            self.upstream[raw["name"]] = list(upstream)
            self.digests[raw["name"]] = _spec_hash(_substitute(copy.deepcopy(raw), self.dirs), upstream)

    def stage_dir(self, name: str) -> Path:
        return Path(self.dirs[name])

    def _digest_in(self, name: str, marker: str) -> str | None:
        path = self.stage_dir(name) / marker
        return json.loads(path.read_text()).get("spec_hash") if path.is_file() else None

    def _finished_digest(self, name: str) -> str | None:
        return self._digest_in(name, "complete.json")

    def is_complete(self, stage: dict) -> bool:
        return self._finished_digest(stage["name"]) == self.digests[stage["name"]]

    def _set_aside(self, name: str, label: str, why: str) -> None:
        """Keep a stage's earlier outputs beside the new run's, as `<name>.<label>`."""
        src = self.stage_dir(name)
        dst = src.with_name(f"{name}.{label}")
        k = 1
        while dst.exists():
            dst, k = src.with_name(f"{name}.{label}-{k}"), k + 1
        src.rename(dst)
        self.log(f"[pipeline] {name}: {why}; earlier outputs moved to {dst}")

    def _clear_stale(self, name: str) -> None:
        """A stage folder not from this spec is set aside: finished (`previous-<digest>`) or
        interrupted (`partial-<digest>`, its digest from `started.json`; `partial-unknown` without one)."""
        folder, digest = self.stage_dir(name), self.digests[name]
        finished, started = self._finished_digest(name), self._digest_in(name, "started.json")
        if finished is not None:
            self._set_aside(name, f"previous-{finished}", "its spec, configs or inputs changed since it finished")
        elif started is not None and started != digest:
            self._set_aside(name, f"partial-{started}", "interrupted, and its spec, configs or inputs changed since; "
                                                        "it starts afresh")
        elif started is None and folder.is_dir() and any(folder.iterdir()):
            self._set_aside(name, "partial-unknown", "its folder holds a run with no record of its spec; "
                                                     "it starts afresh")

    def check_only(self, only: list[str]) -> None:
        """`--only` runs just these stages: every stage they read from must be among them or have
        finished from its current spec; otherwise it refuses, naming the missing and stale ones."""
        unknown = [n for n in only if n not in self.digests]
        if unknown:
            raise ValueError(f"--only: no stage named {', '.join(map(repr, unknown))} (stages: {', '.join(self.digests)})")
        problems = []
        for name in only:
            for up in self.upstream[name]:
                if up in only or self.is_complete({"name": up}):
                    continue
                state = "missing" if self._finished_digest(up) is None else "stale (its spec, configs or inputs changed)"
                problems.append(f"{name!r} reads {up!r}, which is {state}")
        if problems:
            raise ValueError("--only: " + "; ".join(problems) + ". Run those stages too (add them to --only, "
                             "or run the whole pipeline).")

    def run(self, only: list[str] | None = None) -> None:
        if only:
            self.check_only(only)
        for raw in self.spec["stages"]:
            stage = _substitute(copy.deepcopy(raw), self.dirs)
            name = stage["name"]
            if only and name not in only:
                continue
            if self.is_complete(stage):
                self.log(f"[pipeline] {name}: complete, skipped")
                continue
            self._clear_stale(name)
            stage_dir = self.stage_dir(name)
            stage_dir.mkdir(parents=True, exist_ok=True)
            kind = next(k for k in STAGE_KINDS if k in stage)
            # recorded before it runs: an interrupted stage resumes only from the same spec
            (stage_dir / "started.json").write_text(json.dumps({"spec_hash": self.digests[name], "kind": kind}) + "\n")
            self.log(f"[pipeline] {name}: running")
            start = time.perf_counter()
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
        elif world == "shapes-hr":
            from data.shapes_hr import write_shapes_hr as write
        else:
            raise ValueError(f"stage {stage['name']!r}: unknown world {world!r} (shapes, sort-of-clevr, shapes-hr)")
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
        cfg = resolved_fit_config(stage, stage_dir, self.log)
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
