"""Image near-duplicate removal: perceptual hashes and SemDeDup-style embedding dedup.

Why two methods: a perceptual hash (pHash) finds re-encodes, resizes and small pixel edits
cheaply and exactly (Hamming distance on 64 bits), but not semantic duplicates (the same
scene re-rendered, a crop); embedding dedup (Abbas et al. 2023, "SemDeDup") finds those
from CLIP image embeddings, clustering first (k-means) so that pairwise cosine similarity
is only computed inside each cluster.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from data.curation.minhash import connected_components

_HASH_SIZE, _IMG_SIZE = 8, 32


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: dct(x) = D @ x."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


_DCT = _dct_matrix(_IMG_SIZE)
_BITS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def phash(image: Image.Image | bytes) -> np.ndarray:
    """DCT perceptual hash (Zauner 2010, as in the `imagehash` package): the grey image is
    reduced to 32x32, 2-D DCT'd, and the 8x8 lowest frequencies are thresholded at their
    median. Returns one uint64 word (shape (1,)). Robust to re-encoding, resizing and small
    pixel noise; blind to hue (a red and a blue square of similar luma hash alike), which is
    what `thumbnail` + `PHashDeduper(color_tolerance=...)` adds back.
    """
    image = _open(image)
    plane = np.asarray(image.convert("L").resize((_IMG_SIZE, _IMG_SIZE), Image.LANCZOS), dtype=np.float64)
    low = (_DCT @ plane @ _DCT.T)[:_HASH_SIZE, :_HASH_SIZE].ravel()
    bits = low > np.median(low)
    return np.array([np.bitwise_or.reduce(np.where(bits, _BITS, np.uint64(0)))], dtype=np.uint64)


def thumbnail(image: Image.Image | bytes, size: int = 8) -> np.ndarray:
    """(size, size, 3) uint8 mean colours (box filter): 192 bytes that tell hues apart."""
    return np.asarray(_open(image).convert("RGB").resize((size, size), Image.BOX), dtype=np.uint8)


def _open(image: Image.Image | bytes) -> Image.Image:
    return Image.open(io.BytesIO(image)) if isinstance(image, (bytes, bytearray)) else image


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray | int:
    """Hamming distance between hashes (last axis = the hash's uint64 words)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1)


def hash_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """All pairs (i < j) with Hamming distance <= max_distance, by multi-index hashing
    (Norouzi et al. 2012): split each hash into max_distance + 1 bit ranges; by pigeonhole two
    hashes within the distance agree exactly on at least one range, so only items sharing a
    range value are compared. Efficient while the ranges stay long (distance << bits)."""
    n = len(hashes)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    bits = np.unpackbits(np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(n, -1), axis=1)
    chunks = max_distance + 1
    if chunks > bits.shape[1]:  # every pair is within the distance
        i, j = np.triu_indices(n, 1)
        return np.stack([i, j], 1)
    bounds = np.linspace(0, bits.shape[1], chunks + 1).astype(int)
    cand = []
    for c in range(chunks):
        key = np.packbits(bits[:, bounds[c]:bounds[c + 1]], axis=1)
        _, inverse = np.unique(key, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
        for g in groups:
            if len(g) > 1:
                i, j = np.triu_indices(len(g), 1)
                cand.append(np.stack([g[i], g[j]], 1))
    if not cand:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.unique(np.concatenate(cand), axis=0)
    d = hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]])
    return pairs[d <= max_distance]


def keep_first(n: int, pairs: np.ndarray) -> dict[int, int]:
    """Clusters = connected components over pairs; keep each cluster's first item.
    Returns {removed index: kept index of its cluster}."""
    root = connected_components(n, pairs)
    dup = np.flatnonzero(root != np.arange(n))
    return dict(zip(dup.tolist(), root[dup].tolist()))


class PHashDeduper:
    """Streaming pHash dedup: `add(images)` per shard keeps 8 bytes per image, `finish()` returns
    {removed: kept}. With `color_tolerance`, a pair within `max_distance` bits must also agree
    on its 8x8 colour thumbnail (largest channel difference of any cell <= color_tolerance,
    0..255), which removes grey-pHash false positives between recoloured scenes; the thumbnail
    costs 192 more bytes per image.
    """

    def __init__(self, max_distance: int = 4, color_tolerance: float | None = None) -> None:
        self.max_distance, self.color_tolerance = max_distance, color_tolerance
        self._hashes: list[np.ndarray] = []
        self._thumbs: list[np.ndarray] = []

    def add(self, images: Sequence[Image.Image | bytes]) -> None:
        for im in images:
            im = _open(im)
            self._hashes.append(phash(im))
            if self.color_tolerance is not None:
                self._thumbs.append(thumbnail(im))

    def finish(self) -> dict[int, int]:
        if not self._hashes:
            return {}
        hashes = np.stack(self._hashes)
        pairs = hash_pairs(hashes, self.max_distance)
        if self.color_tolerance is not None and len(pairs):
            thumbs = np.stack(self._thumbs).astype(np.int16)
            diff = np.abs(thumbs[pairs[:, 0]] - thumbs[pairs[:, 1]]).reshape(len(pairs), -1).max(1)
            pairs = pairs[diff <= self.color_tolerance]
        return keep_first(len(hashes), pairs)


def kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Spherical k-means (cosine) with k-means++ seeding; returns cluster ids. Deterministic by seed."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d = np.clip(1 - np.max(x @ np.stack(centers).T, axis=1), 0, None)
        p = d / d.sum() if d.sum() > 0 else np.full(n, 1 / n)
        centers.append(x[int(rng.choice(n, p=p))])
    c = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                m = members.sum(0)
                c[j] = m / max(np.linalg.norm(m), 1e-12)
    return labels


def semdedup(embeddings: np.ndarray, eps: float = 0.05, clusters: int = 8, seed: int = 0) -> dict[int, int]:
    """SemDeDup (Abbas et al. 2023): k-means over L2-normalised embeddings, then inside each
    cluster an item is removed when its cosine similarity to an earlier item (in input order)
    exceeds 1 - eps. Returns {removed index: most similar earlier index}.

    SemDeDup orders each cluster by distance to the centroid and keeps the farthest; we keep
    the first in input order instead, like the other dedup steps, so results are stable
    under appending data.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = kmeans(x, clusters, seed=seed)
    removed: dict[int, int] = {}
    for j in np.unique(labels):
        idx = np.flatnonzero(labels == j)
        if len(idx) < 2:
            continue
        sim = np.tril(x[idx] @ x[idx].T, -1)  # sim[a, b] for earlier b < a
        sim[np.triu_indices(len(idx))] = -np.inf
        best = sim.argmax(1)
        dup = np.flatnonzero(sim[np.arange(len(idx)), best] > 1 - eps)
        removed.update(zip(idx[dup].tolist(), idx[best[dup]].tolist()))
    return removed


def embed_images(model, images: Sequence[Image.Image], batch_size: int = 64,
                 device: str = "cpu") -> np.ndarray:
    """Image embeddings from a `ContrastiveDualEncoder` (or any object with `encode_image` and
    `transform()`), L2-normalised, as float32 numpy."""
    import torch

    transform: Callable = model.transform()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([transform(im) for im in images[i:i + batch_size]]).to(device)
            out.append(torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
