"""Text curation steps, one core: documents/s of the Gopher rules, the C4 rules and MinHash
signatures, beside datatrove's equivalent steps (and datasketch's MinHash) when installed; what
each C4 setting removes from ordinary prose; and MinHash's peak memory with and without batching.

    python scripts/bench_text_steps.py [--docs 2000] [--memory-docs 16384]

The corpus is synthetic English-like prose (`prose_documents`): paragraphs of sentences built
from a fixed vocabulary with stop words, one paragraph per line, 2 to 40 sentences per document.
Every method sees the same texts in one process; each figure is documents / second of wall time
for that step alone on one core (the best of `--repeat` runs).

datatrove (a dependency: the curation executors run on it) tokenizes English with NLTK punkt, a model
download; its steps get `SplitWords` from scripts/bench_dedup.py (its own sentence regex, a regex
word splitter) through its `WordTokenizer` interface, and its MinHash uses its sha1 hash (see
scripts/bench_dedup.py for why). Its MinHash figure is `get_shingles` + `get_signature` per
document, without writing the signature files.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data.curation.c4 import C4Quality  # noqa: E402
from data.curation.minhash import MinHashDeduper, MinHasher  # noqa: E402
from data.curation.text_quality import GopherQuality  # noqa: E402

FUNCTION = ("the of and to in that with for on as by at from it is was be have this which their").split()
CONTENT = ("river town market bridge council library garden winter summer road farmer village school "
           "museum harbour field weather storm family teacher doctor island mountain forest station "
           "walked opened built moved carried found followed studied painted repaired planted visited "
           "quiet early bright heavy narrow ancient local public busy careful famous patient modern "
           "slowly again together nearly finally often later quickly").split()
NORM = dict(strip_punctuation=True, nfkc=True, digits=True)  # configs/curation/text.yaml


def prose_documents(n: int, seed: int = 0) -> list[str]:
    """`n` documents of plain prose: lines are paragraphs of 1-6 sentences of 6-24 words."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        sentences = int(rng.integers(2, 41))
        lines, left = [], sentences
        while left:
            k = min(left, int(rng.integers(1, 7)))
            left -= k
            out = []
            for _ in range(k):
                m = int(rng.integers(6, 25))
                pick_f, pick_c = rng.integers(len(FUNCTION), size=m), rng.integers(len(CONTENT), size=m)
                words = [FUNCTION[i] if f else CONTENT[j] for f, i, j in zip(rng.random(m) < 0.4, pick_f, pick_c)]
                if m > 10 and rng.random() < 0.5:
                    words[m // 2] += ","
                out.append(" ".join(words).capitalize() + str(rng.choice([".", ".", ".", "?", "!"])))
            lines.append(" ".join(out))
        docs.append("\n".join(lines))
    return docs


def rate(fn, docs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(docs)
        best = min(best, time.perf_counter() - t)
    return len(docs) / best


def installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def throughput(docs: list[str], repeat: int) -> list[list[str]]:
    rows = []
    gopher, c4 = GopherQuality(), C4Quality()
    hasher = MinHasher(128, 5, **NORM)
    rows.append(["Gopher quality + repetition", "chimera",
                 f"{rate(lambda d: [gopher(t) for t in d], docs, repeat):,.0f}"])
    rows.append(["C4 page rules", "chimera", f"{rate(lambda d: [c4(t) for t in d], docs, repeat):,.0f}"])
    rows.append(["MinHash signatures (128, word 5-grams)", "chimera",
                 f"{rate(lambda d: hasher.signatures(d), docs, repeat):,.0f}"])
    if dt := installed("datatrove"):
        from bench_dedup import datatrove_signatures, datatrove_words
        from datatrove.data import Document
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

        words = datatrove_words()
        gq, gr = GopherQualityFilter(language=words), GopherRepetitionFilter(language=words)
        c4f = C4QualityFilter(language=words)

        def dt_gopher(d):
            for i, t in enumerate(d):
                doc = Document(text=t, id=str(i))
                gq.filter(doc) is True and gr.filter(doc)

        def dt_c4(d):
            for i, t in enumerate(d):
                c4f.filter(Document(text=t, id=str(i)))

        rows.append(["Gopher quality + repetition", f"datatrove {dt}", f"{rate(dt_gopher, docs, repeat):,.0f}"])
        rows.append(["C4 page rules", f"datatrove {dt}", f"{rate(dt_c4, docs, repeat):,.0f}"])
        rows.append(["MinHash signatures (112, word 5-grams)", f"datatrove {dt}",
                     f"{rate(lambda d: datatrove_signatures(d), docs, repeat):,.0f}"])
    if ds := installed("datasketch"):
        from datasketch import MinHash

        def ds_sigs(d):
            for t in d:
                w = t.lower().split()
                m = MinHash(num_perm=128, seed=1)
                m.update_batch([" ".join(w[j:j + 5]).encode() for j in range(max(1, len(w) - 4))])

        rows.append(["MinHash signatures (128, word 5-grams)", f"datasketch {ds}",
                     f"{rate(ds_sigs, docs, repeat):,.0f}"])
    return rows


def c4_settings(docs: list[str]) -> list[list[str]]:
    """Pages removed by C4 with the paper's values, with datatrove's defaults, and datatrove itself."""
    rows = [["chimera, paper values (3 sentences, 5 words per line)",
             str(sum(C4Quality()(t) is not None for t in docs))],
            ["chimera, datatrove's values (5 sentences, 3 words per line)",
             str(sum(C4Quality(min_sentences=5, min_words_per_line=3)(t) is not None for t in docs))]]
    if dt := installed("datatrove"):
        from bench_dedup import datatrove_words
        from datatrove.data import Document
        from datatrove.pipeline.filters import C4QualityFilter

        paper = dict(min_num_sentences=3, min_words_per_line=5)
        for label, kw in (("defaults", {}), ("with the paper's values", paper)):
            f = C4QualityFilter(language=datatrove_words(), **kw)
            rows.append([f"datatrove {dt} C4QualityFilter, {label}",
                         str(sum(f.filter(Document(text=t, id=str(i))) is not True for i, t in enumerate(docs)))])
    return rows


def peak_memory(docs: list[str], batch: int) -> tuple[float, float]:
    """(peak MB traced while `add`ing all `docs` in one call, seconds) for a deduper hashing `batch` at a time."""
    d = MinHashDeduper(0.8, 128, batch_size=batch, **NORM)
    tracemalloc.start()
    t = time.perf_counter()
    d.add(docs)
    sec = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak, sec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--c4-docs", type=int, default=1001)
    p.add_argument("--memory-docs", type=int, default=16384)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    docs = prose_documents(args.docs, args.seed)
    words = np.mean([len(t.split()) for t in docs])
    print(f"{len(docs)} prose documents, {words:.0f} words and {np.mean([len(t) for t in docs]):,.0f} characters "
          f"on average; one process\n")
    print("| step | implementation | docs/s (one core) |\n|---|---|---:|")
    for row in throughput(docs, args.repeat):
        print("| " + " | ".join(row) + " |")

    c4_docs = prose_documents(args.c4_docs, args.seed + 1)
    print(f"\nC4 on {len(c4_docs)} prose documents (2-40 sentences each), pages removed:\n")
    print("| setting | removed |\n|---|---:|")
    for row in c4_settings(c4_docs):
        print("| " + " | ".join(row) + " |")

    mem_docs = prose_documents(args.memory_docs, args.seed + 2)
    mb = sum(len(t.encode()) for t in mem_docs) / 2**20
    print(f"\nMinHash `add` of {len(mem_docs)} documents ({mb:.0f} MB of text) in one call:\n")
    print("| batch_size | peak traced MB | seconds |\n|---:|---:|---:|")
    for batch in (len(mem_docs), 4096, 1024):
        peak, sec = peak_memory(mem_docs, batch)
        print(f"| {batch} | {peak:,.0f} | {sec:.2f} |")


if __name__ == "__main__":
    main()
