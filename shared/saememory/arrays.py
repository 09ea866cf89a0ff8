"""Row-appendable matrices with amortised O(1) appends, for indexes that grow message by message."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class GrowableMatrix:
    """A row-appendable float32 matrix with amortised O(1) appends."""

    def __init__(self, width: int) -> None:
        self._data = np.zeros((16, width), dtype=np.float32)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        need = self.n + rows.shape[0]
        if need > self._data.shape[0]:
            grown = np.zeros((max(need, 2 * self._data.shape[0]), self._data.shape[1]), dtype=np.float32)
            grown[: self.n] = self._data[: self.n]
            self._data = grown
        self._data[self.n : need] = rows
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self._data[: self.n]


class GrowableCSR:
    """A row-appendable CSR matrix; ``view`` is a zero-copy ``csr_matrix`` (it is read on every search)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows = 0
        self.indptr = np.zeros(1024, dtype=np.int64)
        self.indices = np.zeros(1024, dtype=np.int32)
        self.data = np.zeros(1024, dtype=np.float32)

    def append(self, block: sp.csr_matrix) -> None:
        block = sp.csr_matrix(block)
        start, nnz, n = int(self.indptr[self.rows]), block.nnz, block.shape[0]
        if start + nnz > self.data.shape[0]:
            size = max(start + nnz, 2 * self.data.shape[0])
            self.indices = np.resize(self.indices, size)
            self.data = np.resize(self.data, size)
        if self.rows + n + 1 > self.indptr.shape[0]:
            self.indptr = np.resize(self.indptr, max(self.rows + n + 1, 2 * self.indptr.shape[0]))
        self.indices[start : start + nnz] = block.indices
        self.data[start : start + nnz] = block.data
        self.indptr[self.rows + 1 : self.rows + n + 1] = block.indptr[1:] + start
        self.rows += n

    @property
    def view(self) -> sp.csr_matrix:
        nnz = int(self.indptr[self.rows])
        return sp.csr_matrix(
            (self.data[:nnz], self.indices[:nnz], self.indptr[: self.rows + 1]),
            shape=(self.rows, self.width),
            copy=False,
        )
