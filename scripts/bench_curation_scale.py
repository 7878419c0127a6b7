"""Curation throughput on datatrove executors: `chimera curate` MinHash dedup in one process, on
the local executor at 1 and 2 workers, and datatrove's own MinHash pipeline on the same corpus.

Corpus: scripts/bench_dedup.py's synthetic documents (random words, planted near-copies with
~1% of words replaced), written as JSONL shards. Every run reads the shards, finds near
duplicates (word 3-grams, 128 hashes, threshold 0.8; datatrove with the same 9 bands x 13
rows) and writes the kept documents; wall-clock seconds include the executors' process start-up
(both with `fork`ed workers, as `chimera curate --executor local` uses for model-free chains).
Datatrove gets our shard reader (its JsonlReader needs orjson) and a whitespace word tokenizer
(faster than its default English one), so its numbers are, if anything, flattering; its shingles
are hashed with sha1 because its default xxhash call fails with xxhash 4.1 (it refuses str).

    python scripts/bench_curation_scale.py --docs 20000 --shards 8
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedup import make_corpus  # noqa: E402
from datatrove.utils.word_tokenizers import WordTokenizer  # noqa: E402

from data.curation.curate import curate  # noqa: E402
from data.curation.executors import curate_with_executor  # noqa: E402
from data.curation.minhash import optimal_bands_rows  # noqa: E402


class SplitTokenizer(WordTokenizer):
    """Whitespace words: the corpus is already `w123 w45 ...`."""

    def word_tokenize(self, text):
        return text.split()

    def sent_tokenize(self, text):
        return [text]

    def span_tokenize(self, text):
        return [(0, len(text))]


def id_and_text(writer, doc) -> dict:
    """Parquet rows of the kept documents (our reader's metadata holds raw shard bytes)."""
    return {"id": doc.id, "text": doc.text}


def write_corpus(root: Path, texts: list[str], shards: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // shards)
    for s in range(shards):
        with (root / f"bench-{s:06d}.jsonl").open("w") as f:
            for i in range(s * per, min(len(texts), (s + 1) * per)):
                f.write(json.dumps({"id": f"d{i:07d}", "text": texts[i]}) + "\n")
    return [f"{root}/bench-*.jsonl"]


def removed_ours(out: Path) -> set[int]:
    return {int(json.loads(x)["key"][1:]) for x in (out / "removed.jsonl").read_text().splitlines()}


def run_datatrove(inputs, out: Path, tasks: int, workers: int, bands: int, rows: int) -> set[int]:
    import pyarrow.parquet as pq
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    from data.curation.curate import parse_inputs
    from data.curation.datatrove_steps import ShardReader

    shards = [(name, url) for name, urls in parse_inputs(inputs).items() for url in urls]
    # sha1 shingle hashes: the default xxhash path fails with xxhash 4.1 (it refuses str)
    # and numbers kept: its default number normalisation would turn every `w123` word into `w0`
    cfg = MinhashConfig(n_grams=3, num_buckets=bands, hashes_per_bucket=rows, hash_config=HashConfig(hash_fc="sha1"),
                        norm_config=TextNormConfig(norm_numbers=False))
    work = out / "work"
    reader = ShardReader(shards, str(work))
    stages = [
        ([reader, MinhashDedupSignature(str(work / "sigs"), cfg, language=SplitTokenizer())], tasks),
        ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)], bands),
        ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg)], 1),
        ([reader, MinhashDedupFilter(str(work / "remove")), ParquetWriter(str(out / "kept"), adapter=id_and_text)], tasks),
    ]
    prev = None
    for i, (pipeline, n) in enumerate(stages):
        prev = LocalPipelineExecutor(pipeline, tasks=n, workers=min(workers, n), depends=prev, start_method="fork",
                                     logging_dir=str(work / f"logs{i}"))
    prev.run()
    kept = {int(k[1:]) for p in (out / "kept").glob("*.parquet") for k in pq.read_table(p, columns=["id"])["id"].to_pylist()}
    return {int(k[1:]) for k in (json.loads(x)["id"] for s in shards for x in open(s[1]))} - kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--dup-fraction", type=float, default=0.1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    texts, planted, _ = make_corpus(args.docs, args.dup_fraction, args.words, 50_000, 0.01, 0)
    bands, rows = optimal_bands_rows(0.8, 128)
    config = {"steps": [{"type": "minhash_dedup", "ngram": 3, "num_perm": 128, "threshold": 0.8,
                         "bands": bands, "rows": rows}]}
    tmp = Path(tempfile.mkdtemp(prefix="bench_curation_scale_"))
    inputs = write_corpus(tmp / "corpus", texts, args.shards)
    runs = [("chimera curate, one process", 1, lambda out: (curate(config, inputs, out), removed_ours(out))[1])]
    for w in args.workers:
        runs.append((f"chimera curate --executor local --tasks {args.shards}", w,
                     lambda out, w=w: (curate_with_executor(config, inputs, out, "local", args.shards, w),
                                       removed_ours(out))[1]))
    for w in args.workers:
        runs.append((f"datatrove MinHash pipeline, {args.shards} tasks", w,
                     lambda out, w=w: run_datatrove(inputs, out, args.shards, w, bands, rows)))
    rows_out = []
    for i, (name, workers, fn) in enumerate(runs):
        out = tmp / f"run{i}"
        t = time.perf_counter()
        removed = fn(out)
        sec = time.perf_counter() - t
        hit = len(removed & planted)
        rows_out.append((name, workers, args.docs / sec, sec, hit / len(planted), hit / max(len(removed), 1)))
        print(f"{name} ({workers} workers): {sec:.2f} s", file=sys.stderr)
    print(f"\n{args.docs:,} documents of {args.words} words in {args.shards} JSONL shards, "
          f"{len(planted):,} planted near-copies; {bands} bands x {rows} rows\n")
    print("| run | workers | docs/s | seconds | recall | precision |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, workers, dps, sec, rec, prec in rows_out:
        print(f"| {name} | {workers} | {dps:,.0f} | {sec:.2f} | {rec:.3f} | {prec:.3f} |")
    shutil.rmtree(tmp, ignore_errors=True)  # noqa


if __name__ == "__main__":
    main()
