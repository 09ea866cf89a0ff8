"""BM25 over the stored messages, per user, always in step with adds and deletes.

Term counts live in a CSR matrix row-aligned with the message index; document frequencies,
the document count and the average length are computed at query time over the searching
user's live rows. Each user's memory is its own BM25 corpus, and a delete takes effect at
once, without a rebuild. Tokenisation and the formula are bm25s' defaults (lowercase,
``\\w\\w+`` tokens, English stopwords, the Lucene variant with k1 = 1.5 and b = 0.75), with an
optional Snowball stemmer (PyStemmer, as bm25s and LlamaIndex's BM25 use it);
``tests/test_lexical.py`` checks parity with bm25s itself, with and without stemming.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from saememory.arrays import GrowableCSR, GrowableMatrix


def tokenize(texts: list[str], stemmer: str | None = None) -> list[list[str]]:
    """bm25s' default tokenisation (lowercase, ``\\w\\w+``, English stopwords), then stemming.

    Args:
        stemmer: A Snowball language known to PyStemmer (e.g. ``"english"``), or None for none.
    """
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(stemmer), return_ids=False, show_progress=False)
    return [[t for t in doc if t] for doc in tokens]


def _real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_stemmer(language: str | None) -> str | None:
    """Returns ``language`` if PyStemmer has it (or it is None); raises naming the choices otherwise."""
    _stemmer(language)
    return language


def _stemmer(language: str | None):  # -> Stemmer.Stemmer | None
    """A new stemmer per call: PyStemmer's objects are not thread-safe, and making one is cheap."""
    if language is None:
        return None
    try:
        import Stemmer
    except ImportError:
        raise ImportError("bm25_stemmer needs PyStemmer: pip install PyStemmer (or pass bm25_stemmer=None).") from None
    try:
        return Stemmer.Stemmer(language)
    except KeyError:
        raise ValueError(f"bm25_stemmer={language!r} is not a Snowball language; pick one of "
                         f"{sorted(Stemmer.algorithms())} or None.") from None


class LexicalIndex:
    """Term counts of every stored message, row-aligned with ``MemoryIndex``.

    Args:
        k1: BM25 term-frequency saturation. Defaults to 1.5.
        b: BM25 length normalisation. Defaults to 0.75.
        stemmer: Snowball language of the stemmer, or None for no stemming. Defaults to None.
    """

    def __init__(self, k1: float = 1.5, b: float = 0.75, stemmer: str | None = None) -> None:
        self.k1, self.b, self.stemmer = k1, b, check_stemmer(stemmer)  # fails here, not at the first add
        self.vocab: dict[str, int] = {}
        self._tf = GrowableCSR(0)
        self._lengths = GrowableMatrix(1)  # tokens per message, one column

    def add(self, texts: list[str]) -> None:
        """Appends one row of term counts per text (in the index's row order)."""
        rows, cols, counts, lengths = [], [], [], []
        for row, doc in enumerate(tokenize(texts, self.stemmer)):
            ids, freq = np.unique([self.vocab.setdefault(t, len(self.vocab)) for t in doc], return_counts=True)
            rows.extend([row] * len(ids))
            cols.extend(ids.tolist())
            counts.extend(freq.tolist())
            lengths.append(len(doc))
        self._tf.width = len(self.vocab)
        block = sp.csr_matrix((np.asarray(counts, np.float32), (rows, cols)), shape=(len(texts), len(self.vocab)))
        self._tf.append(block)
        self._lengths.append(np.asarray(lengths, dtype=np.float32).reshape(-1, 1))

    def truncate(self, n: int, vocab: int) -> None:
        """Keeps the first ``n`` rows and ``vocab`` terms (an add undone: its rows and new words go)."""
        self._tf.truncate(n)
        self._lengths.truncate(n)
        if len(self.vocab) > vocab:
            self.vocab = {term: i for term, i in self.vocab.items() if i < vocab}
        self._tf.width = len(self.vocab)

    def scores(self, query: str, rows: np.ndarray) -> np.ndarray:
        """BM25 scores of ``query`` against ``rows``, with ``rows`` as the whole corpus."""
        out = np.zeros(rows.size, dtype=np.float32)
        known = [self.vocab[t] for t in tokenize([query], self.stemmer)[0] if t in self.vocab]
        if not known or rows.size == 0:
            return out
        terms, repeats = np.unique(known, return_counts=True)  # a repeated query term counts again, as in bm25s
        tf = self._tf.view[rows][:, terms].toarray()
        lengths = self._lengths.view[rows, 0]
        n = rows.size
        df = (tf > 0).sum(axis=0)
        idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avg = max(float(lengths.mean()), 1e-9)
        norm = self.k1 * (1.0 - self.b + self.b * lengths / avg)
        return ((tf / (tf + norm[:, None])) * (idf * repeats)).sum(axis=1).astype(np.float32)

    def select(self, rows: np.ndarray) -> LexicalIndex:
        """A compacted copy holding only ``rows``, renumbered from 0, and only the terms they hold
        (for saving: the words of deleted messages are not written again)."""
        out = LexicalIndex(self.k1, self.b, self.stemmer)
        tf = sp.csr_matrix(self._tf.view[rows]) if rows.size else sp.csr_matrix((0, len(self.vocab)), dtype=np.float32)
        used = np.unique(tf.indices)  # in the old numbering, ascending: the kept terms keep their order
        terms = sorted(self.vocab, key=self.vocab.get)
        out.vocab = {terms[t]: i for i, t in enumerate(used.tolist())}
        out._tf.width = len(out.vocab)
        if rows.size:
            remap = np.full(len(self.vocab), -1, dtype=np.int64)
            remap[used] = np.arange(used.size)
            out._tf.append(sp.csr_matrix((tf.data, remap[tf.indices], tf.indptr), shape=(tf.shape[0], used.size)))
        out._lengths.append(self._lengths.view[rows])
        return out

    def save(self, folder: Path) -> None:
        sp.save_npz(folder / "bm25_tf.npz", sp.csr_matrix(self._tf.view, dtype=np.float32))
        np.save(folder / "bm25_lengths.npy", self._lengths.view[:, 0].astype(np.int64), allow_pickle=False)
        terms = sorted(self.vocab, key=self.vocab.get)
        (folder / "bm25_vocab.json").write_text(json.dumps({"k1": self.k1, "b": self.b, "stemmer": self.stemmer, "terms": terms}))

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        """Reads a save, checked: a tampered file would otherwise give wrong or NaN scores.

        Raises:
            ValueError: Naming the part that is not as ``save`` writes it.
        """
        params = json.loads((folder / "bm25_vocab.json").read_text())
        k1, b, terms = params.get("k1"), params.get("b"), params.get("terms")
        if not (_real(k1) and k1 > 0 and _real(b) and 0 <= b <= 1):
            raise ValueError(f"bm25_vocab.json must hold k1 > 0 and 0 <= b <= 1 (finite numbers), got k1={k1!r}, b={b!r}")
        if not (isinstance(terms, list) and all(isinstance(t, str) for t in terms) and len(set(terms)) == len(terms)):
            raise ValueError("bm25_vocab.json must hold 'terms', a list of distinct strings")
        out = cls(k1, b, params.get("stemmer"))  # saved before stemming existed: none
        out.vocab = {t: i for i, t in enumerate(terms)}
        out._tf.width = len(out.vocab)
        tf = sp.load_npz(folder / "bm25_tf.npz").tocsr()
        lengths = np.load(folder / "bm25_lengths.npy", allow_pickle=False)
        if tf.shape[1] != len(terms) or lengths.shape != (tf.shape[0],):
            raise ValueError(f"bm25_tf.npz has shape {tf.shape} and bm25_lengths.npy {lengths.shape}, but there are "
                             f"{len(terms)} terms: one row per message and one column per term are needed")
        counts = tf.data
        if counts.size and not (np.all(np.isfinite(counts)) and np.all(counts > 0) and np.all(counts == np.round(counts))):
            raise ValueError("bm25_tf.npz must hold whole positive term counts")
        if not np.array_equal(np.asarray(tf.sum(axis=1)).ravel(), lengths):
            raise ValueError("bm25_lengths.npy must hold each message's number of words (its row sum in bm25_tf.npz)")
        if tf.shape[0]:
            out._tf.append(tf)
        out._lengths.append(lengths.astype(np.float32).reshape(-1, 1))
        return out

    def __len__(self) -> int:
        return self._lengths.n
