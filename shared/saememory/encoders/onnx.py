"""The lean default path: the bundled all-MiniLM-L6-v2 and the SAE run by ONNX Runtime.

Importing sentence-transformers (and, through it, torch and most of transformers) takes about
six seconds of a fresh process; ONNX Runtime and the ``tokenizers`` library take a tenth of a
second, and run the same model faster on a CPU. ``Encoder`` uses this path for the bundled
model (``EncoderConfig(runtime="auto")``, the default) and sentence-transformers for any other.

- ``OnnxModel``: a sentence-transformers model of the shape Transformer -> mean pooling ->
  normalise, as ONNX. Its ONNX file is exported once, on first use, from the model's own
  weights (this imports torch and transformers, about ten seconds) into the cache folder
  ``$SAEMEMORY_CACHE`` (default ``~/.cache/saememory``), and read from there ever after.
  The export reproduces the model to within 1e-6 (``tests/encoders/test_onnx.py``).
- ``SAERunner``: the SAE's encoder (matrix product, bias, TopK or ReLU) as a small ONNX graph
  built in memory from the SAE's arrays; KronSAE runs in torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the exported graph changes; old files are then ignored
OPSET = 17
CACHE_ENV = "SAEMEMORY_CACHE"


def cache_dir() -> Path:
    """Where exported ONNX models live: ``$SAEMEMORY_CACHE``, else ``~/.cache/saememory``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "saememory")


def session_options(threads: int) -> Any:
    """ONNX Runtime options: ``threads`` intra-op threads that sleep rather than spin when idle.

    Spinning threads are what collapse under load: on a busy machine they fight the other
    processes for the cores. One thread is the default (``EncoderConfig.threads``).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    return options


@dataclass
class Forward:
    """One batch through a model, as numpy.

    Attributes:
        ids: (b, s) token ids, padded.
        attention: (b, s) bool, True for tokens (special ones included), False for padding.
        real: (b, s) bool, True for tokens that are neither special nor padding.
        states: (layers + 1, b, s, hidden) float32, every layer's token states (0: embeddings).
        embedding: (b, dim) float32, the sentence embeddings, L2-normalised.
        truncated: (b,) bool, True where the text exceeded the model's window.
    """

    ids: np.ndarray
    attention: np.ndarray
    real: np.ndarray
    states: np.ndarray
    embedding: np.ndarray
    truncated: np.ndarray


class OnnxModel:
    """A sentence-transformers model (Transformer, mean pooling, normalise) run by ONNX Runtime.

    Args:
        path: The sentence-transformers model folder (``model.safetensors``, ``tokenizer.json``,
            ``modules.json``).
        threads: ONNX Runtime intra-op threads. Defaults to 1.
        quantize: Run an int8 dynamically quantised copy (about twice as fast, slightly
            different vectors). Defaults to False.

    Raises:
        ValueError: If the folder is not a model of that shape.
    """

    def __init__(self, path: str | Path, threads: int = 1, quantize: bool = False) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.threads, self.quantize = threads, quantize
        settings = _check_model_folder(self.path)
        self.max_seq_length = int(settings["max_seq_length"])
        config = json.loads((self.path / "config.json").read_text())
        self.num_layers, self.hidden_size = int(config["num_hidden_layers"]), int(config["hidden_size"])
        self.dim = self.hidden_size  # mean pooling keeps the width
        self._tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)
        self._tokenizer.no_padding()  # each text runs alone (see forward)
        self.special_ids = sorted(i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special)
        self.onnx_path = exported(self.path, quantize)
        _check_sha256(self.onnx_path)
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # a damaged cache file: say which, and how to fix it
            raise RuntimeError(f"ONNX Runtime cannot read {self.onnx_path} ({err}). Delete the file; it is "
                               "exported again on next use.") from err
        self._hf_tokenizer = None

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, threads={self.threads}, quantize={self.quantize})"

    @property
    def tokenizer(self) -> Any:
        """The Hugging Face fast tokenizer of the model (loaded on first use, with transformers)."""
        if self._hf_tokenizer is None:
            from transformers import AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        return self._hf_tokenizer

    def pieces(self, ids: list[int]) -> list[str]:
        """Token strings of ids (wordpieces)."""
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def count_tokens(self, text: str) -> int:
        """Real tokens of ``text``: special ones (``[UNK]`` too) left out, as ``forward``'s ``real``."""
        return sum(i not in self.special_ids for i in self._tokenizer.encode(text, add_special_tokens=False).ids)

    def forward(self, texts: list[str]) -> Forward:
        """Tokenises and runs a batch of texts, each on its own, and pads the results together.

        One text at a time is as fast on a CPU as padded batches (measured: 2.5 s against 3.1 s
        for 600 messages, int8), and it makes a text's vectors depend on the text alone: an int8
        model quantises its activations per run, so in a batch they would depend on the others.
        """
        encodings = self._tokenizer.encode_batch(texts)
        n, width = len(texts), max((len(e.ids) for e in encodings), default=0)
        ids = np.zeros((n, width), dtype=np.int64)
        attention = np.zeros((n, width), dtype=bool)
        states = np.zeros((self.num_layers + 1, n, width, self.hidden_size), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            attention[row, :length] = True
            feed = {"input_ids": ids[row : row + 1, :length], "attention_mask": np.ones((1, length), np.int64)}
            states[:, row, :length] = self.session.run(None, feed)[0][:, 0]
        mask = attention.astype(np.float32)[..., None]
        pooled = (states[-1] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        embedding = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        real = attention & ~np.isin(ids, self.special_ids)
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        return Forward(ids=ids, attention=attention, real=real, states=states, embedding=embedding, truncated=truncated)


def _check_model_folder(path: Path) -> dict[str, Any]:
    """The model's sentence-transformers settings, after checking it is Transformer -> mean -> normalise."""
    try:
        modules = json.loads((path / "modules.json").read_text())
        pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
        settings = json.loads((path / "sentence_bert_config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a sentence-transformers model folder ({err}); use runtime='torch'.") from None
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    modes = [key for key, on in pooling.items() if key.startswith("pooling_mode") and on]
    if kinds != ["Transformer", "Pooling", "Normalize"] or modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"The ONNX runtime runs models made of Transformer, mean Pooling and Normalize; {path} has "
                         f"modules {kinds} and pooling {modes}. Use EncoderConfig(runtime='torch').")
    return settings


def exported(path: Path, quantize: bool = False) -> Path:
    """The ONNX file of the model folder ``path``, exported into ``cache_dir()`` if not there yet.

    The file name carries a hash of the weights and config, so another model gets another file.
    One process exports at a time (a lock file in the cache; the others wait and then read its
    result); files are written under a temporary name and renamed, so a killed export never
    leaves a half-written model, and each is stored with its sha256 (``<file>.sha256``), which
    ``OnnxModel`` checks on every load.

    Raises:
        OSError: If the cache folder cannot be made or written; the message names
            ``$SAEMEMORY_CACHE``.
    """
    digest = hashlib.sha256((file_sha256(path / "model.safetensors") + file_sha256(path / "config.json")).encode())
    full = cache_dir() / "onnx" / f"{digest.hexdigest()[:16]}-v{EXPORT_VERSION}.onnx"
    int8 = full.with_name(full.stem + "-int8.onnx")
    target = int8 if quantize else full
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(target.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise OSError(f"Cannot write the ONNX model cache {target.parent} ({err}). Set {CACHE_ENV} to a writable "
                      "folder, or use EncoderConfig(runtime='torch').") from err
    try:
        _lock(lock)
        if target.is_file():  # another process made it while this one waited
            return target
        for stale in target.parent.glob(".*.tmp"):  # left by a killed export: no export runs now
            stale.unlink(missing_ok=True)
        if not full.is_file():
            logger.warning("Exporting %s to ONNX into %s: once per machine, about ten seconds (set %s to move "
                           "the cache).", path, full, CACHE_ENV)
            with _temporary(full) as tmp:
                _export(path, tmp)
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logger.info("Quantising %s to int8 into %s (once).", full.name, int8)
            with _temporary(int8) as tmp:
                # ONNX Runtime writes a scratch copy beside its input: the lock keeps that private too.
                quantize_dynamic(str(full), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                                 extra_options={"MatMulConstBOnly": True})
        return target
    finally:
        os.close(lock)  # closing releases the lock


def _lock(fd: int) -> None:
    """Waits for the cache's export lock (a no-op where the platform or file system has none)."""
    try:
        import fcntl
    except ImportError:  # Windows: exports may race; each is still written atomically
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        pass  # a file system without locks: as without fcntl


class _temporary:
    """A temporary path beside ``target``, renamed onto it on success (with its sha256 beside it,
    readable as the umask allows) and removed on failure."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp")
        os.close(handle)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.tmp.unlink(missing_ok=True)
            return
        os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp makes 0600: other users of a shared cache must read it
        checksum = self.target.with_name(self.target.name + ".sha256")
        checksum.write_text(file_sha256(self.tmp) + "\n")
        os.replace(self.tmp, self.target)


def _umask() -> int:
    """The process umask, read without setting it where Linux allows (setting it races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_sha256(path: Path) -> None:
    """Raises RuntimeError unless ``path`` matches the sha256 written beside it at export."""
    checksum = path.with_name(path.name + ".sha256")
    try:
        expected, found = checksum.read_text().strip(), file_sha256(path)
    except OSError as err:
        raise RuntimeError(f"Cannot read the cached model {path} or its checksum ({err}). Delete both and they are "
                           f"exported again on next use; for another user's cache, set {CACHE_ENV} to a folder of "
                           "your own.") from None
    if found != expected:
        raise RuntimeError(f"{path} does not match its sha256 ({checksum}): the file was changed or damaged. Delete "
                           "it; it is exported again on next use.")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read once per process while its size and modification time stay."""
    status = os.stat(path)
    return _sha256_of(Path(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export(path: Path, out: Path) -> None:
    """Exports the transformer of ``path`` to ``out``: ids and mask in, every layer's states out."""
    import warnings

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), attn_implementation="eager").eval()  # eager: the mask stays in the graph

    class AllStates(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=torch.zeros_like(input_ids), output_hidden_states=True)
            return torch.stack(out.hidden_states, 0)

    ids = torch.randint(1000, 2000, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:], mask[2, 2:] = 0, 0  # padding in the example, so no branch that skips the mask is traced
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(AllStates(), (ids, mask), str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["states"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"},
                                        "states": {1: "batch", 2: "tokens"}})


class SAERunner:
    """An SAE's encoder as an ONNX Runtime session: vectors in, feature activations out.

    TopK SAEs return ``(values, indices)``, each (n, k); ReLU and JumpReLU SAEs return
    ``(values, None)`` with values (n, d_sae). KronSAE runs in torch (``SparseAutoencoder.encode``).
    The results equal ``SparseAutoencoder.encode`` to float rounding.

    Args:
        sae: A ``SparseAutoencoder``.
        threads: Intra-op threads. Defaults to 1.
    """

    def __init__(self, sae: Any, threads: int = 1) -> None:
        self.sae = sae
        self.session = None if sae.cfg.architecture == "kronsae" else self._session(sae, threads)

    @staticmethod
    def _session(sae: Any, threads: int) -> Any:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        cfg, arrays = sae.cfg, sae.arrays
        weight, bias = arrays["W_enc"], arrays["b_enc"]
        if cfg.apply_b_dec_to_input:  # (x - b_dec) W + b = x W + (b - b_dec W)
            bias = bias - arrays["b_dec"] @ weight
        if "dec_norm" in arrays:  # rescaling by decoder norms folds into the columns
            weight, bias = weight * arrays["dec_norm"], bias * arrays["dec_norm"]
        init = [numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), "W"),
                numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), "b")]
        nodes = [helper.make_node("MatMul", ["x", "W"], ["xW"]), helper.make_node("Add", ["xW", "b"], ["pre"])]
        n = "n"
        if cfg.architecture == "topk":
            init.append(numpy_helper.from_array(np.array([cfg.k], np.int64), "k"))
            nodes += [helper.make_node("TopK", ["pre", "k"], ["top", "indices"], axis=-1, largest=1, sorted=0),
                      helper.make_node("Relu", ["top"], ["values"])]
            outputs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, [n, cfg.k]),
                       helper.make_tensor_value_info("indices", TensorProto.INT64, [n, cfg.k])]
        else:
            nodes.append(helper.make_node("Relu", ["pre"], ["relu"]))
            last = "relu"
            if cfg.architecture == "jumprelu":
                init.append(numpy_helper.from_array(arrays["threshold"], "threshold"))
                nodes += [helper.make_node("Greater", ["pre", "threshold"], ["open"]),
                          helper.make_node("Cast", ["open"], ["gate"], to=TensorProto.FLOAT),
                          helper.make_node("Mul", ["relu", "gate"], ["gated"])]
                last = "gated"
            nodes.append(helper.make_node("Identity", [last], ["values"]))
            outputs = [helper.make_tensor_value_info("values", TensorProto.FLOAT, [n, cfg.d_sae])]
        graph = helper.make_graph(nodes, "sae", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, cfg.d_in])],
                                  outputs, init)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                    providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Activations of ``x`` (n, d_in) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.session is None:
            import torch

            return self.sae.encode(torch.from_numpy(x)).numpy(), None
        if x.shape[0] == 0:
            width = self.sae.cfg.k if self.sae.cfg.architecture == "topk" else self.sae.cfg.d_sae
            empty = np.zeros((0, width), np.float32)
            return (empty, np.zeros((0, width), np.int64)) if self.sae.cfg.architecture == "topk" else (empty, None)
        out = self.session.run(None, {"x": x})
        return (out[0], out[1]) if len(out) == 2 else (out[0], None)

    def dense(self, x: np.ndarray) -> np.ndarray:
        """Activations of ``x`` (n, d_in) as a dense (n, d_sae) array."""
        values, indices = self(x)
        if indices is None:
            return values
        out = np.zeros((x.shape[0], self.sae.cfg.d_sae), np.float32)
        np.put_along_axis(out, indices, values, axis=1)
        return out


def pool(values: np.ndarray, indices: np.ndarray | None, owner: np.ndarray, n: int, d_sae: int,
         pooling: str) -> np.ndarray:
    """Token activations pooled per text: (n, d_sae), the element-wise max or mean over its tokens.

    Args:
        values: (tokens, k) with ``indices`` (TopK), or (tokens, d_sae) with ``indices`` None.
        owner: (tokens,) the text of each token, ascending.
        n: Number of texts; a text without tokens gets a zero row.
        pooling: ``"max"`` or ``"mean"``.
    """
    out = np.zeros((n, d_sae), np.float32)
    if owner.size == 0:
        return out
    if indices is not None:  # activations are >= 0 and absent features are 0, so max and sum start at 0
        flat = (owner[:, None] * d_sae + indices).ravel()
        (np.maximum if pooling == "max" else np.add).at(out.reshape(-1), flat, values.ravel())
    else:
        present, starts = np.unique(owner, return_index=True)
        out[present] = (np.maximum if pooling == "max" else np.add).reduceat(values, starts, axis=0)
    if pooling == "mean":
        out /= np.maximum(np.bincount(owner, minlength=n), 1)[:, None]
    return out
