"""The yardsticks: popularity, EASE, item-kNN, factor models (Spark ALS), and the cold-start scorers.

Every scorer follows one small protocol: `fit(train, items)` on training pairs, then
`score(users) -> (len(users) × n_items) float32`, higher is better. Excluding a user's training items
and cutting the top k is the caller's job (`jobs.ranking.metrics.top_k_from_scores`), so every model
faces the same candidate rules.

Dense scores are fine at MovieLens sizes (610 users × 9,742 items is 24 MB); callers score users in
blocks so memory stays bounded as the user count grows, and the item-item models take a `max_items`
so their dense items × items matrices stay bounded as the catalog grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import scipy.sparse as sp

from jobs.ranking.data import Interactions
from jobs.ranking.kernels import sparse_times_dense_rows, sparse_times_sparse


@dataclass(frozen=True)
class ItemSide:
    """What is known about items beyond interactions: fused content blocks and genres."""

    blocks: dict[str, np.ndarray]  # modality → (n_items × dim) unit rows, zero rows where missing
    genres: sp.csr_matrix  # n_items × n_genres, binary

    @property
    def modalities(self) -> list[str]:
        return list(self.blocks)

    def has(self, modality: str) -> np.ndarray:
        return np.abs(self.blocks[modality]).sum(axis=1) > 0


FittedState = TypeVar("FittedState")


def fitted(value: FittedState | None, owner: object) -> FittedState:
    """`value`, a piece of `owner`'s state that fitting (or loading) sets: None means it was used before."""
    if value is None:
        raise RuntimeError(f"{type(owner).__name__} is used before it was fitted")
    return value


class Scorer(Protocol):
    name: str

    def fit(self, train: Interactions, items: ItemSide) -> Scorer: ...

    def score(self, users: np.ndarray) -> np.ndarray: ...


@dataclass
class PopularityScorer:
    """Items by how many users interacted with them in training: the same list for everyone."""

    name: str = "popularity"
    counts: np.ndarray | None = None

    def fit(self, train: Interactions, items: ItemSide) -> PopularityScorer:
        self.counts = train.item_counts().astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        counts = fitted(self.counts, self)
        return np.broadcast_to(counts, (len(users), len(counts))).copy()


@dataclass
class RandomScorer:
    """Uniformly random scores, seeded: the floor every model must clear."""

    seed: int = 0
    name: str = "random"
    n_items: int = 0

    def fit(self, train: Interactions, items: ItemSide) -> RandomScorer:
        self.n_items = train.n_items
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        rows = [np.random.default_rng([self.seed, int(user)]).random(self.n_items) for user in users]
        return np.asarray(rows, dtype=np.float32).reshape(len(users), self.n_items)


@dataclass
class EaseScorer:
    """EASE (Steck, 2019): a closed-form item-item model, B = I - P / diag(P) with P = (XᵀX + λI)⁻¹.

    Only items with training interactions enter the inverse (the others score 0), which keeps the
    matrix as small as the warm catalog. Memory is O(warm items²) and time O(warm items³), so
    `max_items` (0: no limit) keeps only the most interacted-with items: at ml-25m's size, 10,000 of
    62,000 items carry most interactions, and the tail is left to the other scorers.
    """

    l2: float = 500.0
    name: str = "ease"
    weights: np.ndarray | None = None
    warm: np.ndarray | None = None
    matrix: sp.csr_matrix | None = None
    max_items: int = 0

    def fit(self, train: Interactions, items: ItemSide) -> EaseScorer:
        self.matrix = train.matrix()
        self.warm = most_interacted(train.item_counts(), self.max_items)
        x = self.matrix[:, self.warm]
        # float32 halves the time of the inverse; with λ in the hundreds the Gram matrix is well conditioned.
        gram = (x.T @ x).toarray().astype(np.float32)
        gram[np.diag_indices_from(gram)] += self.l2
        weights = spd_inverse(gram)
        del gram  # at 10,000 items each of these matrices is 400 MB: hold few at once
        weights /= -np.diag(weights).copy()
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32, copy=False)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.score_vectors(fitted(self.matrix, self)[users])[0]

    def score_vectors(self, *user_vectors: sp.csr_matrix) -> list[np.ndarray]:
        """Scores for arbitrary (e.g. recency-weighted) user × item rows, one array per matrix given;
        matrices with one sparsity pattern share one pass over the weights."""
        warm, n_items = fitted(self.warm, self), fitted(self.matrix, self).shape[1]
        scores = []
        for among_warm in sparse_times_dense_rows(list(user_vectors), warm, fitted(self.weights, self)):
            full = np.zeros((among_warm.shape[0], n_items), dtype=np.float32)
            full[:, warm] = among_warm
            scores.append(full)
        return scores


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix by Cholesky (LAPACK potrf + potri): ~5× faster
    than `np.linalg.inv`'s LU solve against the identity, which is what makes a 10,000-item EASE cheap.
    `matrix` is overwritten."""
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix, lower=False, overwrite_a=True, clean=True)
    if info == 0:
        upper, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"matrix is not positive definite (LAPACK info {info}); raise the L2 weight")
    inverse = np.triu(upper)
    inverse += np.triu(upper, 1).T  # potri fills one triangle
    return inverse


def most_interacted(item_counts: np.ndarray, limit: int) -> np.ndarray:
    """Indices (ascending) of the items with interactions, only the `limit` most interacted-with when
    `limit` > 0 (ties: the lower index)."""
    warm = np.flatnonzero(item_counts > 0)
    if 0 < limit < len(warm):
        warm = np.sort(warm[np.argsort(-item_counts[warm], kind="stable")[:limit]])
    return warm


def keep_nearest(similarity: np.ndarray, neighbours: int, axis: int, chunk: int = 1024) -> None:
    """Zero, in place, every similarity below the `neighbours`-th largest along `axis` (ties are kept).

    Works through `chunk` slices across `axis` at a time, so the temporary copies stay small next to a
    large items × items matrix.
    """
    keep = min(neighbours, similarity.shape[axis] - 1)
    if keep <= 0:
        return
    across = 1 - axis
    for start in range(0, similarity.shape[across], chunk):
        part = similarity[:, start : start + chunk] if axis == 0 else similarity[start : start + chunk]
        threshold = np.take(-np.partition(-part, keep - 1, axis=axis), keep - 1, axis=axis)
        part[part < np.expand_dims(threshold, axis)] = 0.0  # a view: zeroes `similarity` itself


@dataclass
class ItemKnnScorer:
    """Item-based kNN: cosine similarity of item columns, each item keeping its `neighbours` nearest.

    The similarities are computed densely among the items with interactions (an item without any has
    none), at most `max_items` of them, the most interacted-with (0: no limit), as for EASE.
    """

    neighbours: int = 100
    shrink: float = 10.0
    name: str = "item_knn"
    similarity: sp.csr_matrix | None = None
    matrix: sp.csr_matrix | None = None
    max_items: int = 0

    def fit(self, train: Interactions, items: ItemSide) -> ItemKnnScorer:
        self.matrix = train.matrix()
        warm = most_interacted(train.item_counts(), self.max_items)
        x = self.matrix[:, warm]
        similarity = (x.T @ x).toarray()  # co-counts, turned into cosines in place
        norms = np.sqrt(np.diag(similarity)).copy()
        similarity /= np.outer(norms, norms) + self.shrink
        np.fill_diagonal(similarity, 0.0)
        # Each item keeps its nearest neighbours: user scores sum over their items' nearest neighbours.
        keep_nearest(similarity, self.neighbours, axis=0)
        among_warm = sp.coo_matrix(similarity.astype(np.float32))
        self.similarity = sp.csr_matrix(
            (among_warm.data, (warm[among_warm.row], warm[among_warm.col])), shape=(train.n_items, train.n_items)
        )
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return sparse_times_sparse([fitted(self.matrix, self)[users]], self.similarity)[0]


@dataclass
class UserKnnScorer:
    """User-based kNN: a user's score for an item sums their `neighbours` most similar users' interactions.

    Neighbours come from a pool of at most `max_pool` users, the most active (0: every user with an
    interaction). Comparing each user with every other makes scoring quadratic in the users: at
    ml-25m's 162k users one block of 256 users spent 3.3 s of its 9 s here; a pool of 20,000 bounds it.
    """

    neighbours: int = 50
    shrink: float = 10.0
    name: str = "user_knn"
    matrix: sp.csr_matrix | None = None
    norms: np.ndarray | None = None
    max_pool: int = 0
    pool: np.ndarray | None = None  # user indices that can be neighbours, ascending
    pool_rows: sp.csr_matrix | None = None  # pool users × items
    pool_columns: sp.csr_matrix | None = None  # items × pool users: the same, transposed once at fit

    def fit(self, train: Interactions, items: ItemSide) -> UserKnnScorer:
        self.matrix = train.matrix()
        self.norms = np.sqrt(np.asarray(self.matrix.sum(axis=1)).ravel())
        self.pool = most_interacted(train.user_counts(), self.max_pool)
        self.pool_rows = self.matrix[self.pool]
        self.pool_columns = self.pool_rows.T.tocsr()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        pool, matrix, norms = fitted(self.pool, self), fitted(self.matrix, self), fitted(self.norms, self)
        if len(pool) == 0:
            return np.zeros((len(users), matrix.shape[1]), dtype=np.float32)
        overlap = sparse_times_sparse([matrix[users]], self.pool_columns)[0]
        similarity = overlap / (np.outer(norms[users], norms[pool]) + self.shrink)
        # A user is not their own neighbour.
        position = np.minimum(np.searchsorted(pool, users), len(pool) - 1)
        in_pool = pool[position] == users
        similarity[np.flatnonzero(in_pool), position[in_pool]] = 0.0
        keep_nearest(similarity, self.neighbours, axis=1)
        # Sparse times sparse: the neighbours' rows only, never a dense users × items copy of the matrix.
        return sparse_times_sparse([sp.csr_matrix(similarity)], self.pool_rows)[0]


@dataclass
class FactorScorer:
    """Dot products of user and item factors, e.g. from Spark MLlib's ALS; unknown rows score 0."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    name: str = "als"

    def fit(self, train: Interactions, items: ItemSide) -> FactorScorer:
        return self  # fitted elsewhere (Spark); the factors arrive in the constructor

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.user_factors[users] @ self.item_factors.T).astype(np.float32)


def normalised_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def user_profiles(train: Interactions, vectors: np.ndarray) -> np.ndarray:
    """Each user's unit-length mean of the vectors of their training items (zero when they have none)."""
    profile_sum = train.matrix() @ vectors
    return normalised_rows(np.asarray(profile_sum, dtype=np.float32))


@dataclass
class GenreScorer:
    """Cosine between a user's genre profile and an item's genres: the content floor for cold items."""

    name: str = "genre"
    profiles: np.ndarray | None = None
    item_genres: np.ndarray | None = None

    def fit(self, train: Interactions, items: ItemSide) -> GenreScorer:
        self.item_genres = normalised_rows(items.genres.toarray().astype(np.float32))
        self.profiles = user_profiles(train, self.item_genres)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return fitted(self.profiles, self)[users] @ fitted(self.item_genres, self).T


@dataclass
class ContentScorer:
    """Unweighted content similarity: the sum over modalities of cos(user profile, item block).

    The ranker learns how much each modality is worth; this baseline weighs them all the same.
    """

    modalities: list[str] | None = None
    name: str = "content"
    profiles: dict[str, np.ndarray] = field(default_factory=dict)
    blocks: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, train: Interactions, items: ItemSide) -> ContentScorer:
        for modality in self.modalities or items.modalities:
            self.blocks[modality] = items.blocks[modality]
            self.profiles[modality] = user_profiles(train, items.blocks[modality])
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        total = None
        for modality, block in self.blocks.items():
            part = self.profiles[modality][users] @ block.T
            total = part if total is None else total + part
        if total is None:  # not fitted, or fitted on an item side without modalities
            raise ValueError("the content scorer has no modality to score with")
        return total.astype(np.float32)
