"""One-to-one matching of rows to columns with the largest total score (the Hungarian method).

Why here: OpenFlamingo places each MMC4 image at the sentence a linear assignment over the
image-sentence similarity matrix gives it (scipy's `linear_sum_assignment`); scipy is not a
dependency, and the matrices are small (images x sentences of one document).
"""

from __future__ import annotations

import numpy as np


def max_score_pairs(score: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) pairs, one per row or column (whichever are fewer), maximising the summed
    score; sorted by row. Shortest augmenting paths with potentials, O(rows^2 x columns)."""
    score = np.asarray(score, dtype=float)
    if score.ndim != 2:
        raise ValueError(f"expected a 2-d score matrix, got shape {score.shape}")
    if score.size == 0:
        return []
    transposed = score.shape[0] > score.shape[1]
    cost = -(score.T if transposed else score)  # rows <= columns from here on
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)      # potentials; index 0 is the virtual start
    row_of = np.zeros(m + 1, dtype=int)          # 1-based row matched to column j, 0 for none
    way = np.zeros(m + 1, dtype=int)             # previous column on the augmenting path
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = np.flatnonzero(~used)
            reduced = cost[i0 - 1, free - 1] - u[i0] - v[free]
            better = reduced < slack[free]
            slack[free[better]] = reduced[better]
            way[free[better]] = j0
            j1 = free[np.argmin(slack[free])]
            delta = slack[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            slack[~used] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:  # flip the path back to the start
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    pairs = [(int(row_of[j]) - 1, j - 1) for j in range(1, m + 1) if row_of[j]]
    return sorted((c, r) for r, c in pairs) if transposed else sorted(pairs)
