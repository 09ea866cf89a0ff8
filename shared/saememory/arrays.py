"""Row-appendable arrays with amortised O(1) appends, for indexes that grow message by message.

``GrowableMatrix`` and ``GrowableCSR`` hold float32 rows as given (BM25 uses them).
``Int8Rows`` and ``Int8CSR`` hold a memory's dense vectors and SAE codes compactly: int8 values
with one float32 scale per row (a value is ``int8 * scale``, ``scale = max|row| / 127``), and
SAE feature indices as uint16 when the code is at most 65,536 wide. They score a query against
any set of their rows in bounded chunks, and decode rows to float32 on demand; what they decode
is exactly what they score.

Every array grows by ``GROWTH`` (10%, not 2x) when full, so what is held is at most 1.1x what is
used (plus 16 rows): a message's ~2.25 KB (384-d vector, 615 active features of 4,096) takes at
most ~2.47 KB. Appends stay amortised O(1): each byte is copied about 11 times over the array's
life, a few microseconds per message. A load allocates exactly what the save holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

GROWTH = 1.1  # capacity grows by this factor when an append does not fit: amortised O(1) appends
# Scoring works through a user's rows in chunks, so temporaries stay small (and in cache) for any
# number of messages. Small dense chunks also keep OpenBLAS' matrix-vector product on one thread,
# which is the fastest here: on 2 cores, threaded products of 2k+ rows took 10-50x longer.
DENSE_CHUNK = 1024  # rows of int8 vectors decoded at a time while scoring (1024 x 384 float32: 1.5 MB)
SPARSE_CHUNK = 1 << 16  # stored SAE code entries gathered at a time while scoring (about 1.3 MB of temporaries)
LEVELS = 127  # int8 steps each side of zero: values are round(x / max|x| * 127)
QUANTIZE_CHUNK = 1 << 22  # values quantised at a time (about 50 MB of temporaries)


def _grown(array: np.ndarray, used: int, need: int) -> np.ndarray:
    """``array`` if it holds ``need`` rows, else a larger zero-filled copy of its first ``used`` rows."""
    if need <= array.shape[0]:
        return array
    grown = np.zeros((max(need, int(array.shape[0] * GROWTH) + 16), *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def index_dtype(width: int) -> type:
    """The dtype of stored SAE feature indices: uint16 for codes up to 65,536 wide, else int32."""
    return np.uint16 if width <= 1 << 16 else np.int32


def quantize(values: np.ndarray, peaks: np.ndarray, owner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Values as int8 steps of their row's scale ``peak / 127``; returns ``(int8 values, float32 scales)``.

    Args:
        values: float32 values (a 2-d block of rows, or the data of a CSR block).
        peaks: Each row's largest absolute value (NaN or infinite for a row holding such values).
        owner: For CSR data, each value's row; None when ``values`` is 2-d.

    A non-finite row keeps its non-finite scale (so a save can refuse it) and zeros as values;
    a row of zeros gets scale 0. Each value is within half a step (``scale / 2``) of its original.
    """
    scale = (peaks.astype(np.float64) / LEVELS).astype(np.float32)
    usable = np.isfinite(scale) & (scale > 0)
    divide = np.where(usable, scale, np.float32(np.inf))  # an unusable row's values all become 0 (NaN too, below)
    with np.errstate(invalid="ignore", over="ignore"):
        steps = np.rint(values / (divide[:, None] if owner is None else divide[owner]))
    steps[~np.isfinite(steps)] = 0
    steps = np.clip(steps, -LEVELS, LEVELS).astype(np.int8)
    return steps, scale


def quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense rows as ``(int8 values of shape (n, width), float32 scales of shape (n,))``; see ``quantize``.

    Works through ``QUANTIZE_CHUNK`` values at a time, so a large block (a save of an older
    format loading) needs little more than its int8 result on top of itself.
    """
    rows = np.asarray(rows, dtype=np.float32)
    n, width = rows.shape
    values, scale = np.empty((n, width), np.int8), np.empty(n, np.float32)
    step = max(1, QUANTIZE_CHUNK // max(width, 1))
    for start in range(0, n, step):
        block = rows[start : start + step]
        peaks = np.abs(block).max(axis=1) if width else np.zeros(block.shape[0], np.float32)
        values[start : start + step], scale[start : start + step] = quantize(block, peaks)
    return values, scale


def dequantize_rows(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 rows and their scales (``quantize_rows``) back to float32: ``values * scale`` per row."""
    return values.astype(np.float32) * scale[..., None]


def quantize_codes(block: sp.spmatrix, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SAE codes as compact CSR parts ``(indptr int64, indices, int8 values, float32 scales)``.

    Duplicate entries are summed and indices sorted within each row first; entries whose value
    rounds to 0 are not stored (their original is within half a step of 0). Works through about
    ``QUANTIZE_CHUNK`` entries at a time.
    """
    block = sp.csr_matrix(block, dtype=np.float32)
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()
    n = block.shape[0]
    counts, scale = np.zeros(n, np.int64), np.empty(n, np.float32)
    indices, values = [], []
    for start, stop in _chunks(np.diff(block.indptr), QUANTIZE_CHUNK):
        first, last = block.indptr[start], block.indptr[stop]
        data, local = block.data[first:last], block.indptr[start : stop + 1] - first
        owner = np.repeat(np.arange(stop - start), np.diff(local))
        peaks = np.zeros(stop - start, np.float32)
        nonempty = np.diff(local) > 0
        if data.size:
            peaks[nonempty] = np.maximum.reduceat(np.abs(data), local[:-1][nonempty])
        steps, scale[start:stop] = quantize(data, peaks, owner)
        keep = steps != 0
        counts[start:stop] = np.bincount(owner[keep], minlength=stop - start)
        indices.append(block.indices[first:last][keep].astype(index_dtype(width)))
        values.append(steps[keep])
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    empty = (np.zeros(0, index_dtype(width)), np.zeros(0, np.int8))
    return indptr, np.concatenate(indices or [empty[0]]), np.concatenate(values or [empty[1]]), scale


def unit_rows(matrix: sp.spmatrix) -> sp.csr_matrix:
    """``matrix`` as float32 CSR with each non-zero row scaled to unit L2 norm (zero rows stay zero)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1), dtype=np.float64).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ matrix, dtype=np.float32)  # a zero row stays zero


def rows_by_group(matrix: sp.spmatrix, groups: np.ndarray, n: int, how: str = "max") -> sp.csr_matrix:
    """One row per group: the column-wise ``"max"`` or ``"mean"`` of the rows of ``matrix`` that
    ``groups`` (one group index in ``[0, n)`` per row) assigns to it; a group with no row is zero.

    The max is over each group's stored values and, where a row lacks the column, zero: the codes
    combined here are non-negative, so a column absent from every row of a group stays absent.
    """
    coo = sp.coo_matrix(matrix)
    groups = np.asarray(groups, dtype=np.int64)
    rows, cols, values = groups[coo.row], coo.col, coo.data.astype(np.float32)
    shape = (n, matrix.shape[1])
    if how == "mean":
        counts = np.bincount(groups, minlength=n).astype(np.float32)
        summed = sp.csr_matrix((values, (rows, cols)), shape=shape)  # duplicates add up
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(counts, 1.0)) @ summed, dtype=np.float32)
    if how != "max":
        raise ValueError(f"how={how!r} is not 'max' or 'mean'.")
    order = np.lexsort((values, cols, rows))  # by group, then column, then value: each pair's max comes last
    rows, cols, values = rows[order], cols[order], values[order]
    last = np.ones(rows.size, dtype=bool)
    last[:-1] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    return sp.csr_matrix((values[last], (rows[last], cols[last])), shape=shape, dtype=np.float32)


def as_stored(dense: np.ndarray, codes: sp.spmatrix | None = None) -> tuple[np.ndarray, sp.csr_matrix | None]:
    """Vectors (and codes) as ``Int8Rows`` and ``Int8CSR`` store them, decoded to float32: what a
    ``FaissBackend`` scores, for comparisons with float32 scoring elsewhere."""
    dense = np.asarray(dense, dtype=np.float32)
    rows = Int8Rows(dense.shape[1])
    rows.append(dense)
    if codes is None:
        return rows.view, None
    csr = Int8CSR(codes.shape[1])
    csr.append(codes)
    return rows.view, csr.view


def _chunks(counts: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges of consecutive rows holding about ``limit`` entries each (at least one row)."""
    ends = np.cumsum(counts)
    start = 0
    while start < counts.size:
        before = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, before + limit, side="right")))
        yield start, stop
        start = stop


class GrowableMatrix:
    """A row-appendable float32 matrix with amortised O(1) appends."""

    def __init__(self, width: int) -> None:
        self._data = np.zeros((16, width), dtype=np.float32)
        self.n = 0

    def append(self, rows: np.ndarray) -> None:
        need = self.n + rows.shape[0]
        self._data = _grown(self._data, self.n, need)
        self._data[self.n : need] = rows
        self.n = need

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` rows (an append undone)."""
        self.n = min(self.n, n)

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
        self.indices = _grown(self.indices, start, start + nnz)
        self.data = _grown(self.data, start, start + nnz)
        self.indptr = _grown(self.indptr, self.rows + 1, self.rows + n + 1)
        self.indices[start : start + nnz] = block.indices
        self.data[start : start + nnz] = block.data
        self.indptr[self.rows + 1 : self.rows + n + 1] = block.indptr[1:] + start
        self.rows += n

    def truncate(self, rows: int) -> None:
        """Keeps the first ``rows`` rows (an append undone)."""
        self.rows = min(self.rows, rows)

    @property
    def view(self) -> sp.csr_matrix:
        nnz = int(self.indptr[self.rows])
        return sp.csr_matrix(
            (self.data[:nnz], self.indices[:nnz], self.indptr[: self.rows + 1]),
            shape=(self.rows, self.width),
            copy=False,
        )


class Int8Rows:
    """Row-appendable dense vectors as int8 with one float32 scale per row (1 byte a value + 4 a row).

    A stored vector is ``values[row] * scale[row]``: each value within ``scale / 2`` of the
    original (``scale = max|x| / 127``), a cosine error far below 0.01 for 384-d unit vectors.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.n = 0
        self._values = np.zeros((0, width), dtype=np.int8)  # the first append allocates: a load, exactly what it holds
        self._scale = np.zeros(0, dtype=np.float32)

    def append(self, rows: np.ndarray) -> None:
        """Quantises and appends float32 rows."""
        self.append_quantized(*quantize_rows(rows))

    def append_quantized(self, values: np.ndarray, scale: np.ndarray) -> None:
        """Appends rows already quantised (as ``quantize_rows`` gives them, or as a save holds them)."""
        need = self.n + values.shape[0]
        self._values = _grown(self._values, self.n, need)
        self._scale = _grown(self._scale, self.n, need)
        self._values[self.n : need] = values
        self._scale[self.n : need] = scale
        self.n = need

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` rows (an append undone)."""
        self.n = min(self.n, n)

    @property
    def values(self) -> np.ndarray:
        """The stored int8 values, (n, width); a view."""
        return self._values[: self.n]

    @property
    def scale(self) -> np.ndarray:
        """Each row's float32 scale, (n,); a view."""
        return self._scale[: self.n]

    def decode(self, rows: np.ndarray | list[int] | int) -> np.ndarray:
        """The float32 vectors of these rows, (len(rows), width); of one int row, (width,)."""
        rows = np.asarray(rows, dtype=np.int64)
        return dequantize_rows(self._values[rows], self._scale[rows])

    @property
    def view(self) -> np.ndarray:
        """Every stored vector decoded to float32, (n, width): a new array, 4x the stored size."""
        return self.decode(np.arange(self.n))

    def dot(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Inner products of a float32 query with these rows' decoded vectors, in chunks of ``DENSE_CHUNK`` rows."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        out = np.empty(rows.size, dtype=np.float32)
        for start in range(0, rows.size, DENSE_CHUNK):
            chunk = rows[start : start + DENSE_CHUNK]
            out[start : start + chunk.size] = (self._values[chunk].astype(np.float32) @ query) * self._scale[chunk]
        return out

    def nbytes(self) -> dict[str, int]:
        """``{"used": bytes of the n rows, "held": bytes allocated (capacity)}``."""
        return {"used": self.values.nbytes + self.scale.nbytes, "held": self._values.nbytes + self._scale.nbytes}


class Int8CSR:
    """Row-appendable SAE codes in compact CSR: feature indices as ``index_dtype(width)`` (uint16 for
    codes up to 65,536 wide), int8 values with one float32 scale per row, int64 row pointers.

    About 3 bytes per active feature and 12 per row. A stored value is ``values[j] * scale[row]``,
    within ``scale / 2`` of the original (``scale = max|code| / 127``): any sign is kept.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.rows = 0
        self.indptr = np.zeros(1, dtype=np.int64)  # the first append allocates: a load, exactly what it holds
        self.indices = np.zeros(0, dtype=index_dtype(width))
        self.values = np.zeros(0, dtype=np.int8)
        self.scale = np.zeros(0, dtype=np.float32)

    def append(self, block: sp.spmatrix) -> None:
        """Quantises and appends a CSR block of float32 codes."""
        self.append_quantized(*quantize_codes(block, self.width))

    def append_quantized(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, scale: np.ndarray) -> None:
        """Appends rows already quantised (as ``quantize_codes`` gives them, or as a save holds them)."""
        start, nnz, n = int(self.indptr[self.rows]), int(indptr[-1]), indptr.shape[0] - 1
        self.indices = _grown(self.indices, start, start + nnz)
        self.values = _grown(self.values, start, start + nnz)
        self.indptr = _grown(self.indptr, self.rows + 1, self.rows + n + 1)
        self.scale = _grown(self.scale, self.rows, self.rows + n)
        self.indices[start : start + nnz] = indices
        self.values[start : start + nnz] = values
        self.indptr[self.rows + 1 : self.rows + n + 1] = indptr[1:] + start
        self.scale[self.rows : self.rows + n] = scale
        self.rows += n

    def truncate(self, rows: int) -> None:
        """Keeps the first ``rows`` rows (an append undone)."""
        self.rows = min(self.rows, rows)

    def parts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """These rows' compact CSR parts ``(indptr, indices, values, scale)``, as new arrays (for a save)."""
        rows = np.asarray(rows, dtype=np.int64)
        positions, counts = self._positions(rows)
        indptr = np.zeros(rows.size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, self.indices[positions].copy(), self.values[positions].copy(), self.scale[rows].copy()

    def _positions(self, rows: np.ndarray) -> tuple[np.ndarray | slice, np.ndarray]:
        """The positions of these rows' stored entries, row after row, and each row's count.

        A slice when the rows are consecutive (one user's batch, or a one-user memory): no gather.
        """
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size and (np.diff(rows) == 1).all():
            return slice(int(starts[0]), int(starts[0] + counts.sum())), counts
        offsets = np.cumsum(counts) - counts  # where each row begins among the gathered entries
        positions = np.repeat(starts - offsets, counts)
        positions += np.arange(positions.size, dtype=np.int64)
        return positions, counts

    def decode(self, rows: np.ndarray | list[int]) -> sp.csr_matrix:
        """These rows as a float32 CSR matrix (int32 indices) of the decoded values."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        positions, counts = self._positions(rows)
        indptr = np.zeros(rows.size + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        data = self.values[positions].astype(np.float32) * np.repeat(self.scale[rows], counts)
        return sp.csr_matrix((data, self.indices[positions].astype(np.int32), indptr), shape=(rows.size, self.width))

    def row(self, row: int) -> sp.csr_matrix:
        """One row decoded: a 1 x width float32 CSR matrix."""
        return self.decode([row])

    @property
    def view(self) -> sp.csr_matrix:
        """Every stored code decoded to a float32 CSR matrix: a new matrix, about 2.7x the stored size."""
        return self.decode(np.arange(self.rows))

    def dot(self, rows: np.ndarray, query: sp.spmatrix) -> np.ndarray:
        """Inner products of a query code (1 x width) with these rows' decoded codes.

        Vectorised over chunks of about ``SPARSE_CHUNK`` stored entries: each entry's query
        activation is gathered, multiplied by its int8 value and summed per row, then the sum is
        scaled by the row's scale. So a score is the decoded code's dot product with the query
        (up to float32 rounding), and a row with no stored entries scores 0.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.zeros(rows.size, dtype=np.float32)
        query = sp.csr_matrix(query, dtype=np.float32)
        if rows.size == 0 or query.nnz == 0 or self.width == 0:
            return out
        dense_query = np.asarray(query.sum(axis=0), dtype=np.float32).reshape(-1)  # duplicates summed
        counts = self.indptr[rows + 1] - self.indptr[rows]
        for start, stop in _chunks(counts, SPARSE_CHUNK):
            chunk = rows[start:stop]
            positions, chunk_counts = self._positions(chunk)
            nonempty = chunk_counts > 0
            if not nonempty.any():
                continue
            products = dense_query[self.indices[positions]] * self.values[positions]
            firsts = (np.cumsum(chunk_counts) - chunk_counts)[nonempty]
            sums = np.add.reduceat(products, firsts)  # the entries of one non-empty row each
            out[start:stop][nonempty] = sums * self.scale[chunk[nonempty]]
        return out

    def nbytes(self) -> dict[str, int]:
        """``{"used": bytes of the rows' entries, pointers and scales, "held": bytes allocated (capacity)}``."""
        nnz = int(self.indptr[self.rows])
        used = (nnz * (self.indices.itemsize + self.values.itemsize) + (self.rows + 1) * self.indptr.itemsize
                + self.rows * self.scale.itemsize)
        held = self.indices.nbytes + self.values.nbytes + self.indptr.nbytes + self.scale.nbytes
        return {"used": used, "held": held}
