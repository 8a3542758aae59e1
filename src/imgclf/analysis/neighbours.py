"""Nearest neighbours of every embedding among all the others, in blocks: memory grows with the dataset, not with
its square.

scikit-learn's brute-force search (a matrix product per block of queries) is exact and fast enough here: on this
2-core CPU 60,000 × 1,280-d float32 embeddings take about a minute (benchmarks/results/audit_leaks.json), so an
approximate index (faiss) would not earn its place below a few hundred thousand images.
"""

import numpy as np
from tqdm.auto import tqdm

BLOCK = 2048  # query rows per block: a block's distances take BLOCK × N × 4 bytes (0.5 GB at 60,000 images)


def nearest_neighbours(emb: np.ndarray, k: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (N, k): the ``k`` nearest other rows of ``emb`` (Euclidean), nearest first.

    Assumes ``emb`` (N, D) float with N > ``k``. A row is never its own neighbour, even among exact copies."""
    from sklearn.neighbors import NearestNeighbors

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    k = min(k, len(emb) - 1)
    index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(emb)
    distances = np.empty((len(emb), k), np.float32)
    indices = np.empty((len(emb), k), np.int64)
    blocks = range(0, len(emb), BLOCK)
    for start in tqdm(blocks, desc="nearest neighbours", unit="block", disable=not progress or len(blocks) < 2):
        rows = np.arange(start, min(start + BLOCK, len(emb)))
        d, idx = index.kneighbors(emb[rows])
        own = idx == rows[:, None]
        own[~own.any(1), -1] = True  # among many exact copies a row may not be returned for itself: drop the farthest
        keep = ~own
        distances[rows] = d[keep].reshape(len(rows), k)
        indices[rows] = idx[keep].reshape(len(rows), k)
    return distances, indices


def nearest_among(queries: np.ndarray, data: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each (Q, k): the ``k`` nearest rows of ``data`` to each row of ``queries``, nearest
    first (Euclidean, in blocks of :data:`BLOCK` queries)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=min(k, len(data)), algorithm="brute").fit(np.asarray(data, np.float32))
    found = [index.kneighbors(np.asarray(queries[s : s + BLOCK], np.float32)) for s in range(0, len(queries), BLOCK)]
    return np.concatenate([d for d, _ in found]), np.concatenate([i for _, i in found])


def neighbour_pairs(indices: np.ndarray, rows: int | None = None) -> np.ndarray:
    """(P, 2) unique pairs (a < b) of a row and each of its neighbours (``indices``: (N, k) neighbour lists), both
    taken modulo ``rows`` when given (lists over stacked copies of the rows); a row paired with itself is dropped."""
    a = np.repeat(np.arange(len(indices)), indices.shape[1])
    b = indices.ravel()
    if rows:
        a, b = a % rows, b % rows
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], 1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
