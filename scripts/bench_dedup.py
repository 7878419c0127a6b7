"""MinHash LSH dedup benchmark: data.curation.minhash vs datasketch's MinHashLSH, side by side.

Same synthetic corpus (random-word documents plus planted near-copies with a fraction of
their words replaced), same shingles (word n-grams), num_perm, threshold and bands/rows.
Both timings include shingling, hashing and the LSH look-ups. Ground truth = the planted
copies; a method "removes" a document that collides with an earlier one.

    pip install datasketch      # benchmark-only dependency; the package never imports it
    python scripts/bench_dedup.py --docs 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.curation.minhash import MinHashDeduper, jaccard, optimal_bands_rows  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
