"""LongMemEval retrieval, side by side: saememory's signals and fusions against BM25 and framework peers.

    nice -n 10 python benchmarks/longmemeval.py --split report --every 5 --offset 2

One run: the same questions, the same cached embeddings and the same retrieval depth for every
retriever. Each unique text is encoded once per encoder configuration and cached under
``benchmarks/.cache/`` (dense ``.npy`` + sparse ``.npz`` + JSON text-hash keys, no pickle).

Retrievers. Ours, scored with ``saememory.scoring.combine`` on the cached matrices (exactly what
``SAEMemory`` with an exact index computes; the latency pass checks it through ``SAEMemory``
itself): dense only; sparse only with the residual SAE and with the embedding SAE; and each SAE
combined with dense by every fusion (sqrt, sqrt_unclamped, weighted, rrf). Peers: bm25s (default
tokenizer, English stopwords); rank_bm25 ``BM25Okapi`` with ``split(" ")`` as the official code;
LangChain's ``EnsembleRetriever`` (langchain_community ``BM25Retriever`` + an ``InMemoryVectorStore``
over the cached MiniLM vectors, weights 0.5/0.5, c = 60); LlamaIndex's ``QueryFusionRetriever`` in
relative-score mode (llama-index-retrievers-bm25 ``BM25Retriever`` + a ``VectorStoreIndex`` over the
cached vectors, ``MockLLM``, one query); per-query min-max normalised bm25s + dense; and the same
with the residual SAE as a third signal.

Protocols, reported separately: (a) official: user turns only, ``_abs`` skipped, recall_any /
recall_all / ndcg_any @ 1, 5, 10 at turn level, session level from a session index, and session
level from the turn ranking; (b) the poster's: both roles indexed, top 10, context precision (all
evidence turns retrieved), context length, and latency (index + query per question, and per warm
query) as ratios to dense only.

Writes ``benchmarks/longmemeval_results.json``, a plot (``benchmarks/longmemeval_recall_vs_context.png``)
and the LongMemEval section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_ADJUSTMENTS, commit, default_scores, library_defaults, machine, write_section  # noqa: E402

from saememory import DEFAULT_SAE, Encoded, Encoder, EncoderConfig, SAEMemory  # noqa: E402
from saememory.arrays import as_stored  # noqa: E402
from saememory.eval import longmemeval as lme  # noqa: E402
from saememory.interpret.hygiene import visible_codes  # noqa: E402
from saememory.lexical import LexicalIndex  # noqa: E402
from saememory.scoring import SIGNALS, combine, fit_budget  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / ".." / "shared" / "data" / "longmemeval"
DEFAULT_DATA = DATA_DIR / "longmemeval_s_cleaned_499.json.gz"
DEFAULT_DEV = DATA_DIR / "longmemeval_s_cleaned_dev30.json.gz"
DEFAULT_EMB_SAE = "minilm-emb-topk4k"
OFFICIAL_KS = (1, 5, 10)
POSTER_KS = (1, 3, 5, 10)
POSTER_TOP = 10
POSTER_BUDGET = 5346  # the poster's mean context (characters) at its context precision of 0.73
BUDGET_DEPTH = 50  # ranked messages a budget may draw from
DEV_POSITIONS = (0, 1)  # strict questions at positions i % 5 in these were used for choices (REFERENCE §10)
MD_START, MD_END = "<!-- longmemeval:start -->", "<!-- longmemeval:end -->"
FUSIONS = ("sqrt", "sqrt_unclamped", "weighted", "rrf")


# Cache ----------------------------------------------------------------------------------------


def text_key(kind: str, text: str) -> str:
    """Cache key of a text encoded as a ``"doc"`` or a ``"query"``."""
    return hashlib.sha1(f"{kind}\0{text}".encode("utf-8")).hexdigest()


class VectorCache:
    """Dense vectors and sparse codes of texts for one encoder configuration, on disk.

    A directory of chunks: ``<stem>.dense.npy``, ``<stem>.sparse.npz`` and ``<stem>.keys.json``
    (text hashes, written last, so a chunk without keys is ignored), plus ``identity.json``.

    Args:
        directory: The cache directory of this configuration (created if missing).
        identity: The encoder's identity, written to ``identity.json``.
        hidden: Feature ids the encoder's hygiene leaves out of its codes: the cache holds every
            feature, and ``get`` leaves these out (``interpret.hygiene.visible_codes``), so one
            cache serves ``EncoderConfig(hygiene=True)`` and ``hygiene=False``. Defaults to None.
    """

    def __init__(self, directory: Path, identity: dict[str, Any], hidden: np.ndarray | None = None) -> None:
        self.directory, self.hidden = directory, hidden
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
        self.chunks: list[tuple[np.ndarray, sp.csr_matrix]] = []
        self.where: dict[str, tuple[int, int]] = {}
        for keys_file in sorted(directory.glob("*.keys.json")):
            stem = keys_file.name[: -len(".keys.json")]
            self._attach(json.loads(keys_file.read_text()), np.load(directory / f"{stem}.dense.npy", allow_pickle=False),
                         sp.load_npz(directory / f"{stem}.sparse.npz").tocsr())

    def _attach(self, keys: list[str], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        chunk = len(self.chunks)
        self.chunks.append((dense, sparse))
        for row, key in enumerate(keys):
            self.where.setdefault(key, (chunk, row))

    def missing(self, keys: list[str]) -> list[str]:
        """The keys not cached yet, each once, in order."""
        return [k for k in dict.fromkeys(keys) if k not in self.where]

    def add(self, keys: list[str], dense: np.ndarray, sparse: sp.csr_matrix) -> None:
        """Stores a chunk of encodings (rows aligned with ``keys``)."""
        if not keys:
            return
        # Unique per process and time: two runs filling one cache at once must not overwrite each other.
        stem = f"{time.time_ns()}-{os.getpid()}"
        np.save(self.directory / f"{stem}.dense.npy", dense.astype(np.float32), allow_pickle=False)
        sp.save_npz(self.directory / f"{stem}.sparse.npz", sp.csr_matrix(sparse, dtype=np.float32))
        (self.directory / f"{stem}.keys.json").write_text(json.dumps(keys))
        self._attach(keys, dense.astype(np.float32), sp.csr_matrix(sparse, dtype=np.float32))

    def get(self, keys: list[str], hygiene: bool = True) -> tuple[np.ndarray, sp.csr_matrix]:
        """Dense (n, dim) and sparse (n, d_sae) rows of ``keys``, in order; with ``hygiene=False``
        the codes keep every feature, as cached.

        Raises:
            KeyError: If a key is not cached (encode it first with ``fill``).
        """
        absent = [k for k in keys if k not in self.where]
        if absent:
            raise KeyError(f"{len(absent)} texts are not in the cache {self.directory}; call fill() first.")
        places = [self.where[k] for k in keys]
        dense = np.stack([self.chunks[c][0][r] for c, r in places]) if keys else np.zeros((0, 0), np.float32)
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for position, (c, r) in enumerate(places):
            by_chunk.setdefault(c, []).append((position, r))
        parts, order = [], []
        for c, items in by_chunk.items():
            parts.append(self.chunks[c][1][[r for _, r in items]])
            order.extend(p for p, _ in items)
        sparse = sp.vstack(parts, format="csr")[np.argsort(order)] if parts else sp.csr_matrix((0, 0))
        if hygiene and self.hidden is not None and sparse.shape[1]:
            return dense, visible_codes(sparse, self.hidden)
        return dense, sp.csr_matrix(sparse)

    def word_vectors(self, encoder: Encoder, texts: list[str], query: bool = False) -> list[np.ndarray] | None:
        """``encoder.word_vectors`` of ``texts``, kept under ``words/`` as one float16 ``.npy``
        per text (the model's token vectors: they do not depend on the SAE or its hygiene)."""
        folder = self.directory / "words"
        folder.mkdir(exist_ok=True)
        paths = [folder / f"{text_key('query' if query else 'doc', t)}.npy" for t in texts]
        todo = [i for i, path in enumerate(paths) if not path.exists()]
        if todo:
            read = encoder.word_vectors([texts[i] for i in todo], query=query)
            if read is None:
                return None
            for i, vectors in zip(todo, read):
                temporary = paths[i].with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(temporary, vectors.astype(np.float16), allow_pickle=False)
                os.replace(temporary, paths[i])
        return [np.load(path, allow_pickle=False).astype(np.float32) for path in paths]


def cache_dir(root: Path, encoder: Encoder, derived_sae: Any = None) -> Path:
    """``<root>/<slug>-<hash of the encoder identity (and a derived SAE's)>``."""
    identity = {"encoder": encoder.identity(), "derived_sae": derived_sae.identity() if derived_sae else None}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    sae = derived_sae or encoder.sae
    slug = sae.name if sae is not None else "dense"
    return root / f"{slug}-{digest}"


def embedding_sae_codes(sae: Any, dense: np.ndarray) -> sp.csr_matrix:
    """The codes ``Encoder`` gives with an embedding SAE and ``hygiene=False``, from cached dense vectors (no
    forward pass); ``VectorCache.get`` leaves out what hygiene hides."""
    if len(dense) == 0:
        return sp.csr_matrix((0, sae.cfg.d_sae), dtype=np.float32)
    with torch.inference_mode():
        codes = torch.nn.functional.normalize(sae.encode(torch.from_numpy(np.ascontiguousarray(dense))), dim=-1)
    return sp.csr_matrix(codes.float().numpy())


class Caches:
    """The base cache (dense + residual-SAE codes, one forward pass) and the derived embedding-SAE cache.

    Args:
        root: The cache root directory.
        base: The encoder for the dense vectors and residual SAE codes (its SAE may be None).
        emb_sae: An embedding SAE (``hook_name`` ``sentence_embedding``), or None.
    """

    def __init__(self, root: Path, base: Encoder, emb_sae: Any = None) -> None:
        self.base_encoder, self.emb_sae = base, emb_sae
        # Cached with every feature (hygiene off), and hygiene applied as the codes are read.
        raw = Encoder(replace(base.config, hygiene=False), model=base.model, sae=base.sae)
        self.raw_encoder = raw
        self.base = VectorCache(cache_dir(root, raw), {"encoder": raw.identity()}, hidden=base.hidden_ids)
        self.emb = None
        if emb_sae is not None:
            emb_hidden = getattr(emb_sae, "hidden", None) if base.config.hygiene else None
            self.emb = VectorCache(cache_dir(root, raw, emb_sae), {"encoder": raw.identity(), "derived_sae": emb_sae.identity()},
                                   hidden=np.array(sorted(emb_hidden), dtype=np.int64) if emb_hidden else None)

    def fill(self, docs: list[str], queries: list[str]) -> int:
        """Encodes the texts not cached yet; returns how many were encoded."""
        keyed = {text_key("doc", t): t for t in docs}
        keyed.update({text_key("query", q): q for q in queries})
        todo = self.base.missing(list(keyed))
        if todo:
            doc_set = {text_key("doc", t) for t in docs}
            doc_keys = [k for k in todo if k in doc_set]
            query_keys = [k for k in todo if k not in doc_set]
            parts = []
            if doc_keys:
                parts.append(self.raw_encoder.encode_documents([keyed[k] for k in doc_keys]))
            parts.extend(self.raw_encoder.encode_query(keyed[k]) for k in query_keys)
            dense = np.concatenate([p.dense for p in parts])
            sparse = sp.vstack([p.sparse for p in parts], format="csr")
            self.base.add(doc_keys + query_keys, dense, sparse)
        if self.emb is not None:
            emb_todo = self.emb.missing(list(keyed))
            if emb_todo:
                dense, _ = self.base.get(emb_todo)
                self.emb.add(emb_todo, dense, embedding_sae_codes(self.emb_sae, dense))
        return len(todo)


class CachedEncoder:
    """An encoder for ``SAEMemory`` that serves cached vectors (fails on a text not cached).

    Args:
        cache: The ``VectorCache`` to read.
        encoder: The real encoder behind the cache (for ``identity``, ``dim`` and the SAE).
        sae: The SAE whose codes the cache holds, or None to serve dense only.
        hygiene: Serve the codes as the encoder's hygiene keeps them (True) or with every
            feature (False; pass the cache's ``raw_encoder`` as ``encoder``). Defaults to True.
    """

    def __init__(self, cache: VectorCache, encoder: Encoder, sae: Any, hygiene: bool = True) -> None:
        self.cache, self.encoder, self.sae, self.hygiene = cache, encoder, sae, hygiene
        self.dim = encoder.dim
        self.d_sae = sae.cfg.d_sae if sae is not None else 0

    def identity(self) -> dict[str, Any]:
        return {**self.encoder.identity(), "sae": self.sae.identity() if self.sae is not None else None}

    def _encoded(self, keys: list[str]) -> Encoded:
        dense, sparse = self.cache.get(keys, hygiene=self.hygiene)
        if self.sae is None:
            sparse = sp.csr_matrix((len(keys), 0), dtype=np.float32)
        return Encoded(dense=dense, sparse=sparse, truncated=np.zeros(len(keys), dtype=bool))

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> Encoded:
        return self._encoded([text_key("doc", t) for t in texts])

    def encode_query(self, text: str) -> Encoded:
        return self._encoded([text_key("query", text)])

    def steer(self, query: Encoded, strengths: dict[int, float]) -> Encoded:
        return self.encoder.steer(query, strengths)  # the query's code only: no text is read

    def word_vectors(self, texts: list[str], query: bool = False) -> list[np.ndarray] | None:
        return self.cache.word_vectors(self.encoder, texts, query)  # read by the model once, then from disk


# Retrievers ------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """One question's indexed items with their cached vectors, and the query's."""

    ids: list[str]
    texts: list[str]
    query: str
    dense: np.ndarray
    q_dense: np.ndarray
    sparse: dict[str, sp.csr_matrix]
    q_sparse: dict[str, sp.csr_matrix]


def build_corpus(items: list[dict[str, Any]], query: str, caches: Caches) -> Corpus:
    texts = [m["content"] for m in items]
    keys, q_key = [text_key("doc", t) for t in texts], [text_key("query", query)]
    dense, res = caches.base.get(keys)
    q_dense, q_res = caches.base.get(q_key)
    sparse, q_sparse = {"res": res}, {"res": q_res}
    if caches.emb is not None:
        sparse["emb"] = caches.emb.get(keys)[1]
        q_sparse["emb"] = caches.emb.get(q_key)[1]
    return Corpus([m["id"] for m in items], texts, query, dense, q_dense[0], sparse, q_sparse)


def as_stored_corpus(c: Corpus) -> Corpus:
    """The corpus with its messages' vectors and codes as ``SAEMemory``'s in-process backend stores
    them (int8, ``saememory.arrays.as_stored``); queries are not stored, so they stay float32."""
    sparse = {name: as_stored(c.dense, codes)[1] for name, codes in c.sparse.items()}
    return replace(c, dense=as_stored(c.dense)[0], sparse=sparse)


def ours(signal: str | None, fusion: str) -> Callable[[Corpus], np.ndarray]:
    """Scores of saememory's ``combine`` for one SAE signal (``"res"``/``"emb"``) and fusion."""

    def score(c: Corpus) -> np.ndarray:
        dense = c.dense @ c.q_dense
        sparse = np.zeros_like(dense) if signal is None else (c.sparse[signal] @ c.q_sparse[signal].T).toarray().ravel()
        return combine(dense, sparse, fusion)

    return score


def bm25s_scores(c: Corpus) -> np.ndarray:
    """bm25s with its default tokenizer (lowercase, ``\\w\\w+``) and English stopwords."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(c.texts, stopwords="en", show_progress=False), show_progress=False)
    query = bm25s.tokenize([c.query], stopwords="en", return_ids=False, show_progress=False)[0]
    return retriever.get_scores(query) if query else np.zeros(len(c.texts))


def rank_bm25_scores(c: Corpus) -> np.ndarray:
    """rank_bm25 ``BM25Okapi`` over ``split(" ")`` tokens, no lowercasing (the official baseline)."""
    from rank_bm25 import BM25Okapi

    return BM25Okapi([t.split(" ") for t in c.texts]).get_scores(c.query.split(" "))


def minmax(x: np.ndarray) -> np.ndarray:
    """Per-query min-max normalisation to [0, 1] (all zeros if constant)."""
    span = float(x.max() - x.min()) if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x, dtype=np.float64)


def minmax_bm25_dense(c: Corpus) -> np.ndarray:
    return minmax(bm25s_scores(c)) + minmax(c.dense @ c.q_dense)


def minmax_bm25_dense_res(c: Corpus) -> np.ndarray:
    return minmax_bm25_dense(c) + minmax((c.sparse["res"] @ c.q_sparse["res"].T).toarray().ravel())


def describe_default(d: dict[str, Any]) -> str:
    weights = {s: d[f"{s}_weight"] for s in SIGNALS if d[f"{s}_weight"]}
    names = {"dense": "dense", "sparse": "residual SAE", "bm25": "stemmed BM25" if d.get("bm25_stemmer") else "BM25"}
    parts = [names[s] if w == 1 else f"{w:g}×{names[s]}" for s, w in weights.items()]
    norm = d["normalization"] + (f" over each top {d['normalize_top']}" if d["normalize_top"] else "")
    return f"saememory default ({d['fusion']}, {norm}: {' + '.join(parts)})"


def saememory_default(c: Corpus) -> np.ndarray:
    """``SAEMemory()``'s own ranking, with its default settings, on the cached vectors."""
    d = library_defaults()
    lexical = LexicalIndex(stemmer=d.get("bm25_stemmer"))
    lexical.add(c.texts)
    return default_scores({"dense": c.dense @ c.q_dense, "sparse": (c.sparse["res"] @ c.q_sparse["res"].T).toarray().ravel(),
                           "bm25": lexical.scores(c.query, np.arange(len(c.texts)))})


def from_scores(score: Callable[[Corpus], np.ndarray]) -> Callable[[Corpus, int], list[str]]:
    def rank(c: Corpus, depth: int) -> list[str]:
        order = np.argsort(-np.asarray(score(c), dtype=np.float64), kind="stable")[:depth]
        return [c.ids[i] for i in order]

    return rank


class CachedLangChainEmbeddings:
    """LangChain ``Embeddings`` serving the cached MiniLM vectors."""

    def __init__(self, cache: VectorCache) -> None:
        self.cache = cache

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.cache.get([text_key("doc", t) for t in texts])[0].tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.cache.get([text_key("query", text)])[0][0].tolist()


def langchain_ensemble(caches: Caches) -> Callable[[Corpus, int], list[str]]:
    """LangChain ``EnsembleRetriever`` (RRF, c = 60) over ``BM25Retriever`` and an in-memory vector store."""
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    embeddings = type("CachedEmbeddings", (CachedLangChainEmbeddings, Embeddings), {})(caches.base)

    def rank(c: Corpus, depth: int) -> list[str]:
        metadatas = [{"id": i} for i in c.ids]
        bm25 = BM25Retriever.from_texts(c.texts, metadatas=metadatas, ids=c.ids, k=depth)
        store = InMemoryVectorStore(embedding=embeddings)
        store.add_texts(c.texts, metadatas=metadatas, ids=c.ids)
        ensemble = EnsembleRetriever(retrievers=[bm25, store.as_retriever(search_kwargs={"k": depth})],
                                     weights=[0.5, 0.5], id_key="id")
        return [d.metadata["id"] for d in ensemble.invoke(c.query)][:depth]

    return rank


def llama_index_fusion(caches: Caches) -> Callable[[Corpus, int], list[str]]:
    """LlamaIndex ``QueryFusionRetriever`` (relative score, one query, ``MockLLM``) over BM25 + a vector index."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever
    from pydantic import PrivateAttr

    class CachedEmbedding(BaseEmbedding):
        _cache: Any = PrivateAttr()

        def __init__(self, cache: VectorCache) -> None:
            super().__init__(model_name="cached-all-MiniLM-L6-v2")
            self._cache = cache

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._cache.get([text_key("doc", text)])[0][0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._cache.get([text_key("doc", t) for t in texts])[0].tolist()

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._cache.get([text_key("query", query)])[0][0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

    embed_model = CachedEmbedding(caches.base)

    def rank(c: Corpus, depth: int) -> list[str]:
        nodes = [TextNode(id_=i, text=t) for i, t in zip(c.ids, c.texts)]
        top = min(depth, len(nodes))
        bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=top)
        vector = VectorStoreIndex(nodes, embed_model=embed_model).as_retriever(similarity_top_k=top)
        fusion = QueryFusionRetriever([bm25, vector], llm=MockLLM(), mode="relative_score", num_queries=1,
                                      similarity_top_k=top, use_async=False)
        return [n.node.node_id for n in fusion.retrieve(c.query)][:depth]

    return rank


@dataclass
class Retriever:
    name: str
    group: str  # "ours" or "peer"
    rank: Callable[[Corpus, int], list[str]]
    encoder: str | None  # whose encoding cost it pays: "dense", "res", "emb" or None
    settings: dict[str, Any] | None = None  # for ours: SAEMemory settings, checked against SAEMemory in the latency pass


def retrievers(caches: Caches) -> list[Retriever]:
    """Every retriever of the run, ours first."""
    # combine() is raw dense and sparse, equal weights, no BM25: the SAEMemory check is pinned to that.
    def raw(fusion: str) -> dict[str, Any]:
        return {"fusion": fusion, "normalization": "none", "dense_weight": 1.0, "sparse_weight": 1.0, "bm25_weight": 0.0}

    out = [Retriever("dense (MiniLM)", "ours", from_scores(ours(None, "dense")), "dense", raw("dense"))]
    signals = [("res", "residual SAE")] + ([("emb", "embedding SAE")] if caches.emb is not None else [])
    if caches.base_encoder.sae is None:
        signals = signals[1:]
    for signal, label in signals:
        out.append(Retriever(f"sparse ({label})", "ours", from_scores(ours(signal, "sparse")), signal, raw("sparse")))
    for signal, label in signals:
        for fusion in FUSIONS:
            out.append(Retriever(f"dense + {label}, {fusion}", "ours", from_scores(ours(signal, fusion)), signal, raw(fusion)))
    out += [
        Retriever("BM25 (bm25s, stopwords)", "peer", from_scores(bm25s_scores), None),
        Retriever("BM25 (rank_bm25, official split)", "peer", from_scores(rank_bm25_scores), None),
        Retriever("LangChain EnsembleRetriever (BM25 + dense, RRF)", "peer", langchain_ensemble(caches), "dense"),
        Retriever("LlamaIndex QueryFusionRetriever (BM25 + dense, relative score)", "peer", llama_index_fusion(caches), "dense"),
        Retriever("min-max BM25 + dense", "peer", from_scores(minmax_bm25_dense), "dense"),
    ]
    if caches.base_encoder.sae is not None:
        out.append(Retriever("min-max BM25 + dense + residual SAE", "ours", from_scores(minmax_bm25_dense_res), "res"))
        out.append(Retriever(describe_default(library_defaults()), "ours", from_scores(saememory_default), "res", {}))
    return out


# Questions and splits --------------------------------------------------------------------------


def dev_ids(questions: list[dict[str, Any]], dev_file: Path | None) -> set[str]:
    """The dev split: the dev30 questions plus the strict questions at positions i % 5 in {0, 1}."""
    ids = {q["question_id"] for q in lme.load(dev_file)} if dev_file else set()
    for i, q in enumerate(questions):
        if i % 5 in DEV_POSITIONS and lme.gold_turn_ids(q):
            ids.add(q["question_id"])
    return ids


def declared_split(questions: list[dict[str, Any]], split: str) -> list[tuple[int, dict[str, Any]]]:
    """A whole declared split, ``_abs`` left out: ``"dev"`` (what choices are made on) or
    ``"report"`` (held out: every other question, positions i % 5 in {2, 3, 4})."""
    positions = tuple(DEV_POSITIONS) if split == "dev" else tuple(p for p in range(5) if p not in DEV_POSITIONS)
    return select(questions, split, dev_ids(questions, Path(DEFAULT_DEV)), 5, positions, None)


def select(questions: list[dict[str, Any]], split: str, dev: set[str], every: int, offset: int | tuple[int, ...],
           max_questions: int | None) -> list[tuple[int, dict[str, Any]]]:
    """``(position, question)`` of the run: split, then positions i % every in ``offset``, ``_abs`` left out."""
    offsets = {offset} if isinstance(offset, int) else set(offset)
    chosen = []
    for i, q in enumerate(questions):
        in_dev = q["question_id"] in dev
        if (split == "dev" and not in_dev) or (split == "report" and in_dev):
            continue
        if i % every not in offsets or lme.is_abstention(q):
            continue
        chosen.append((i, q))
    return chosen[:max_questions] if max_questions else chosen


# Evaluation ------------------------------------------------------------------------------------


def evaluate_question(q: dict[str, Any], caches: Caches, rs: list[Retriever], depth: int) -> dict[str, Any]:
    """Both protocols for one question and every retriever."""
    turns, sessions, everything = lme.messages(q, "user"), lme.session_documents(q, "user"), lme.messages(q, "all")
    gold_turns, gold_sessions = lme.gold_turn_ids(q, "user"), lme.gold_session_ids(q)
    gold_all = lme.gold_turn_ids(q, "all")
    corpora = {name: build_corpus(items, q["question"], caches)
               for name, items in (("turn", turns), ("session", sessions), ("all", everything))}
    text_of = dict(zip(corpora["all"].ids, corpora["all"].texts))
    row: dict[str, Any] = {
        "question_id": q["question_id"], "question_type": q["question_type"],
        "n_gold_turns": len(gold_turns), "n_gold_all": len(gold_all), "retrievers": {},
    }
    for r in rs:
        ranked_turns = r.rank(corpora["turn"], depth)
        ranked_sessions = r.rank(corpora["session"], depth)
        ranked_all = r.rank(corpora["all"], POSTER_TOP)
        poster = {}
        for k in POSTER_KS:
            poster[f"recall_all@{k}"] = lme.recall_all(ranked_all, gold_all, k)
            poster[f"chars@{k}"] = lme.context_chars(text_of[i] for i in ranked_all[:k])
        poster["context_precision"] = lme.context_precision(ranked_all[:POSTER_TOP], gold_all)
        deep = r.rank(corpora["all"], BUDGET_DEPTH)
        kept = [deep[i] for i in fit_budget(np.arange(len(deep)), np.array([len(text_of[m]) for m in deep]), POSTER_BUDGET)]
        poster["cp@budget"] = lme.context_precision(kept, gold_all)
        poster["chars@budget"] = lme.context_chars(text_of[i] for i in kept)
        poster["n@budget"] = len(kept)
        row["retrievers"][r.name] = {
            "turn": lme.retrieval_metrics(ranked_turns, gold_turns, OFFICIAL_KS),
            "session": lme.retrieval_metrics(ranked_sessions, gold_sessions, OFFICIAL_KS),
            "turn2session": lme.retrieval_metrics(lme.turns_to_sessions(ranked_turns), gold_sessions, OFFICIAL_KS),
            "poster": poster,
            "top_turns": ranked_turns[:10],
        }
    return row


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median wall time (s) of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure_latency(q: dict[str, Any], caches: Caches, rs: list[Retriever], encoders: dict[str, Encoder],
                    turn: int = 0) -> dict[str, Any]:
    """Poster's protocol latency on one question (both roles indexed, top 10).

    Per question = the real encoding time of the haystack by the retriever's encoder + its own
    index and first query over the cached vectors. Per warm query = the real query encoding +
    a repeated query on the built index. Ours go through ``SAEMemory`` with a cached encoder, and
    their top 10 is checked against the numpy ranking the metrics use. Each encoder is warmed up
    on a few texts first, and the encoders take turns going first (``turn``), so no encoder
    always pays for a cold start.
    """
    items = lme.messages(q, "all")
    texts, query = [m["content"] for m in items], q["question"]
    encode_s, query_s = {None: 0.0}, {None: 0.0}
    names = list(encoders)
    names = names[turn % len(names):] + names[: turn % len(names)]
    for name in names:
        encoders[name].encode_documents(texts[:32])
        encoders[name].encode_query(query)
    for name in names:
        encoder = encoders[name]
        encode_s[name], _ = timed(lambda: encoder.encode_documents(texts))
        query_s[name], _ = timed(lambda: encoder.encode_query(query), repeats=3)
    corpus = build_corpus(items, query, caches)
    out: dict[str, Any] = {"question_id": q["question_id"], "n_messages": len(items), "encode_s": {str(k): v for k, v in encode_s.items()},
                           "retrievers": {}, "agreement": {}}
    for r in rs:
        if r.group == "ours" and r.settings is not None:
            cache = caches.emb if r.encoder == "emb" else caches.base
            sae = None if r.encoder == "dense" else (caches.emb_sae if r.encoder == "emb" else caches.base_encoder.sae)
            encoder = CachedEncoder(cache, caches.base_encoder, sae)

            def build_and_query(encoder=encoder, settings=r.settings):
                memory = SAEMemory(encoder, **{**NO_ADJUSTMENTS, **settings})  # fusion alone, as the numpy path
                memory.add(items)
                return memory, memory.search(query, k=POSTER_TOP)

            build_s, (memory, hits) = timed(build_and_query)
            warm_s, _ = timed(lambda: memory.search(query, k=POSTER_TOP), repeats=3)
            via_memory, via_numpy = [h.id for h in hits], r.rank(as_stored_corpus(corpus), POSTER_TOP)
            out["agreement"][r.name] = sum(a == b for a, b in zip(via_memory, via_numpy)) / max(len(via_numpy), 1)
        else:
            build_s, _ = timed(lambda: r.rank(corpus, POSTER_TOP))
            warm_s = build_s  # peers here rebuild per call; their warm query is bounded by this
        out["retrievers"][r.name] = {
            "question_s": encode_s[r.encoder] + query_s[r.encoder] + build_s,
            "warm_query_s": query_s[r.encoder] + warm_s,
            "warm_is_rebuild": not (r.group == "ours" and r.settings is not None),
        }
    return out


def summarize(rows: list[dict[str, Any]], latencies: list[dict[str, Any]], rs: list[Retriever]) -> dict[str, Any]:
    """Averages per protocol, per question type, and latency ratios to dense only."""
    names = [r.name for r in rs]
    summary: dict[str, Any] = {"official": {}, "poster": {}, "by_type": {}, "latency": {}, "agreement": {}}
    for subset in ("strict", "no_abs"):
        summary["official"][subset] = {}
        for name in names:
            per = [{"question_id": r["question_id"], "n_gold_turns": r["n_gold_turns"],
                    "m": {f"{level}/{m}": v for level in ("turn", "session", "turn2session")
                          for m, v in r["retrievers"][name][level].items()}} for r in rows]
            summary["official"][subset][name] = lme.average(per, key="m", subset=subset)
    with_evidence = [r for r in rows if r["n_gold_all"] > 0]
    for name in names:
        vals = {k: [r["retrievers"][name]["poster"][k] for r in with_evidence] for k in with_evidence[0]["retrievers"][name]["poster"]} if with_evidence else {}
        summary["poster"][name] = {k: float(np.mean(v)) for k, v in vals.items()}
        if vals:
            summary["poster"][name]["chars@10_sd"] = float(np.std(vals["chars@10"], ddof=1)) if len(vals["chars@10"]) > 1 else 0.0
        summary["poster"][name]["n"] = len(with_evidence)
    strict = [r for r in rows if r["n_gold_turns"] > 0]
    types = sorted({r["question_type"] for r in strict})
    for name in names:
        summary["by_type"][name] = {
            t: float(np.mean([r["retrievers"][name]["turn"]["recall_all@10"] for r in strict if r["question_type"] == t]))
            for t in types
        }
    summary["type_counts"] = {t: sum(r["question_type"] == t for r in strict) for t in types}
    summary["run_type_counts"] = {t: sum(r["question_type"] == t for r in rows) for t in lme.QUESTION_TYPES}
    summary["delta_vs_dense"] = {}
    rng = np.random.default_rng(0)
    base = np.array([r["retrievers"][names[0]]["turn"]["recall_all@10"] for r in strict])
    draws = rng.integers(0, len(strict), size=(2000, len(strict))) if strict else None
    for name in names:
        diff = np.array([r["retrievers"][name]["turn"]["recall_all@10"] for r in strict]) - base
        if strict:
            boot = diff[draws].mean(axis=1)
            summary["delta_vs_dense"][name] = [float(diff.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]
    if latencies:
        dense_q = [lat["retrievers"][names[0]]["question_s"] for lat in latencies]
        dense_w = [lat["retrievers"][names[0]]["warm_query_s"] for lat in latencies]
        for name in names:
            qs = [lat["retrievers"][name]["question_s"] for lat in latencies]
            ws = [lat["retrievers"][name]["warm_query_s"] for lat in latencies]
            summary["latency"][name] = {
                "question_s": float(np.mean(qs)), "question_s_sd": float(np.std(qs, ddof=1)) if len(qs) > 1 else 0.0,
                "question_ratio": float(np.mean(qs) / np.mean(dense_q)),
                "warm_query_s": float(np.mean(ws)), "warm_ratio": float(np.mean(ws) / np.mean(dense_w)),
                "warm_is_rebuild": latencies[0]["retrievers"][name]["warm_is_rebuild"],
            }
        for lat in latencies:
            for name, share in lat["agreement"].items():
                summary["agreement"].setdefault(name, []).append(share)
    return summary


# Reporting -------------------------------------------------------------------------------------


def plot(summary: dict[str, Any], rs: list[Retriever], path: Path) -> None:
    """recall_all@k against mean context length (chars), k = 1, 3, 5, 10, one line per retriever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 6.5))
    markers = "os^vD<>phX*P"
    for i, r in enumerate(rs):
        p = summary["poster"][r.name]
        if "chars@1" not in p:
            continue
        xs = [p[f"chars@{k}"] for k in POSTER_KS]
        ys = [p[f"recall_all@{k}"] for k in POSTER_KS]
        ax.plot(xs, ys, marker=markers[i % len(markers)], linestyle="-" if r.group == "ours" else "--",
                color=plt.get_cmap("tab20")(i % 20), label=r.name, alpha=0.85)
    ax.set_xlabel("mean context length (characters), top k = 1, 3, 5, 10")
    ax.set_ylabel("recall_all@k (all evidence turns retrieved; both roles indexed)")
    ax.set_title(f"LongMemEval-S, poster's protocol, n = {summary['poster'][rs[0].name]['n']} questions "
                 "(solid: saememory, dashed: peers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(x: float) -> str:
    return f"{x:.3f}"


def markdown(summary: dict[str, Any], meta: dict[str, Any], rs: list[Retriever], plot_name: str) -> str:
    names = [r.name for r in rs]
    strict = summary["official"]["strict"]
    lines = [
        MD_START,
        "## LongMemEval retrieval: saememory side by side with peers",
        "",
        f"- Date: {meta['date']}; commit {meta['commit']}",
        f"- Data: `{meta['data']}` (sha256 of the file `{meta['data_sha256'][:16]}…`); {meta['selection']}",
        f"- Questions: {meta['n_questions']} run; official protocol strict average over {strict[names[0]]['n']} "
        f"(at least one gold user turn), no-abs average over {summary['official']['no_abs'][names[0]]['n']}; "
        f"poster's protocol over {summary['poster'][names[0]]['n']} (at least one evidence turn of either role).",
        "- Question types in the run: " + ", ".join(f"{t} {n}" for t, n in summary["run_type_counts"].items())
        + " (the file groups questions by type, so a run cut short by `--max-questions` misses the later types;"
        " a larger `--every` spreads a small run over all of them).",
        f"- Machine: {meta['machine']}",
        f"- Encoders: {meta['encoders']}",
        f"- Command: `{meta['command']}`",
        f"- Encoding: {meta['n_encoded']} texts encoded in this run ({meta['encode_s']:.0f} s), the rest from the cache.",
        "",
        "Splits. **dev** = the 30 questions of `longmemeval_s_cleaned_dev30.json.gz` plus the strict questions "
        "at positions i (0-based, order of the 499-question file) with i % 5 in {0, 1}, which chose layer 4 and max "
        "pooling (REFERENCE §10). **report** = every other question. The run above is a fixed subset of one split.",
        "",
        f"Every retriever ranks the same haystack with the same cached vectors; framework peers fuse top lists of "
        f"depth {meta['depth']} (official protocol) or {POSTER_TOP} (poster's). `dense + X, fusion` is "
        "`saememory.scoring.combine(dense, sparse, fusion)` with default weights.",
        "",
        "### (a) Official protocol: user turns indexed, `_abs` skipped; strict average",
        "",
        "| retriever | turn R_any@5 | turn R_all@5 | turn R_all@10 | turn nDCG@10 | sess R_any@5 | sess R_all@5 | sess R_all@10 | sess nDCG@10 | t→s R_all@5 | t→s R_all@10 | t→s nDCG@10 | Δ turn R_all@10 vs dense [95% CI] |",
        "|---|" + "---:|" * 12,
    ]
    for name in names:
        m = strict[name]
        d = summary["delta_vs_dense"].get(name, [0, 0, 0])
        cells = [m["turn/recall_any@5"], m["turn/recall_all@5"], m["turn/recall_all@10"], m["turn/ndcg_any@10"],
                 m["session/recall_any@5"], m["session/recall_all@5"], m["session/recall_all@10"], m["session/ndcg_any@10"],
                 m["turn2session/recall_all@5"], m["turn2session/recall_all@10"], m["turn2session/ndcg_any@10"]]
        lines.append(f"| {name} | " + " | ".join(fmt(c) for c in cells) + f" | {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}] |")
    lines += [
        "",
        "sess = a session-level index (each session's user turns joined); t→s = sessions from the turn ranking "
        "(turn suffix stripped, first appearance kept). @1 values and recall_any everywhere are in the JSON.",
        "",
        "No-abs average (every non-abstention question; a question without user-side evidence scores R_all 1, "
        "R_any 0 and nDCG 0, as the official code):",
        "",
        "| retriever | turn R_all@10 | turn nDCG@10 | sess R_all@5 | sess nDCG@10 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        m = summary["official"]["no_abs"][name]
        lines.append(f"| {name} | {fmt(m['turn/recall_all@10'])} | {fmt(m['turn/ndcg_any@10'])} | "
                     f"{fmt(m['session/recall_all@5'])} | {fmt(m['session/ndcg_any@10'])} |")
    lat_n = len(meta["latency_questions"])
    lines += [
        "",
        f"### (b) Poster's protocol: both roles indexed, top {POSTER_TOP}",
        "",
        f"Context precision = share of questions whose top {POSTER_TOP} holds all evidence turns (either role). "
        f"Latency measured on {lat_n} question(s) ({', '.join(meta['latency_questions']) or 'none'}): per question = "
        "real encoding of the haystack by the retriever's encoder + its index build and first query; warm query = "
        "real query encoding + a repeated search (peers marked * rebuild their index per call here, so theirs "
        "is an upper bound). Ratios are to dense only in this run.",
        "",
        f"Budget: the best of the top {BUDGET_DEPTH} that fit in the poster's mean context of {POSTER_BUDGET:,} characters, "
        "in rank order, skipping a message that would overflow (`saememory.scoring.fit_budget`, `SAEMemory.search(max_chars=...)`).",
        "",
        "| retriever | context precision | context chars (mean ± sd) | CP within budget | chars (messages) within budget | "
        "s / question | ratio | warm query (ms) | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        p = summary["poster"][name]
        lat = summary["latency"].get(name)
        lat_cells = (f"{lat['question_s']:.1f} ± {lat['question_s_sd']:.1f} | {lat['question_ratio']:.2f} | "
                     f"{lat['warm_query_s'] * 1000:.0f}{'*' if lat['warm_is_rebuild'] else ''} | {lat['warm_ratio']:.2f}"
                     ) if lat else "– | – | – | –"
        lines.append(f"| {name} | {fmt(p['context_precision'])} | {p['chars@10']:.0f} ± {p['chars@10_sd']:.0f} | "
                     f"{fmt(p['cp@budget'])} | {p['chars@budget']:.0f} ({p['n@budget']:.1f}) | {lat_cells} |")
    if summary["agreement"]:
        worst = min(min(v) for v in summary["agreement"].values())
        lines += ["", f"Check: for ours, the top {POSTER_TOP} through `SAEMemory` and through the numpy scoring (of the "
                      f"int8 values it stores) agreed position by position on at least {worst:.0%} of places on the "
                      "latency questions."]
    counts = summary["type_counts"]
    types = list(counts)
    lines += [
        "",
        "### Per question type: turn R_all@10, official protocol, strict",
        "",
        "| retriever | " + " | ".join(f"{t} (n={counts[t]})" for t in types) + " |",
        "|---|" + "---:|" * len(types),
    ]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(fmt(summary["by_type"][name][t]) for t in types) + " |")
    lines += [
        "",
        f"![recall_all@k vs context length]({plot_name})",
        "",
        "Notes: blank turns are not indexed and a session repeated inside one haystack is indexed once "
        "(both never evidence; see `saememory.eval.longmemeval`). The LlamaIndex BM25 is its own default (bm25s with "
        "an English stemmer and stopwords); LangChain's `BM25Retriever` is rank_bm25 over `str.split()`, its default. "
        "Question `gpt4_7a0daae1` is missing from the 499-question file (PROVENANCE.md).",
        MD_END,
    ]
    return "\n".join(lines) + "\n"


# Main ------------------------------------------------------------------------------------------


def sae_label(sae: Any) -> str:
    """An SAE's name and the start of its weights' sha256, as BENCHMARKS.md shows it."""
    return "none" if sae is None else f"`{sae.name}` (weights sha256 {sae.sha256[:12]}…)"


def resolve_sae(value: str) -> str | None:
    return None if value.lower() == "none" else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LongMemEval file; default the 499-question S file")
    parser.add_argument("--dev-data", default=str(DEFAULT_DEV), help="dev30 file defining the dev split, or 'none'")
    parser.add_argument("--split", choices=("report", "dev", "all"), default="report", help="default report")
    parser.add_argument("--every", type=int, default=1, help="keep positions i with i %% every == offset; default 1")
    parser.add_argument("--offset", type=int, default=0, help="see --every; default 0")
    parser.add_argument("--max-questions", type=int, default=None, help="at most this many (after the split); default all")
    parser.add_argument("--depth", type=int, default=50, help="ranked list length per retriever (official protocol); default 50")
    parser.add_argument("--sae-residual", default=DEFAULT_SAE, help=f"residual SAE (name, dir or 'none'); default {DEFAULT_SAE}")
    parser.add_argument("--sae-embedding", default=DEFAULT_EMB_SAE, help=f"embedding SAE (name, dir or 'none'); default {DEFAULT_EMB_SAE}")
    parser.add_argument("--latency-questions", type=int, default=3, help="questions timed end to end; default 3")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0 keeps torch's default); 1 is far steadier on a shared, loaded machine")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache", help="default benchmarks/.cache")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks", help="results JSON and plot; default benchmarks/")
    parser.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md", help="markdown to update, or 'none'; default BENCHMARKS.md")
    parser.add_argument("--rows", type=Path, default=ROOT / "runs" / "longmemeval_rows.jsonl", help="per-question rows (JSONL)")
    args = parser.parse_args(argv)
    if args.every <= 0 or not 0 <= args.offset < args.every:
        parser.error(f"--every must be positive and 0 <= --offset < --every, got every={args.every}, offset={args.offset}.")
    if args.depth < max(OFFICIAL_KS + POSTER_KS):
        parser.error(f"--depth must be at least {max(OFFICIAL_KS + POSTER_KS)}, got {args.depth}.")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    questions = lme.load(args.data)
    dev_file = None if args.dev_data.lower() == "none" else Path(args.dev_data)
    dev = dev_ids(questions, dev_file) if args.split != "all" else set()
    chosen = select(questions, args.split, dev, args.every, args.offset, args.max_questions)
    if not chosen:
        sys.exit(f"No questions selected (split={args.split}, every={args.every}, offset={args.offset}); widen the selection.")
    print(f"{len(chosen)} questions: split={args.split}, positions i % {args.every} == {args.offset}, _abs left out.")

    res_name, emb_name = resolve_sae(args.sae_residual), resolve_sae(args.sae_embedding)
    base = Encoder(EncoderConfig(sae=res_name, pooling="max"))
    emb_encoder = Encoder(EncoderConfig(sae=emb_name), model=base.model) if emb_name else None
    if emb_encoder is not None and emb_encoder.source != "embedding":
        sys.exit(f"--sae-embedding {emb_name!r} reads {emb_encoder.sae.cfg.hook_name!r}; it must read 'sentence_embedding'.")
    if base.sae is not None and base.source != "residual":
        sys.exit(f"--sae-residual {res_name!r} reads {base.sae.cfg.hook_name!r}; it must read 'hidden_states.<layer>'.")
    caches = Caches(args.cache, base, emb_encoder.sae if emb_encoder else None)

    n_encoded, start = 0, time.perf_counter()
    for _, q in tqdm(chosen, desc="Encoding haystacks (cached)", unit="question"):
        docs = [m["content"] for m in lme.messages(q, "all")] + [d["content"] for d in lme.session_documents(q, "user")]
        n_encoded += caches.fill(docs, [q["question"]])
    encode_s = time.perf_counter() - start

    rs = retrievers(caches)
    rows = [evaluate_question(q, caches, rs, args.depth)
            for _, q in tqdm(chosen, desc="Retrieving", unit="question")]
    args.rows.parent.mkdir(parents=True, exist_ok=True)
    with open(args.rows, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")

    encoders = {"dense": Encoder(EncoderConfig(sae=None), model=base.model)}
    if base.sae is not None:
        encoders["res"] = base
    if emb_encoder is not None:
        encoders["emb"] = emb_encoder
    latencies = [measure_latency(q, caches, rs, encoders, turn)
                 for turn, (_, q) in enumerate(tqdm(chosen[: args.latency_questions], desc="Timing", unit="question"))]

    summary = summarize(rows, latencies, rs)
    data_path = args.data.resolve()
    try:
        shown = os.path.relpath(data_path, ROOT)
    except ValueError:
        shown = str(data_path)
    meta = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "data": shown,
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "selection": f"split `{args.split}`, positions i % {args.every} == {args.offset}"
                     + (f", first {args.max_questions}" if args.max_questions else "") + ", `_abs` left out",
        "n_questions": len(chosen),
        "question_ids": [q["question_id"] for _, q in chosen],
        "machine": machine() + f", torch threads {torch.get_num_threads()}",
        "encoders": f"all-MiniLM-L6-v2; residual SAE {sae_label(base.sae)} (max pooling); "
                    f"embedding SAE {sae_label(emb_encoder.sae if emb_encoder else None)} (codes from the cached dense vectors)",
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "n_encoded": n_encoded,
        "encode_s": encode_s,
        "depth": args.depth,
        "latency_questions": [lat["question_id"] for lat in latencies],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = args.out_dir / "longmemeval_recall_vs_context.png"
    plot(summary, rs, plot_path)
    (args.out_dir / "longmemeval_results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "latency": latencies}, indent=1) + "\n")
    if str(args.md).lower() != "none":
        plot_name = os.path.relpath(plot_path, args.md.resolve().parent)
        write_section(args.md, markdown(summary, meta, rs, plot_name), MD_START, MD_END)
        print(f"Updated {args.md}")
    strict = summary["official"]["strict"]
    for r in rs:
        m = strict[r.name]
        print(f"{r.name:66s} turn R_all@10 {m['turn/recall_all@10']:.3f}  sess R_all@5 {m['session/recall_all@5']:.3f}  "
              f"CP {summary['poster'][r.name]['context_precision']:.3f}")
    return {"meta": meta, "summary": summary}


if __name__ == "__main__":
    main()
