"""MinHash/LSH fuzzy dedup, perceptual hashes and SemDeDup, on synthetic data with planted duplicates."""

import io

import numpy as np
import pytest
from PIL import Image

from data.curation.image_dedup import PHashDeduper, hamming, hash_pairs, keep_first, phash, semdedup
from data.curation.minhash import (MinHashDeduper, MinHasher, bands_rows_for_recall, connected_components,
                                   estimate_jaccard, jaccard, lsh_error, normalise, optimal_bands_rows, s_curve,
                                   shingle_hashes)
from data.curation.near_duplicates import near_duplicate_pairs, pair_jaccard, punctuated


def _corpus(n_base=300, n_dup=60, words=100, vocab=3000, edit=0.02, seed=0):
    """Random-word documents plus near-copies with `edit` of their words replaced, placed later."""
    rng = np.random.default_rng(seed)
    base = [rng.integers(vocab, size=words) for _ in range(n_base)]
    sources = rng.choice(n_base, n_dup, replace=False)
    dups = []
    for s in sources:
        doc = base[s].copy()
        pos = rng.choice(words, max(1, int(edit * words)), replace=False)
        doc[pos] = rng.integers(vocab, vocab * 2, size=len(pos))
        dups.append(doc)
    texts = [" ".join(f"w{t}" for t in d) for d in base + dups]
    return texts, set(range(n_base, n_base + n_dup))


def test_exact_jaccard_and_minhash_estimate():
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(20, 120))
    assert jaccard(a, b, ngram=1) == pytest.approx(80 / 120)
    assert jaccard(a, b, ngram=3) == pytest.approx(78 / 118)
    sig = MinHasher(num_perm=256, ngram=1, seed=3).signatures([a, b, a])
    assert sig.shape == (3, 256) and sig.dtype == np.uint32
    assert estimate_jaccard(sig[0], sig[2]) == 1.0
    assert abs(estimate_jaccard(sig[0], sig[1]) - 80 / 120) < 0.1  # std ~0.03 at 256 permutations
    errors = []
    rng = np.random.default_rng(0)
    for k in range(20):  # the estimator is unbiased: mean error over many pairs is small
        x = rng.integers(400, size=120)
        y = np.where(rng.random(120) < 0.3, rng.integers(400, 800, size=120), x)
        tx, ty = " ".join(f"t{v}" for v in x), " ".join(f"t{v}" for v in y)
        s = MinHasher(num_perm=128, ngram=2, seed=k).signatures([tx, ty])
        errors.append(estimate_jaccard(s[0], s[1]) - jaccard(tx, ty, ngram=2))
    assert abs(np.mean(errors)) < 0.03 and np.max(np.abs(errors)) < 0.2


def test_signatures_do_not_depend_on_batching_or_chunking():
    texts, _ = _corpus(n_base=20, n_dup=5, words=30)
    texts += ["", "two words", "x"]  # empty text and texts shorter than one n-gram
    whole = MinHasher(num_perm=64, ngram=5).signatures(texts)
    small_chunks = MinHasher(num_perm=64, ngram=5, chunk=7).signatures(texts)
    one_by_one = np.concatenate([MinHasher(num_perm=64, ngram=5).signatures([t]) for t in texts])
    assert np.array_equal(whole, small_chunks) and np.array_equal(whole, one_by_one)
    assert (whole[-3] == 0xFFFFFFFF).all()  # no shingles
    h, counts = shingle_hashes(["a b c d", "e f", ""], ngram=3)
    assert counts.tolist() == [2, 1, 0] and len(h) == 3
    h, counts = shingle_hashes(["Hello  World", "hello world"], ngram=4, char=True)
    assert np.array_equal(h[:counts[0]], h[counts[0]:])  # whitespace and case normalised


def test_optimal_bands_rows():
    b, r = optimal_bands_rows(0.8, 128)
    assert b * r <= 128 and b > 1 and r > 1
    assert 0.65 < (1 / b) ** (1 / r) < 0.85  # the S-curve's midpoint sits near the threshold
    fp, fn = lsh_error(0.8, b, r)
    assert fp < 0.05 and fn < 0.05
    assert fp + fn <= min(sum(lsh_error(0.8, bb, 128 // bb)) for bb in (2, 4, 8, 16, 32, 64)) + 1e-9
    # higher thresholds need more rows per band; weighting false negatives adds bands
    assert optimal_bands_rows(0.9, 128)[1] >= optimal_bands_rows(0.5, 128)[1]
    assert optimal_bands_rows(0.8, 128, 0.1, 0.9)[0] >= optimal_bands_rows(0.8, 128, 0.9, 0.1)[0]
    with pytest.raises(ValueError, match="threshold"):
        optimal_bands_rows(1.2, 128)


def test_union_find_components_keep_the_smallest_index():
    roots = connected_components(9, np.array([[3, 1], [1, 5], [7, 8], [5, 6]]))
    assert roots.tolist() == [0, 1, 2, 1, 4, 1, 1, 7, 7]
    chain = np.stack([np.arange(1, 50), np.arange(0, 49)], 1)[::-1]  # a long path in bad order
    assert (connected_components(50, chain) == 0).all()
    assert keep_first(4, np.array([[2, 3]])) == {3: 2}


def test_lsh_finds_planted_near_duplicates():
    texts, planted = _corpus(edit=0.01)  # one word of 100 replaced: true Jaccard ~0.94
    dedup = MinHashDeduper(threshold=0.8, num_perm=128, ngram=3)
    kept = dedup.deduplicate(texts, batch_size=97)
    removed = set(range(len(texts))) - set(kept)
    recall = len(removed & planted) / len(planted)
    assert recall >= 0.95, recall
    assert len(removed - planted) <= 1  # random documents share almost no 3-grams
    # each removal points to an earlier (kept) document of its cluster
    assert all(j < i and j in kept for i, j in dedup.finish().items())


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _scene(seed, size=72):
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, size - 20, 2)
        img[y:y + 20, x:x + 20] = rng.integers(0, 256, 3)
    return img


def test_phash_survives_reencoding_and_separates_scenes():
    img = Image.fromarray(_scene(0))
    jpeg = io.BytesIO()
    img.save(jpeg, format="JPEG", quality=85)
    h = phash(img)
    assert h.shape == (1,) and h.dtype == np.uint64
    assert hamming(h, phash(jpeg.getvalue())) <= 2
    assert hamming(h, phash(img.resize((100, 100)))) <= 4
    assert min(hamming(h, phash(Image.fromarray(_scene(s)))) for s in range(1, 8)) > 10
    # grey pHash cannot tell a red square from a blue one; the colour-thumbnail check can
    red, blue = np.full((72, 72, 3), 255, np.uint8), np.full((72, 72, 3), 255, np.uint8)
    red[20:50, 20:50], blue[20:50, 20:50] = (200, 60, 60), (60, 60, 200)
    noisy = np.clip(red.astype(int) + np.random.default_rng(0).integers(-3, 4, red.shape), 0, 255).astype(np.uint8)
    assert hamming(phash(Image.fromarray(red)), phash(Image.fromarray(blue))) == 0
    plain, colour = PHashDeduper(max_distance=4), PHashDeduper(max_distance=4, color_tolerance=24)
    for d in (plain, colour):
        d.add([_png(red), _png(blue), _png(noisy)])
    assert plain.finish() == {1: 0, 2: 0} and colour.finish() == {2: 0}


def test_multi_index_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=(200, 1), dtype=np.int64).astype(np.uint64)
    for i in range(0, 40, 2):  # plant near pairs: flip 0..5 bits
        flips = rng.choice(64, i % 6, replace=False)
        hashes[i + 1, 0] = hashes[i, 0] ^ np.uint64(sum(1 << int(f) for f in flips))
    i, j = np.triu_indices(200, 1)
    d = hamming(hashes[i], hashes[j])
    for t in (0, 5, 12, 25):
        brute = {(a, b) for a, b, x in zip(i, j, d) if x <= t}
        assert {tuple(p) for p in hash_pairs(hashes, t).tolist()} == brute
    assert len({(a, b) for a, b, x in zip(i, j, d) if x <= 5}) >= 20


def test_phash_deduper_removes_planted_copies():
    scenes = [_scene(s) for s in range(10)]
    rng = np.random.default_rng(0)
    jittered = [np.clip(scenes[k].astype(int) + rng.integers(-3, 4, scenes[k].shape), 0, 255).astype(np.uint8)
                for k in (2, 5)]
    dedup = PHashDeduper(max_distance=6)
    dedup.add([_png(x) for x in scenes[:6]])
    dedup.add([_png(x) for x in scenes[6:] + jittered])
    assert dedup.finish() == {10: 2, 11: 5}


def test_semdedup_removes_near_copies_within_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    base = np.concatenate([c + 0.3 * rng.normal(size=(20, 16)) for c in centers])
    copies = base[[3, 25, 47]] + 0.01 * rng.normal(size=(3, 16))
    removed = semdedup(np.concatenate([base, copies]), eps=0.01, clusters=3)
    assert removed == {60: 3, 61: 25, 62: 47}
    assert semdedup(base, eps=0.01, clusters=3) == {}


# ---------------------------------------------------------------- recall target, normalisation, batching


def test_recall_banding_meets_its_target_on_the_s_curve():
    for num_perm in (64, 128, 256):
        for t in (0.5, 0.7, 0.8, 0.9):
            b, r = bands_rows_for_recall(t, num_perm)
            assert b * r <= num_perm and s_curve(t + 0.05, b, r) >= 0.95, (t, num_perm, b, r)
    b, r = bands_rows_for_recall(0.8, 128)
    assert (b, r) == (12, 9)
    assert s_curve(0.85, b, r) == pytest.approx(1 - (1 - 0.85 ** 9) ** 12)
    # it is the feasible banding with the least false-positive area below the threshold
    feasible = [(bb, rr) for bb in range(1, 129) for rr in range(1, 128 // bb + 1) if s_curve(0.85, bb, rr) >= 0.95]
    assert lsh_error(0.8, b, r)[0] <= min(lsh_error(0.8, bb, rr)[0] for bb, rr in feasible) + 1e-3
    # the equal-weight banding it replaces misses a third of the pairs at 0.85
    assert s_curve(0.85, *optimal_bands_rows(0.8, 128)) < 0.7
    assert MinHashDeduper(0.8).bands == 12 and MinHashDeduper(0.8, recall=None).bands == 9
    with pytest.raises(ValueError, match="no banding"):
        bands_rows_for_recall(0.8, 2, recall=0.999, at=0.81)  # best: 2 x 1 gives 0.964


def test_generated_pairs_have_the_requested_jaccard():
    for sim in (0.95, 0.85, 0.7):
        for a, b in near_duplicate_pairs(3, sim, seed=2):
            assert pair_jaccard(a.split(), b.split()) == pytest.approx(sim, abs=0.003)
            assert jaccard(a, b) == pytest.approx(pair_jaccard(a.split(), b.split()))


def _found(pairs, **kwargs):
    texts = [t for pair in pairs for t in pair]
    removed = MinHashDeduper(**kwargs).deduplicate(texts)
    kept = set(removed)
    return np.mean([2 * i + 1 not in kept for i in range(len(pairs))]), len(texts) - len(kept)


def test_recall_at_threshold_plus_margin():
    recall, _ = _found(near_duplicate_pairs(200, 0.85, n_words=300, seed=0), threshold=0.8)
    assert recall >= 0.95, recall
    far, removed = _found(near_duplicate_pairs(100, 0.5, n_words=300, seed=1), threshold=0.8)
    assert far <= 0.05 and removed == round(far * 100)  # pairs far below: rarely; unrelated documents: never


def test_punctuation_and_case_copies_need_the_normalisation():
    rng = np.random.default_rng(0)
    pairs = [(punctuated(a, rng), punctuated(a, rng)) for a, _ in near_duplicate_pairs(40, 1.0, n_words=200)]
    assert pairs[0][0] != pairs[0][1] and normalise(pairs[0][0], strip_punctuation=True) == \
        normalise(pairs[0][1], strip_punctuation=True)
    assert _found(pairs, threshold=0.8)[0] == 0.0  # lowercasing alone leaves "word," != "word"
    assert _found(pairs, threshold=0.8, strip_punctuation=True)[0] == 1.0
    assert normalise("Ｆｕｌｌ\u2003width ﬁ 2024-11-30!", strip_punctuation=True, nfkc=True, digits=True) == \
        "full width fi 0 0 0"


def test_batch_size_changes_nothing_and_bounds_the_batch():
    texts = [t for pair in near_duplicate_pairs(30, 0.85, n_words=100, seed=3) for t in pair]
    results = []
    for batch in (1, 7, 4096):
        d = MinHashDeduper(0.8, batch_size=batch)
        d.add(texts)  # one call with everything: the deduper splits it
        results.append(d.finish())
        assert d.peak_batch == min(batch, len(texts))
    assert results[0] == results[1] == results[2] and len(results[0]) >= 28


def test_curate_minhash_step_hashes_a_shard_in_batches():
    from data.curation.curate import MinHashStep

    texts = [t for pair in near_duplicate_pairs(50, 0.9, n_words=100, seed=4) for t in pair]
    samples = [{"__index__": i, "__key__": str(i), "__text__": t} for i, t in enumerate(texts)]
    step = MinHashStep("minhash_dedup", threshold=0.8, batch_size=16)
    step.scan(samples)  # one whole shard
    assert step.dedup.peak_batch == 16 and step.dedup.count == 100
    whole = MinHashStep("minhash_dedup", threshold=0.8, batch_size=4096)
    whole.scan(samples)
    assert step.finish() == whole.finish()
    assert step.describe()["batch_size"] == 16 and step.describe()["bands"] == 12
