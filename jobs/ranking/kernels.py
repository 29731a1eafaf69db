"""Sparse × sparse and sparse × dense products that end dense: the hot loops of scoring a block of users.

scipy multiplies sparse × sparse into a sparse result that the caller then densifies, and multiplies
one weighting of a sparse matrix at a time. A block of users needs the dense rows anyway, and several
of its signals weight one sparsity pattern differently (a user's items as they are, and the same
items by recency): these kernels accumulate straight into dense rows, and read each right-hand row
once for every weighting, which is where the memory traffic is. At ml-25m's size they make a block's
sequence and EASE signals ~4× faster.

The additions happen in scipy's order (left entries in storage order, then the right row's entries),
in float32, so the results equal scipy's bit for bit; `tests/test_scale.py` checks that.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp


@numba.njit(cache=True, nogil=True)
def _times_sparse(indptr, indices, weights, right_indptr, right_indices, right_data, n_columns):
    n_rows, n_weightings = len(indptr) - 1, weights.shape[0]
    out = np.zeros((n_weightings, n_rows, n_columns), dtype=np.float32)
    for row in range(n_rows):
        for entry in range(indptr[row], indptr[row + 1]):
            inner = indices[entry]
            for right_entry in range(right_indptr[inner], right_indptr[inner + 1]):
                column, value = right_indices[right_entry], right_data[right_entry]
                for w in range(n_weightings):
                    out[w, row, column] += weights[w, entry] * value
    return out


@numba.njit(cache=True, nogil=True)
def _times_dense(indptr, indices, weights, dense_row_of, dense):
    n_rows, n_weightings, n_columns = len(indptr) - 1, weights.shape[0], dense.shape[1]
    out = np.zeros((n_weightings, n_rows, n_columns), dtype=np.float32)
    for row in range(n_rows):
        for entry in range(indptr[row], indptr[row + 1]):
            inner = dense_row_of[indices[entry]]
            if inner < 0:
                continue
            for w in range(n_weightings):
                weight = weights[w, entry]
                for column in range(n_columns):
                    out[w, row, column] += weight * dense[inner, column]
    return out


def _shared_pattern(lefts: list[sp.csr_matrix]) -> bool:
    first = lefts[0]
    return all(
        np.array_equal(other.indptr, first.indptr) and np.array_equal(other.indices, first.indices)
        for other in lefts[1:]
    )


def _weightings(lefts: list[sp.csr_matrix]) -> list[tuple[sp.csr_matrix, np.ndarray]]:
    """(pattern, values stacked as weightings × entries) per pass: one pass when `lefts` share a pattern."""
    lefts = [sp.csr_matrix(left) for left in lefts]
    groups = [lefts] if _shared_pattern(lefts) else [[left] for left in lefts]
    return [(group[0], np.stack([left.data for left in group]).astype(np.float32, copy=False)) for group in groups]


def sparse_times_sparse(lefts: list[sp.csr_matrix], right: sp.csr_matrix) -> list[np.ndarray]:
    """`[(left @ right).toarray() for left in lefts]` as float32; one pass when the CSR `lefts` share a pattern."""
    right = sp.csr_matrix(right)
    right_data = right.data.astype(np.float32, copy=False)
    out = []
    for pattern, weights in _weightings(lefts):
        if pattern.shape[1] != right.shape[0]:
            raise ValueError(f"shapes {pattern.shape} and {right.shape} do not multiply")
        out += list(
            _times_sparse(
                pattern.indptr, pattern.indices, weights, right.indptr, right.indices, right_data, right.shape[1]
            )
        )
    return out


def sparse_times_dense_rows(lefts: list[sp.csr_matrix], rows: np.ndarray, dense: np.ndarray) -> list[np.ndarray]:
    """`[left[:, rows] @ dense for left in lefts]` as float32, without slicing the columns of `lefts`:
    `rows` (ascending) are the columns of `lefts` that `dense`'s rows stand for; other columns add nothing."""
    if len(rows) != dense.shape[0]:
        raise ValueError(f"{len(rows)} rows named for a dense matrix of {dense.shape[0]} rows")
    dense = np.ascontiguousarray(dense, dtype=np.float32)
    out = []
    for pattern, weights in _weightings(lefts):
        dense_row_of = np.full(pattern.shape[1], -1, dtype=np.int64)
        dense_row_of[rows] = np.arange(len(rows))
        out += list(_times_dense(pattern.indptr, pattern.indices, weights, dense_row_of, dense))
    return out
