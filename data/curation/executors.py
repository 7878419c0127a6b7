"""`chimera curate --executor local|slurm|ray`: the configured chain as datatrove stages.

Why: the single-process run keeps ~580 bytes of state per document in one process and cannot
spread hashing or filtering over cores or nodes. Here the same steps run as datatrove pipeline
stages on datatrove's own executors (`LocalPipelineExecutor`, `SlurmPipelineExecutor`,
`RayPipelineExecutor`), which bring task sharding, resumable completion markers and job
dependencies; stages hand over through a work folder (`stage_io`) on any fsspec file system.

The chain is cut into passes exactly as in `curate()`: filters up to and including the next
global step. Per pass:

    scan     N tasks   read shards (skipping earlier removals) -> filters -> the global step's
                       per-shard state (MinHash signatures/band keys, pHashes, embeddings, scores)
    minhash  N' tasks  band pairs (N' = min(N, bands)), then 1 task: clusters
    images   1 task    pHash clusters / SemDeDup / CLIP-score cut
then `write` (N tasks: kept samples in the input format) and `report` (1 task). Kept samples,
removals, duplicate clusters and report counts equal the single-process run's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from data.curation.curate import (ClipScoreStep, MinHashStep, PHashStep, SemDedupStep, Step, build_steps,
                                  load_config, parse_inputs)
from data.curation.datatrove_images import (ClipScoreScan, ClipScoreSelect, EmbeddingScan, PHashClusters,
                                            PHashScan, SemDedupClusters)
from data.curation.datatrove_minhash import MinhashBandPairs, MinhashClusters, MinhashSignatures
from data.curation.datatrove_report import CurationReport
from data.curation.datatrove_steps import KeptShardWriter, ShardReader, StepFilter
from data.curation.stage_io import folder

EXECUTORS = ("local", "slurm", "ray")

# global step type -> (per-shard scan step, decision step(s)); MinHash has a parallel band stage
_SCANS = {MinHashStep: MinhashSignatures, PHashStep: PHashScan, SemDedupStep: EmbeddingScan,
          ClipScoreStep: ClipScoreScan}
_DECISIONS = {PHashStep: PHashClusters, SemDedupStep: SemDedupClusters, ClipScoreStep: ClipScoreSelect}


def passes(steps: Sequence[Step]) -> list[list[int]]:
    """Step indices per pass: filters up to and including the next global step (as `curate`)."""
    out, group = [], []
    for i, step in enumerate(steps):
        group.append(i)
        if step.is_global:
            out.append(group)
            group = []
    if group:
        out.append(group)
    return out


def plan_stages(config: str | Path | Mapping, inputs: Sequence[str] | Mapping[str, Sequence[str]], out: str | Path,
                work_dir: str, tasks: int, models: Mapping[str, object] | None = None,
                executor_info: Mapping | None = None) -> list[tuple[str, list, int]]:
    """(stage name, datatrove pipeline, task count) in run order; checks the config first."""
    if tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {tasks}")
    cfg = load_config(config)
    steps = build_steps(cfg.get("steps") or [], models)
    text_field = cfg.get("text_field", "text")
    sources = dict(inputs) if isinstance(inputs, Mapping) else parse_inputs(inputs)
    shards = [(name, url) for name, urls in sources.items() for url in urls]
    work, out = str(work_dir), str(out)
    stages: list[tuple[str, list, int]] = []
    for p, group in enumerate(passes(steps)):
        pipeline = [ShardReader(shards, work, removed_by=range(group[0]), text_field=text_field)]
        pipeline += [StepFilter(steps[i], i, work) for i in group if not steps[i].is_global]
        last = steps[group[-1]]
        if not last.is_global:
            stages.append((f"pass{p}-filter", pipeline, tasks))
            continue
        i = group[-1]
        pipeline.append(_SCANS[type(last)](last, i, work))
        stages.append((f"pass{p}-{last.name}-scan", pipeline, tasks))
        if isinstance(last, MinHashStep):
            stages.append((f"pass{p}-{last.name}-bands", [MinhashBandPairs(last, i, work)],
                           min(tasks, last.dedup.bands)))
            stages.append((f"pass{p}-{last.name}-clusters", [MinhashClusters(i, work)], 1))
        else:
            stages.append((f"pass{p}-{last.name}-decide", [_DECISIONS[type(last)](last, i, work)], 1))
    n = len(steps)
    stages.append(("write", [ShardReader(shards, work, removed_by=range(n), text_field=text_field, annotate=True),
                             KeptShardWriter(shards, out, work)], tasks))
    step_info = [(s.name, type(s).__name__, s.describe()) for s in steps]
    stages.append(("report", [CurationReport(shards, list(sources), step_info, out, work, cfg.get("mixture"),
                                             int(cfg.get("examples", 3)), executor_info or {})], 1))
    return stages


def local_start_method(stages: list[tuple[str, list, int]]) -> str:
    """`fork` (a worker starts in milliseconds: 2-3x faster end to end on 20k documents) unless a
    stage holds a torch model, whose thread pools must not be forked: then datatrove's default
    `forkserver`."""
    models = (EmbeddingScan, ClipScoreScan)
    return "forkserver" if any(isinstance(s, models) for _, pipeline, _ in stages for s in pipeline) else "fork"


def build_executors(stages: list[tuple[str, list, int]], executor: str, work_dir: str, workers: int = -1,
                    **options) -> list:
    """One datatrove executor per stage, each depending on the previous one. `options` go to the
    executor class (Slurm: partition, time, cpus_per_task, mem_per_cpu_gb, venv_path, sbatch_args, ...;
    Ray: cpus_per_task, mem_per_cpu_gb, ...)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    logs = folder(work_dir)
    out, prev = [], None
    for name, pipeline, n in stages:
        common = {"pipeline": pipeline, "tasks": n, "logging_dir": logs.resolve_paths(f"logs/{name}"), "depends": prev}
        w = n if workers == -1 else min(workers, n)
        if executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            ex = LocalPipelineExecutor(workers=w, **common, **options)
        elif executor == "ray":
            from datatrove.executor.ray import RayPipelineExecutor

            ex = RayPipelineExecutor(workers=w, **common, **options)
        else:
            from datatrove.executor.slurm import SlurmPipelineExecutor

            ex = SlurmPipelineExecutor(workers=-1 if workers == -1 else w, job_name=f"curate-{name}", **common, **options)
        out.append(ex)
        prev = ex
    return out


def _check_work_dir(work_dir: str, plan: dict) -> None:
    """A work folder resumes only the run it was made for: completed tasks are skipped."""
    work = folder(work_dir)
    if work.exists("plan.json"):
        with work.open("plan.json", "rt") as f:
            if json.load(f) != plan:
                raise ValueError(f"work folder {work_dir} holds a different run (config or inputs changed); "
                                 "remove it or pass another --work-dir")
        return
    with work.open("plan.json", "wt") as f:
        json.dump(plan, f)


def curate_with_executor(config: str | Path | Mapping, inputs: Sequence[str] | Mapping[str, Sequence[str]],
                         out: str | Path, executor: str = "local", tasks: int = 4, workers: int = -1,
                         work_dir: str | None = None, models: Mapping[str, object] | None = None,
                         **options) -> dict | None:
    """Run `chimera curate` on a datatrove executor. Returns the report (local, ray), or None for
    slurm, where the stages are submitted as dependent job arrays and the report appears in
    `out/curation_report.json` when the last one finishes. Ray needs `ray.init(...)` first."""
    out = Path(out)
    work_dir = str(work_dir or out / ".work")
    cfg = load_config(config)
    plan = {"config": json.loads(json.dumps(cfg, default=repr)), "out": str(out), "tasks": tasks,
            "inputs": inputs if not isinstance(inputs, Mapping) else {k: list(v) for k, v in inputs.items()}}
    info = {"executor": executor, "tasks": tasks, "workers": workers, "work_dir": work_dir}
    stages = plan_stages(cfg, inputs, out, work_dir, tasks, models, info)
    if executor == "local" and "start_method" not in options:
        options["start_method"] = local_start_method(stages)
    out.mkdir(parents=True, exist_ok=True)
    _check_work_dir(work_dir, plan)
    executors = build_executors(stages, executor, work_dir, workers, **options)
    executors[-1].run()
    if executor == "slurm":
        return None
    return json.loads((out / "curation_report.json").read_text())


def add_executor_arguments(parser) -> None:
    """`chimera curate` options for the datatrove executors (used only with --executor)."""
    g = parser.add_argument_group("scale-out (datatrove executors)")
    g.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="run the chain as datatrove stages on this executor (default: one process)")
    g.add_argument("--tasks", type=int, default=4, help="tasks per parallel stage (shards are dealt round-robin)")
    g.add_argument("--workers", type=int, default=-1, help="tasks running at once (-1: all)")
    g.add_argument("--work-dir", default=None,
                   help="intermediate files, any fsspec URL (default OUT/.work); rerunning resumes")
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--time", default="04:00:00", help="slurm: time limit per job")
    g.add_argument("--cpus-per-task", type=int, default=1, help="slurm/ray: CPUs per task")
    g.add_argument("--mem-per-cpu-gb", type=float, default=2, help="slurm/ray: memory per CPU")
    g.add_argument("--venv", help="slurm: virtual environment activated in each job (bin/activate)")
    g.add_argument("--ray-address", default=None, help="ray: cluster address (default: start a local one)")


def executor_options(args) -> dict:
    """Executor keyword arguments from the parsed options."""
    if args.executor == "slurm":
        if not args.partition:
            raise SystemExit("chimera curate: --executor slurm needs --partition")
        return {"partition": args.partition, "time": args.time, "cpus_per_task": args.cpus_per_task,
                "mem_per_cpu_gb": args.mem_per_cpu_gb, "venv_path": args.venv}
    if args.executor == "ray":
        return {"cpus_per_task": args.cpus_per_task, "mem_per_cpu_gb": args.mem_per_cpu_gb}
    return {}


def run_from_args(args) -> dict | None:
    """`chimera curate --executor ...`: start Ray if asked, run, return the report (None for slurm)."""
    if args.executor == "ray":
        import ray

        ray.init(address=args.ray_address, ignore_reinit_error=True)
    return curate_with_executor(args.config, args.inputs, args.out, args.executor, args.tasks, args.workers,
                                args.work_dir, **executor_options(args))
