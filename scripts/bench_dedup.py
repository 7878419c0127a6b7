"""MinHash LSH dedup benchmarks: data.curation.minhash vs datasketch and datatrove.

Speed (default): same synthetic corpus (random-word documents plus planted near-copies with a
fraction of their words replaced), same shingles (word n-grams), num_perm, threshold and
bands/rows. Both timings include shingling, hashing and the LSH look-ups. Ground truth = the
planted copies; a method "removes" a document that collides with an earlier one.

    python scripts/bench_dedup.py --docs 20000

Recall (`--recall`): pairs at controlled word-5-gram Jaccard 0.95 / 0.9 / 0.85 / 0.8 / 0.7
(`data.curation.near_duplicates`, exact by construction) plus copies that differ only in
punctuation and case, all in one corpus; each method's duplicate clusters are compared with the
planted pairs. Prints the fraction of pairs found per similarity, and precision: removals whose
cluster is exactly their planted pair at Jaccard >= threshold, over all removals (a pair at 0.7
found, or any link between unrelated documents, counts against it).

    python scripts/bench_dedup.py --recall --pairs 200

datasketch is benchmark-only (`pip install datasketch`, the `bench` extra in pyproject.toml);
datatrove is a dependency (the curation executors run on it).
datatrove's English word tokenizer is NLTK punkt (a model download); the bench hands datatrove
`SplitWords`, a regex word splitter, through datatrove's own `WordTokenizer` interface. The
datatrove rows use its MinhashConfig defaults (14 buckets x 8 hashes, 5-grams, its text
normalisation) and its `get_shingles` / `get_signature`; documents sharing a bucket
signature are linked, as its buckets stage does (the on-disk sorting and merging are skipped).
Its shingle hash is its `sha1` option: its default `xxhash` needs `xxhash<4` (datatrove's
"processing" extra) and fails on str with the xxhash 4.1 that datasets and wandb bring here; the
hash function does not change the LSH statistics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.curation.minhash import (MinHashDeduper, band_keys, candidate_pairs, connected_components, jaccard,  # noqa: E402
                                   optimal_bands_rows)
from data.curation.near_duplicates import near_duplicate_pairs, punctuated  # noqa: E402

LEVELS = (0.95, 0.9, 0.85, 0.8, 0.7)


def make_corpus(n_docs: int, dup_fraction: float, words: int, vocab: int, edit: float, seed: int):
    rng = np.random.default_rng(seed)
    n_dup = int(n_docs * dup_fraction)
    n_base = n_docs - n_dup
    base = rng.integers(vocab, size=(n_base, words))
    src = rng.choice(n_base, n_dup, replace=False)
    dups = base[src].copy()
    k = max(1, int(round(edit * words)))
    for row in dups:
        row[rng.choice(words, k, replace=False)] = rng.integers(vocab, 2 * vocab, size=k)
    # each copy goes somewhere after its source
    docs = [(float(i), d) for i, d in enumerate(base)]
    docs += [(float(rng.uniform(s + 0.5, n_base)), d) for s, d in zip(src, dups)]
    order = sorted(range(len(docs)), key=lambda i: docs[i][0])
    texts = [" ".join(f"w{t}" for t in docs[i][1]) for i in order]
    planted = {pos for pos, i in enumerate(order) if i >= n_base}
    return texts, planted, src


def run_ours(texts, threshold, num_perm, ngram, bands, rows, verify, batch=4096):
    t = time.perf_counter()
    d = MinHashDeduper(threshold, num_perm, ngram, bands=bands, rows=rows, verify=verify)
    for i in range(0, len(texts), batch):
        d.add(texts[i:i + batch])
    removed = set(d.finish())
    return removed, time.perf_counter() - t


def run_datasketch(texts, threshold, num_perm, ngram, bands, rows):
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows))
    removed = set()
    for i, text in enumerate(texts):
        w = text.lower().split()
        shingles = {" ".join(w[j:j + ngram]).encode() for j in range(max(1, len(w) - ngram + 1))}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(shingles))
        if lsh.query(m):
            removed.add(i)
        lsh.insert(i, m)
    return removed, time.perf_counter() - t


def recall_corpus(pairs: int, words: int, seed: int):
    """Texts, and per pair (label, source index, copy index); sources and copies interleaved at random."""
    rng = np.random.default_rng(seed)
    groups = [(f"{lv:g}", near_duplicate_pairs(pairs, lv, words, seed=seed + k)) for k, lv in enumerate(LEVELS)]
    plain = near_duplicate_pairs(pairs, 1.0, words, seed=seed + 99)
    groups.append(("punct/case", [(punctuated(a, rng), punctuated(a, rng)) for a, _ in plain]))
    docs = [(label, p, t) for label, ps in groups for p, pair in enumerate(ps) for t in pair]
    order = rng.permutation(len(docs))
    texts = [docs[i][2] for i in order]
    where: dict[tuple[str, int], list[int]] = {}
    for pos, i in enumerate(order):
        where.setdefault(docs[i][:2], []).append(pos)
    return texts, [(label, *sorted(ix)) for (label, _), ix in where.items()]


def score(n: int, links: np.ndarray, planted, threshold: float) -> dict[str, float]:
    """Fraction of planted pairs found per label, and precision of the removals (see module doc)."""
    root = connected_components(n, links)
    size = np.bincount(root, minlength=n)
    found: dict[str, list[bool]] = {}
    good = 0
    for label, a, b in planted:
        same = root[a] == root[b]
        found.setdefault(label, []).append(bool(same))
        true_pair = label == "punct/case" or float(label) >= threshold
        good += int(same and size[root[a]] == 2 and true_pair)
    removed = int((root != np.arange(n)).sum())
    return {**{k: float(np.mean(v)) for k, v in found.items()}, "precision": good / max(removed, 1),
            "removed": removed}


def links_ours(texts, threshold, num_perm, **kwargs) -> tuple[np.ndarray, str]:
    d = MinHashDeduper(threshold, num_perm, **kwargs)
    d.add(texts)
    removed = d.finish()
    return np.array(sorted(removed.items()), dtype=np.int64).reshape(-1, 2), f"{d.bands} x {d.rows}"


def links_datasketch(texts, threshold, num_perm, ngram=5) -> tuple[np.ndarray, str]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    out = []
    for i, text in enumerate(texts):
        w = text.lower().split()
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([" ".join(w[j:j + ngram]).encode() for j in range(max(1, len(w) - ngram + 1))])
        out += [(i, j) for j in lsh.query(m)]
        lsh.insert(i, m)
    return np.array(out, dtype=np.int64).reshape(-1, 2), f"{lsh.b} x {lsh.r}"


def datatrove_words():
    """A datatrove `WordTokenizer` that splits words and punctuation by regex (NLTK needs a download)."""
    import re

    from datatrove.utils.word_tokenizers import WhitespaceTokenizer

    class SplitWords(WhitespaceTokenizer):  # its sentence regex, our word splitter
        _word = re.compile(r"\w+(?:'\w+)?|[^\w\s]")

        def word_tokenize(self, text):
            return self._word.findall(text)

    return SplitWords()


def datatrove_signatures(texts):
    """(n, buckets, hashes per bucket) uint64 signatures from datatrove's own MinHash stage 1 code."""
    import tempfile

    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))
    stage = MinhashDedupSignature(tempfile.mkdtemp(), cfg, language=datatrove_words())
    sig = np.zeros((len(texts), cfg.num_buckets, cfg.hashes_per_bucket), dtype=np.uint64)
    for i, text in enumerate(texts):
        sig[i] = stage.get_signature(stage.get_shingles(text))
    return sig, cfg


def links_datatrove(texts, threshold, num_perm) -> tuple[np.ndarray, str]:
    sig, cfg = datatrove_signatures(texts)
    keys = band_keys(sig.reshape(len(texts), -1), cfg.num_buckets, cfg.hashes_per_bucket)  # one 64-bit key per bucket
    return candidate_pairs(keys), f"{cfg.num_buckets} x {cfg.hashes_per_bucket}"


def recall_table(args) -> None:
    texts, planted = recall_corpus(args.pairs, args.words, args.seed)
    t, n = args.threshold, args.num_perm
    print(f"{len(texts)} documents of {args.words} words: {args.pairs} pairs at each word-5-gram Jaccard "
          f"{', '.join(f'{x:g}' for x in LEVELS)} and {args.pairs} punctuation/case-only copies; threshold {t}")
    norm = dict(strip_punctuation=True, nfkc=True, digits=True)
    methods = [
        ("chimera, recall banding, no verify, normalised (text.yaml)", lambda: links_ours(texts, t, n, **norm)),
        ("chimera, recall banding + verify, normalised", lambda: links_ours(texts, t, n, verify=True, **norm)),
        ("chimera, recall banding, no verify, lowercase only", lambda: links_ours(texts, t, n)),
        ("chimera before: equal-error banding + verify, lowercase only",
         lambda: links_ours(texts, t, n, recall=None, verify=True)),
        ("chimera, datatrove's 14 x 8, no verify, normalised",
         lambda: links_ours(texts, t, n, bands=14, rows=8, **norm)),
    ]
    try:
        import datasketch

        methods.append((f"datasketch {datasketch.__version__} MinHashLSH", lambda: links_datasketch(texts, t, n)))
    except ImportError:
        print("datasketch not installed: its row is skipped")
    try:
        import datatrove  # noqa: F401
        from importlib.metadata import version

        methods.append((f"datatrove {version('datatrove')} MinhashConfig defaults",
                        lambda: links_datatrove(texts, t, n)))
    except ImportError:
        print("datatrove not installed: its row is skipped")
    labels = [f"{x:g}" for x in LEVELS] + ["punct/case"]
    print("\n| method | bands x rows | " + " | ".join(f"J={x}" for x in labels[:-1]) +
          " | punct/case | precision | removed |")
    print("|---|---|" + "---:|" * (len(labels) + 2))
    for name, fn in methods:
        links, banding = fn()
        r = score(len(texts), links, planted, t)
        print(f"| {name} | {banding} | " + " | ".join(f"{r[k]:.3f}" for k in labels) +
              f" | {r['precision']:.3f} | {r['removed']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recall", action="store_true", help="the recall/precision table instead of the speed table")
    p.add_argument("--pairs", type=int, default=200, help="--recall: pairs per similarity level")
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--dup-fraction", type=float, default=0.1)
    p.add_argument("--words", type=int, default=200)
    p.add_argument("--vocab", type=int, default=50000)
    p.add_argument("--edit", type=float, default=0.01, help="fraction of words replaced in a planted copy")
    p.add_argument("--num-perm", type=int, default=128)
    p.add_argument("--threshold", type=float, default=0.8)
    p.add_argument("--ngram", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.recall:
        args.words = 400 if args.words == 200 else args.words
        return recall_table(args)

    texts, planted, _ = make_corpus(args.docs, args.dup_fraction, args.words, args.vocab, args.edit, args.seed)
    bands, rows = optimal_bands_rows(args.threshold, args.num_perm)
    sample = sorted(planted)[:50]
    # true Jaccard of a few planted copies to their nearest earlier document (by exact shingles)
    true_j = []
    for i in sample[:10]:
        true_j.append(max(jaccard(texts[i], texts[j], args.ngram) for j in range(i)))
    print(f"corpus: {len(texts)} docs x {args.words} words, {len(planted)} planted near-copies "
          f"(true Jaccard ~{np.mean(true_j):.2f}); word {args.ngram}-grams, num_perm={args.num_perm}, "
          f"threshold={args.threshold}, bands x rows = {bands} x {rows}")

    rows_out = []
    for name, fn in (("chimera (verify)", lambda: run_ours(texts, args.threshold, args.num_perm, args.ngram,
                                                          bands, rows, True)),
                     ("chimera (no verify)", lambda: run_ours(texts, args.threshold, args.num_perm, args.ngram,
                                                             bands, rows, False)),
                     ("datasketch MinHashLSH", lambda: run_datasketch(texts, args.threshold, args.num_perm,
                                                                      args.ngram, bands, rows))):
        removed, sec = fn()
        tp = len(removed & planted)
        rows_out.append((name, len(texts) / sec, sec, tp / len(planted), tp / max(len(removed), 1), len(removed)))
    base = rows_out[-1][1]
    print("\n| method | docs/s | seconds | speed-up | recall | precision | removed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, dps, sec, rec, prec, n in rows_out:
        print(f"| {name} | {dps:,.0f} | {sec:.2f} | {dps / base:.1f}x | {rec:.3f} | {prec:.3f} | {n} |")


if __name__ == "__main__":
    main()
