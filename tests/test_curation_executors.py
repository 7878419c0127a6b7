"""`chimera curate --executor local|slurm|ray` on datatrove: the distributed stages decide exactly
what the single-process run decides (same kept bytes, same removals and duplicate clusters, same
report counts), at several task and worker counts."""

import json
import random
from pathlib import Path

import pytest

from data.curation.curate import curate, curate_main
from data.curation.executors import build_executors, curate_with_executor, plan_stages

WORDS = [w for w in "harbour museum market river village station garden bridge library tower school mill old small "
         "quiet busy green narrow famous northern bright wooden painted repaired described opened crossed measured "
         "sold carried built watched remembered autumn winter morning evening fisherman teacher baker farmer "
         "window roof road field orchard valley island chapel bakery meadow lantern".split()]
STOP = ["the", "of", "and", "to", "with", "that", "a", "in"]


def _document(rng: random.Random) -> str:
    """About 120 words of varied prose (a stop word every other word) that passes the Gopher rules."""
    sentences = []
    for _ in range(12):
        words = [rng.choice(STOP) if k % 2 else rng.choice(WORDS) for k in range(10)]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def _edit(text: str, rng: random.Random, n: int) -> str:
    words = text.split()
    for _ in range(n):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two sources, 5 shards; near copies (1-2 words changed) of earlier documents, some in the same
    shard, some across shards and sources, some copies of copies; short and list-like documents
    for the quality filter."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    docs = []
    for i in range(150):
        r = rng.random()
        if docs and r < 0.25:
            text = _edit(rng.choice(docs)["text"], rng, rng.randrange(1, 3))
        elif r < 0.32:
            text = "Buy now! Best offers here."
        else:
            text = _document(rng)
        docs.append({"id": f"doc{i:03d}", "text": text})
    for s in range(3):
        (root / f"web-{s:06d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[s * 40:(s + 1) * 40]))
    for s in range(2):
        (root / f"books-{s:06d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[120 + s * 15:135 + s * 15]))
    return root


TEXT_CONFIG = {"steps": [{"type": "text_quality"},
                         {"type": "minhash_dedup", "ngram": 3, "threshold": 0.8, "num_perm": 64}],
               "mixture": {"temperature": 2.0}, "examples": 4}


def _inputs(root):
    return [f"web={root}/web-*.jsonl", f"books={root}/books-*.jsonl"]


def _comparable(report: dict) -> dict:
    report = json.loads(json.dumps(report))
    report.pop("executor", None)
    for s in report["steps"]:
        s.pop("seconds")
    return report


def assert_same_run(single: Path, dist: Path) -> None:
    """Every output shard byte-identical, removed.jsonl identical, mixture and report equal."""
    files = sorted(p.relative_to(single) for p in single.rglob("*") if p.is_file())
    dist_files = sorted(p.relative_to(dist) for p in dist.rglob("*") if p.is_file() and ".work" not in p.parts)
    assert files == dist_files
    for rel in files:
        if rel.name == "curation_report.json":
            a, b = (json.loads((d / rel).read_text()) for d in (single, dist))
            a["outputs"] = b["outputs"] = None  # absolute paths of the two output folders
            assert _comparable(a) == _comparable(b)
        elif rel.name == "mixture.json":
            a, b = (json.loads((d / rel).read_text()) for d in (single, dist))
            for m, d in ((a, single), (b, dist)):
                m["sources"] = {k: {**v, "shards": [str(Path(p).relative_to(d)) for p in v["shards"]]}
                                for k, v in m["sources"].items()}
            assert a == b
        else:
            assert (single / rel).read_bytes() == (dist / rel).read_bytes(), rel


@pytest.fixture(scope="module")
def single_text(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, curate(TEXT_CONFIG, _inputs(corpus), out)


def test_single_process_reference_removes_copies_and_junk(single_text):
    """The reference itself does what the corpus was built for, so parity below means something."""
    out, report = single_text
    rows = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    quality, dups = report["steps"]
    assert report["input"] == 150 and quality["reasons"] == {"word_count<50": quality["removed"]} and quality["removed"] > 5
    assert dups["removed"] > 20 and dups["reasons"] == {"near_duplicate_text": dups["removed"]}
    # duplicates point at an earlier kept document of another or the same shard and source
    kept = {json.loads(x)["id"] for p in out.rglob("*.jsonl") if p.name != "removed.jsonl"
            for x in p.read_text().splitlines()}
    targets = {r["duplicate_of"] for r in rows if r["step"] == "minhash_dedup"}
    assert targets <= kept and all(r["duplicate_of"] < r["key"] for r in rows if "duplicate_of" in r)
    assert {r["source"] for r in rows if r["step"] == "minhash_dedup"} == {"web", "books"}


@pytest.mark.parametrize("tasks,workers", [(1, 1), (4, 1), (3, 2)])
def test_local_executor_matches_single_process(corpus, single_text, tmp_path, tasks, workers):
    out = tmp_path / "out"
    report = curate_with_executor(TEXT_CONFIG, _inputs(corpus), out, "local", tasks=tasks, workers=workers)
    assert report["executor"] == {"executor": "local", "tasks": tasks, "workers": workers,
                                  "work_dir": str(out / ".work")}
    assert_same_run(single_text[0], out)


def test_minhash_without_verify_and_resume(corpus, tmp_path):
    """verify=False (band keys only) matches too; a rerun on the same work folder skips completed
    tasks and gives the same result; a changed config on that folder is refused."""
    config = {"steps": [{"type": "minhash_dedup", "ngram": 3, "threshold": 0.8, "num_perm": 64, "verify": False}]}
    curate(config, _inputs(corpus), tmp_path / "single")
    curate_with_executor(config, _inputs(corpus), tmp_path / "dist", "local", tasks=3, workers=1)
    assert_same_run(tmp_path / "single", tmp_path / "dist")
    (tmp_path / "dist" / "removed.jsonl").unlink()
    curate_with_executor(config, _inputs(corpus), tmp_path / "dist", "local", tasks=3, workers=1)
    assert not (tmp_path / "dist" / "removed.jsonl").exists()  # every task, the report included, was complete
    with pytest.raises(ValueError, match="holds a different run"):
        curate_with_executor(TEXT_CONFIG, _inputs(corpus), tmp_path / "dist", "local", tasks=3, workers=1)


def test_slurm_stages_become_dependent_job_arrays(corpus, tmp_path):
    """Without a cluster: the sbatch script of each stage, its array size and the dependency chain
    (datatrove submits each job with --dependency=afterok on the previous one)."""
    import dill

    work = str(tmp_path / "work")
    stages = plan_stages(TEXT_CONFIG, _inputs(corpus), tmp_path / "out", work, tasks=4)
    assert [(name, n) for name, _, n in stages] == [
        ("pass0-minhash_dedup-scan", 4), ("pass0-minhash_dedup-bands", 4), ("pass0-minhash_dedup-clusters", 1),
        ("write", 4), ("report", 1)]
    execs = build_executors(stages, "slurm", work, workers=2, partition="cpu", time="01:00:00",
                            venv_path="/opt/chimera/.venv/bin/activate")
    assert [e.depends for e in execs] == [None] + execs[:-1]
    script = execs[0].get_launch_file_contents(execs[0].get_sbatch_args(4), "launch_pickled_pipeline X")
    for line in ("#SBATCH --partition=cpu", "#SBATCH --array=0-3%2", "#SBATCH --job-name=curate-pass0-minhash_dedup-scan",
                 "#SBATCH --time=01:00:00", "source /opt/chimera/.venv/bin/activate", "launch_pickled_pipeline X"):
        assert line in script
    clusters = execs[2].get_sbatch_args(1)
    assert clusters["array"] == "0-0%1" and execs[2].tasks == 1
    restored = dill.loads(dill.dumps(execs[1]))  # what each job unpickles from executor.pik
    assert restored.pipeline[0].dedup.bands == stages[1][1][0].dedup.bands


def test_cli_options(corpus, tmp_path, capsys):
    config = tmp_path / "text.yaml"
    config.write_text(json.dumps(TEXT_CONFIG))
    with pytest.raises(SystemExit, match="--executor slurm needs --partition"):
        curate_main(["--config", str(config), "--in", f"{corpus}/web-*.jsonl", "--out", str(tmp_path / "o"),
                     "--executor", "slurm"])
    curate_main(["--config", str(config), "--in", f"{corpus}/web-*.jsonl", "--out", str(tmp_path / "o"),
                 "--executor", "local", "--tasks", "2", "--workers", "1", "--work-dir", str(tmp_path / "w")])
    assert "kept" in capsys.readouterr().out and (tmp_path / "w" / "plan.json").is_file()
    with pytest.raises(ValueError, match="--tasks must be >= 1"):
        curate_with_executor(TEXT_CONFIG, _inputs(corpus), tmp_path / "x", "local", tasks=0)


@pytest.mark.slow  # 10-23 s on 2 shared cores, most of it Ray starting its local cluster
def test_ray_executor_on_a_local_cluster(corpus, single_text, tmp_path):
    """A 2-CPU Ray cluster started by the test runs the stages as Ray tasks."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    try:
        curate_with_executor(TEXT_CONFIG, _inputs(corpus), tmp_path / "out", "ray", tasks=2, mem_per_cpu_gb=0.25)
    finally:
        ray.shutdown()
    assert_same_run(single_text[0], tmp_path / "out")


def test_local_workers_fork_unless_a_stage_holds_a_model(corpus, tmp_path):
    from data.curation.executors import local_start_method

    text = plan_stages(TEXT_CONFIG, _inputs(corpus), tmp_path / "o", str(tmp_path / "w"), tasks=2)
    assert local_start_method(text) == "fork"
    clip = {"steps": [{"type": "clip_score", "threshold": 0.5, "model": {"class_path": "torch.nn.Identity"}}]}
    assert local_start_method(plan_stages(clip, _inputs(corpus), tmp_path / "o", str(tmp_path / "w"), tasks=2)) == "forkserver"


def test_work_folder_on_an_fsspec_file_system(corpus, single_text, tmp_path):
    """Every hand-over between stages goes through fsspec: with the work folder on fsspec's
    in-memory file system (one process, so the tasks share it) nothing lands on local disk but
    the outputs, which equal the single-process run's."""
    import fsspec

    work = "memory://curation-test-work"
    curate_with_executor(TEXT_CONFIG, _inputs(corpus), tmp_path / "out", "local", tasks=3, workers=1, work_dir=work)
    assert_same_run(single_text[0], tmp_path / "out")
    fs = fsspec.filesystem("memory")
    assert fs.exists(f"{work}/plan.json") and fs.glob(f"{work}/state/step01/*.npz")
    assert len(fs.glob(f"{work}/removals/step00/*.jsonl")) > 0 and not (tmp_path / "out" / ".work").exists()
    fs.rm(work, recursive=True)
