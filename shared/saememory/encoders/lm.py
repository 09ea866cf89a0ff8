"""The poster's stack: SAE codes of a causal LM's residual stream, plus a sentence-transformers dense side.

``LMEncoder`` implements ``EncoderProtocol`` (``saememory.encoders.base``):

- sparse side (``LMResidualEncoder``): a causal LM from transformers (e.g. ``google/gemma-2b-it``)
  reads each message with BOS prepended; the SAE's ``hook_name`` (``blocks.<L>.hook_resid_post``
  or ``blocks.<L>.hook_resid_pre``, TransformerLens names) picks the decoder block whose output
  (or input) is captured, and the forward pass stops there, so blocks after ``L`` never run. Every
  token but BOS and padding is encoded by the SAE, the codes are pooled per message (``mean``, the
  poster's choice, or ``max``) and L2-normalised.
- dense side: saememory's ``Encoder`` with ``sae=None`` (e.g. Nomic through sentence-transformers;
  ``saememory.encoders.sentence_transformer``).

``blocks.<L>.hook_resid_post`` is the output of block ``L``: transformers' ``hidden_states[L + 1]``
for every block but the last (whose ``hidden_states`` entry has the final norm applied; the hook
reads the block output itself, as TransformerLens does).

The SAE comes from the Hub through ``sae_lens.SAE.from_pretrained`` (sae_lens is imported only
then, and the SAE is converted to saememory's torch ``SparseAutoencoder``), or from a local
directory in sae-lens' format (no sae_lens import). Message codes are cached by text hash and
encoder identity, in memory and optionally in a directory of ``.npz`` files (no pickle), so a
message shared by many questions is encoded once.

    >>> encoder = poster_encoder(device="cuda", dtype="bfloat16")  # Gemma-2B-it + jb SAE + Nomic v1
    >>> encoder = preset_encoder("gemma-scope-2b-l12", "nomic-v1.5", pooling="max")
    >>> memory = SAEMemory(encoder)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from saememory.backends.snapshot import replace_file
from saememory.config import DictConfig
from saememory.encoders.base import POOLINGS, Encoded
from saememory.encoders.sentence_transformer import Encoder, EncoderConfig
from saememory.interpret.labels import load_labels
from saememory.interpret.steering import steer_code
from saememory.sae import SAEConfig, SparseAutoencoder

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(post|pre)$")
# Where transformers keeps the blocks: Gemma, Llama, Mistral, Qwen (and their base models), GPT-2, Pythia.
_BLOCK_PATHS = ("model.layers", "layers", "model.language_model.layers", "transformer.h", "h", "gpt_neox.layers")

# Sparse side: a causal LM and a residual SAE of it (ids checked against sae-lens'
# pretrained_saes.yaml by tests/encoders/test_lm.py).
SPARSE_PRESETS: dict[str, dict[str, Any]] = {
    # The poster: Gemma 1 2B instruction-tuned, Joseph Bloom's 16k ReLU SAE on block 12's output.
    "gemma-2b-it-res-jb": {
        "lm": "google/gemma-2b-it",
        "sae_release": "gemma-2b-it-res-jb",
        "sae_id": "blocks.12.hook_resid_post",
        "neuronpedia_id": "gemma-2b-it/12-res-jb",
        "pooling": "mean",
    },
    # Gemma Scope: Gemma 2 2B base, the canonical 16k JumpReLU SAE on block 12's output.
    "gemma-scope-2b-l12": {
        "lm": "google/gemma-2-2b",
        "sae_release": "gemma-scope-2b-pt-res-canonical",
        "sae_id": "layer_12/width_16k/canonical",
        "neuronpedia_id": "gemma-2-2b/12-gemmascope-res-16k",
        "pooling": "mean",
    },
}
# Dense side: a sentence-transformers model and its task prefixes.
DENSE_PRESETS: dict[str, dict[str, Any]] = {
    # The poster's exact choice: Nomic v1 without the task prefixes Nomic recommends.
    "nomic-v1": {
        "dense_model": "nomic-ai/nomic-embed-text-v1",
        "query_prefix": "",
        "document_prefix": "",
        "trust_remote_code": True,
    },
    # Nomic v1.5 used as its authors recommend.
    "nomic-v1.5": {
        "dense_model": "nomic-ai/nomic-embed-text-v1.5",
        "query_prefix": "search_query: ",
        "document_prefix": "search_document: ",
        "trust_remote_code": True,
    },
}


@dataclass
class LMEncoderConfig(DictConfig):
    """How ``LMEncoder`` encodes messages. The defaults are the poster's stack.

    Args:
        lm: A transformers causal LM name or local path. Defaults to ``"google/gemma-2b-it"``.
        sae_release: A sae-lens release loaded from the Hub with ``sae_lens.SAE.from_pretrained``,
            or None to read ``sae_id`` as a local directory in sae-lens' format. Defaults to
            ``"gemma-2b-it-res-jb"``.
        sae_id: The SAE id within the release, or the local directory when ``sae_release`` is
            None. Defaults to ``"blocks.12.hook_resid_post"``.
        neuronpedia_id: ``"<modelId>/<layer>"`` of the SAE on Neuronpedia, used to pick its records
            out of a labels export. Defaults to None: the id in the SAE's metadata.
        labels: A Neuronpedia explanations export (JSON list of records with ``modelId``,
            ``layer``, ``index``, ``description``) or a saememory labels file. Defaults to None.
        pooling: ``"mean"`` (the poster's choice) or ``"max"`` over a message's token codes.
            Defaults to ``"mean"``.
        max_tokens: Tokens per message read by the LM, BOS included; longer messages are
            truncated and flagged. Defaults to 1024 (the context the public Gemma SAEs were
            trained on).
        dense_model: The sentence-transformers model of the dense side. Defaults to
            ``"nomic-ai/nomic-embed-text-v1"``.
        query_prefix: Prepended to queries on the dense side only. Defaults to ``""``.
        document_prefix: Prepended to messages on the dense side only. Defaults to ``""``.
        trust_remote_code: Passed to sentence-transformers (Nomic needs it). Defaults to True.
        batch_size: Messages per forward pass, on both sides. Defaults to 8.
        device: ``"auto"`` (cuda, else mps, else cpu), ``"cuda"``, ``"mps"`` or ``"cpu"``; a
            ``"cuda:1"`` style index is accepted. Defaults to ``"auto"``.
        dtype: The LM's weights: ``"auto"`` (bfloat16 on cuda, else float32), ``"bfloat16"``,
            ``"float16"`` or ``"float32"``. SAE codes are always computed in float32. Defaults to
            ``"auto"``.
    """

    settings_name: ClassVar[str] = "LM encoder"

    lm: str = "google/gemma-2b-it"
    sae_release: str | None = "gemma-2b-it-res-jb"
    sae_id: str = "blocks.12.hook_resid_post"
    neuronpedia_id: str | None = None
    labels: str | None = None
    pooling: str = "mean"
    max_tokens: int = 1024
    dense_model: str = "nomic-ai/nomic-embed-text-v1"
    query_prefix: str = ""
    document_prefix: str = ""
    trust_remote_code: bool = True
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS}.")
        for name, least in (("batch_size", 1), ("max_tokens", 2)):  # max_tokens holds BOS and a token
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}.")
        if self.device.split(":")[0] not in DEVICES:
            raise ValueError(f"device={self.device!r} is not one of {DEVICES} (optionally 'cuda:<index>').")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not 'auto' or one of {sorted(DTYPES)}.")
        if not self.sae_id:
            raise ValueError("sae_id is empty: give the SAE id within sae_release, or a local directory with sae_release=None.")

    @classmethod
    def preset(cls, sparse: str = "gemma-2b-it-res-jb", dense: str = "nomic-v1", **overrides: Any) -> LMEncoderConfig:
        """A config from named presets, with any field overridden.

        Args:
            sparse: A key of ``SPARSE_PRESETS``. Defaults to ``"gemma-2b-it-res-jb"`` (the poster).
            dense: A key of ``DENSE_PRESETS``. Defaults to ``"nomic-v1"`` (the poster).
            **overrides: Fields to set, e.g. ``device="cuda"`` or ``pooling="max"``.

        Raises:
            ValueError: For an unknown preset name.
        """
        for name, table in ((sparse, SPARSE_PRESETS), (dense, DENSE_PRESETS)):
            if name not in table:
                raise ValueError(f"Unknown preset {name!r}; known: {sorted(table)}.")
        return cls(**{**SPARSE_PRESETS[sparse], **DENSE_PRESETS[dense], **overrides})



def resolve_device(device: str = "auto") -> str:
    """``"auto"`` becomes ``"cuda"`` if available, else ``"mps"`` if available, else ``"cpu"``."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``"auto"`` is bfloat16 on cuda and float32 elsewhere; other names map to torch dtypes."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[dtype]


def load_causal_lm(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Loads a transformers causal LM (in eval mode, on ``device``) and its tokenizer.

    Gemma models are gated on the Hugging Face Hub: accept the licence and log in first.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(name)


def load_lm_sae(release: str | None, sae_id: str) -> SparseAutoencoder:
    """Loads an SAE from a sae-lens release on the Hub, or from a local directory.

    Args:
        release: A sae-lens release (``sae_lens.SAE.from_pretrained``; sae_lens is imported only
            here), or None to read ``sae_id`` as a directory in sae-lens' format.
        sae_id: The SAE id within the release, or the directory.

    Returns:
        saememory's torch SAE on the CPU, named ``"<release>/<sae_id>"`` or after the directory.
    """
    if release is None:
        return SparseAutoencoder.from_disk(sae_id)
    from sae_lens import SAE

    return from_sae_lens(SAE.from_pretrained(release, sae_id, device="cpu"), name=f"{release}/{sae_id}")


def from_sae_lens(sae: Any, name: str = "custom") -> SparseAutoencoder:
    """Converts a loaded ``sae_lens.SAE`` to saememory's ``SparseAutoencoder``.

    The weights are taken exactly as ``sae.save_model`` would write them, so the result encodes
    like ``SparseAutoencoder.from_disk`` on that directory; ``sha256`` hashes the same bytes.
    """
    from safetensors.torch import save

    weights = sae.state_dict()
    sae.process_state_dict_for_saving(weights)
    weights = {key: value.detach().cpu().contiguous() for key, value in weights.items()}
    cfg = SAEConfig.from_dict(sae.cfg.to_dict())
    return SparseAutoencoder(cfg, weights, name=name, sha256=hashlib.sha256(save(weights)).hexdigest())


def neuronpedia_labels(path: str | Path, neuronpedia_id: str | None) -> dict[int, str]:
    """Feature labels of one SAE from a Neuronpedia explanations export (or saememory's layout).

    Only records whose ``modelId`` and ``layer`` match ``neuronpedia_id`` (``"<modelId>/<layer>"``,
    e.g. ``"gemma-2b-it/12-res-jb"``) are kept; see ``saememory.sae.load_labels``.

    Raises:
        ValueError: If an export names models but the id is missing or matches no record.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, list) and any(isinstance(r, dict) and "modelId" in r for r in data) and not neuronpedia_id:
        raise ValueError(
            f"{path} holds explanations of several SAEs; set LMEncoderConfig.neuronpedia_id "
            "('<modelId>/<layer>', e.g. 'gemma-2b-it/12-res-jb') to pick this SAE's records."
        )
    return load_labels(path, neuronpedia_id)


def parse_hook(hook_name: str | None, n_layers: int, what: str = "The SAE") -> tuple[int, str]:
    """``blocks.<L>.hook_resid_post`` / ``..._pre`` to ``(L, "post" | "pre")``, checked against the model.

    Raises:
        ValueError: For any other hook, or a block the model does not have.
    """
    match = _HOOK.match(hook_name or "")
    if match is None or not int(match.group(1)) < n_layers:
        raise ValueError(
            f"{what} reads hook {hook_name!r}, but only 'blocks.<L>.hook_resid_post' or "
            f"'blocks.<L>.hook_resid_pre' with L in 0..{n_layers - 1} can be read from this {n_layers}-block "
            "model. Use a residual-stream SAE trained on this model."
        )
    return int(match.group(1)), match.group(2)


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The list of transformer blocks of a transformers model (Gemma, Llama, Mistral, Qwen, GPT-2, ...)."""
    for path in _BLOCK_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(
        f"Cannot find the transformer blocks of {type(model).__name__}: none of {_BLOCK_PATHS} is a "
        "ModuleList. Pass a transformers decoder-only causal LM."
    )


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the hooked block."""


class LMResidualEncoder:
    """SAE codes of a causal LM's residual stream, one L2-normalised CSR row per text.

    Args:
        model: A transformers causal LM (or its base model), in eval mode, on its device.
        tokenizer: Its tokenizer. BOS (``tokenizer.bos_token_id``) is prepended to every text,
            as TransformerLens does, and dropped before pooling; a tokenizer without BOS gets none.
        sae: A residual-stream SAE of this model, hook ``blocks.<L>.hook_resid_post`` or
            ``blocks.<L>.hook_resid_pre``; moved to the model's device.
        pooling: ``"mean"`` or ``"max"`` over a text's token codes. Defaults to ``"mean"``.
        max_tokens: Tokens per text, BOS included; the rest is cut. Defaults to 1024.
        batch_size: Texts per forward pass, grouped by length. Defaults to 8.

    Raises:
        ValueError: If the SAE's hook is not a residual hook of an existing block, or its
            ``d_in`` differs from the model's hidden size.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sae: SparseAutoencoder,
        *,
        pooling: str = "mean",
        max_tokens: int = 1024,
        batch_size: int = 8,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}.")
        self.model, self.tokenizer, self.sae = model, tokenizer, sae
        self.pooling, self.max_tokens, self.batch_size = pooling, max_tokens, batch_size
        blocks = decoder_layers(model)
        self.layer, self.position = parse_hook(sae.cfg.hook_name, len(blocks), f"SAE {sae.name!r}")
        self.block = blocks[self.layer]
        hidden = model.config.get_text_config().hidden_size
        if sae.cfg.d_in != hidden:
            raise ValueError(
                f"SAE {sae.name!r} reads {sae.cfg.d_in}-d states, but the model "
                f"{getattr(model, 'name_or_path', type(model).__name__)!r} has hidden size {hidden}. "
                "Use an SAE trained on this model."
            )
        self.device = next(model.parameters()).device
        sae.to(self.device)

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids per text (BOS first, cut at ``max_tokens``) and which texts were cut."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        room = self.max_tokens - len(bos)
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [bos + list(row[:room]) for row in ids], np.array([len(row) > room for row in ids], dtype=bool)

    @torch.inference_mode()
    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The hooked residual states (batch, tokens, hidden) of right-padded ids; later blocks never run."""
        captured: list[torch.Tensor] = []

        def grab_output(module: Any, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        def grab_input(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        if self.position == "post":
            handle = self.block.register_forward_hook(grab_output)
        else:
            handle = self.block.register_forward_pre_hook(grab_input, with_kwargs=True)
        try:
            self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"Block {self.layer} was never called; is it part of this model's forward pass?")
        return captured[0]

    def encode(self, texts: list[str], show_progress: bool = False) -> tuple[sp.csr_matrix, np.ndarray]:
        """SAE codes of ``texts`` (n, d_sae), each row pooled and L2-normalised, and which were truncated.

        Texts are sorted by token count so a batch pads little; rows come back in input order.
        """
        if not texts:
            return sp.csr_matrix((0, self.sae.cfg.d_sae), dtype=np.float32), np.zeros(0, dtype=bool)
        ids, truncated = self.tokenize(texts)
        skip = 1 if self.tokenizer.bos_token_id is not None else 0
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows: list[sp.csr_matrix | None] = [None] * len(texts)
        order = np.argsort([-len(row) for row in ids], kind="stable")
        batches = range(0, len(texts), self.batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="Encoding messages with the LM", unit="batch")
        for start in batches:
            idx = order[start : start + self.batch_size]
            width = len(ids[idx[0]])
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for b, i in enumerate(idx):  # right padding: real tokens keep positions 0..n-1
                input_ids[b, : len(ids[i])] = torch.tensor(ids[i])
                mask[b, : len(ids[i])] = 1
            states = self.states(input_ids, mask)
            for b, i in enumerate(idx):
                rows[i] = sp.csr_matrix(self.pool(states[b, skip : len(ids[i])]).cpu().numpy()[None])
        return sp.vstack(rows, format="csr").astype(np.float32), truncated

    def pool(self, token_states: torch.Tensor) -> torch.Tensor:
        """One L2-normalised code (d_sae,) from a text's real-token states (tokens, hidden)."""
        if token_states.shape[0] == 0:
            return torch.zeros(self.sae.cfg.d_sae, device=token_states.device)
        codes = self.sae.encode(token_states)
        pooled = codes.max(dim=0).values if self.pooling == "max" else codes.mean(dim=0)
        return torch.nn.functional.normalize(pooled, dim=-1)


class CodeCache:
    """Encoded messages by key: a dict in memory and, if a directory is given, one ``.npz`` per key.

    Args:
        directory: Where to keep codes across runs. Defaults to None (memory only).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.entries: dict[str, tuple[np.ndarray, sp.csr_matrix, bool]] = {}
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> tuple[np.ndarray, sp.csr_matrix, bool] | None:
        """``(dense row, sparse 1 x d_sae row, truncated)`` or None."""
        if key in self.entries or self.directory is None:
            return self.entries.get(key)
        path = self.directory / f"{key}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as data:
            code = sp.csr_matrix(
                (data["data"], data["indices"], np.array([0, data["indices"].size])), shape=(1, int(data["d_sae"]))
            )
            entry = (data["dense"], code, bool(data["truncated"]))
        self.entries[key] = entry
        return entry

    def put(self, key: str, dense: np.ndarray, code: sp.csr_matrix, truncated: bool) -> None:
        code = sp.csr_matrix(code, dtype=np.float32)
        self.entries[key] = (np.asarray(dense, dtype=np.float32), code, bool(truncated))
        if self.directory is not None:
            # Whole or not at all, through a temporary file of its own: processes sharing the folder write the same keys.
            replace_file(self.directory / f"{key}.npz", lambda out: np.savez(
                out, dense=self.entries[key][0], indices=code.indices.astype(np.int32), data=code.data,
                d_sae=np.int64(code.shape[1]), truncated=np.bool_(truncated)))


class LMEncoder:
    """Dense vectors from sentence-transformers and sparse SAE codes from a causal LM.

    Implements ``EncoderProtocol`` (``saememory.encoders.base``).

    Args:
        config: Settings. Defaults to ``LMEncoderConfig()``, the poster's stack.
        lm: An already loaded causal LM to use instead of ``config.lm``. Defaults to None.
        tokenizer: Its tokenizer; required with ``lm``. Defaults to None.
        sae: An already loaded ``SparseAutoencoder`` instead of ``config.sae_release``/``sae_id``.
            Defaults to None.
        dense: An already loaded dense ``Encoder`` instead of ``config.dense_model``. Defaults
            to None.
        cache_dir: A directory keeping message codes across runs. Defaults to None (in memory).

    Raises:
        ValueError: If the SAE does not fit the LM, or labels do not match the SAE.
    """

    def __init__(
        self,
        config: LMEncoderConfig | None = None,
        *,
        lm: Any = None,
        tokenizer: Any = None,
        sae: SparseAutoencoder | None = None,
        dense: Encoder | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.config = cfg = config or LMEncoderConfig()
        device = resolve_device(cfg.device)
        if (lm is None) != (tokenizer is None):
            raise ValueError("Pass lm= and tokenizer= together, or neither to load config.lm.")
        if lm is None:
            lm, tokenizer = load_causal_lm(cfg.lm, device, resolve_dtype(cfg.dtype, device))
        sae = sae if sae is not None else load_lm_sae(cfg.sae_release, cfg.sae_id)
        model_name = sae.cfg.model_name
        if model_name and model_name != cfg.lm.rstrip("/").split("/")[-1]:
            logger.warning("SAE %r was trained on %r, but the LM is %r.", sae.name, model_name, cfg.lm)
        if cfg.labels:
            sae.labels = neuronpedia_labels(cfg.labels, cfg.neuronpedia_id or sae.cfg.metadata.get("neuronpedia_id"))
        self.residual = LMResidualEncoder(
            lm, tokenizer, sae, pooling=cfg.pooling, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size
        )
        self.dense = dense if dense is not None else Encoder(
            EncoderConfig(
                model=cfg.dense_model,
                sae=None,
                query_prefix=cfg.query_prefix,
                document_prefix=cfg.document_prefix,
                split="none",  # whole messages, as the LM's sparse side reads them (and as saved before splitting)
                batch_size=cfg.batch_size,
                device=device,
                trust_remote_code=cfg.trust_remote_code,
            )
        )
        self.sae = sae
        self.layer = self.residual.layer  # the LM block the sparse side reads
        self.dim = self.dense.dim
        self.cache = CodeCache(cache_dir)
        key = {"identity": self.identity(), "dtype": str(next(lm.parameters()).dtype)}
        self._cache_key = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    @property
    def d_sae(self) -> int:
        return self.sae.cfg.d_sae

    def identity(self) -> dict[str, Any]:
        """What a saved memory records to recognise this encoder again: both models and the SAE."""
        return {
            "dense": self.dense.identity(),
            "lm": self.config.lm,
            "hook_name": self.sae.cfg.hook_name,
            "pooling": self.config.pooling,
            "max_tokens": self.config.max_tokens,
            "sae": self.sae.identity(),
        }

    def encode_documents(self, texts: list[str], show_progress: bool = False) -> Encoded:
        """Encodes messages; each distinct text is encoded once per encoder identity, then cached."""
        keys = [hashlib.sha256(f"{self._cache_key}\0{t}".encode()).hexdigest() for t in texts]
        todo: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in todo and self.cache.get(key) is None:
                todo[key] = text
        if todo:
            fresh = list(todo.values())
            dense = self.dense.encode_documents(fresh, show_progress=show_progress)
            sparse, truncated = self.residual.encode(fresh, show_progress=show_progress)
            for j, key in enumerate(todo):
                self.cache.put(key, dense.dense[j], sparse[j], bool(dense.truncated[j] or truncated[j]))
        entries = [self.cache.get(key) for key in keys]
        if not entries:
            return Encoded(np.zeros((0, self.dim), np.float32), sp.csr_matrix((0, self.d_sae), dtype=np.float32), np.zeros(0, bool))
        return Encoded(
            dense=np.stack([e[0] for e in entries]).astype(np.float32),
            sparse=sp.vstack([e[1] for e in entries], format="csr").astype(np.float32),
            truncated=np.array([e[2] for e in entries], dtype=bool),
        )

    def encode_query(self, text: str) -> Encoded:
        """Encodes one query (query prefix on the dense side only); not cached."""
        dense = self.dense.encode_query(text)
        sparse, truncated = self.residual.encode([text])
        return Encoded(dense=dense.dense, sparse=sparse, truncated=dense.truncated | truncated)

    def steer(self, query: Encoded, strengths: dict[int, float]) -> Encoded:
        """Boosts or suppresses SAE features of an encoded query; see ``saememory.interpret.steering``.

        The sparse code changes as for saememory's residual source; the dense vector does not.
        """
        if self.sae is None:
            raise ValueError("Steering needs an SAE.")
        sparse = steer_code(query.sparse, strengths, self.sae.cfg.d_sae)
        return Encoded(dense=query.dense, sparse=sparse, truncated=query.truncated)


def preset_encoder(
    sparse: str = "gemma-2b-it-res-jb",
    dense: str = "nomic-v1",
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> LMEncoder:
    """An ``LMEncoder`` from named presets (``LMEncoderConfig.preset``).

    Args:
        sparse: A key of ``SPARSE_PRESETS``. Defaults to ``"gemma-2b-it-res-jb"`` (the poster).
        dense: A key of ``DENSE_PRESETS``. Defaults to ``"nomic-v1"`` (the poster).
        device: Where both models run. Defaults to ``"cuda"``.
        dtype: The LM's weights. Defaults to ``"bfloat16"``.
        cache_dir: A directory keeping message codes across runs. Defaults to None (in memory).
        **overrides: Other ``LMEncoderConfig`` fields, e.g. ``pooling="max"`` or ``labels=...``.

    Raises:
        ValueError: For an unknown preset name.
    """
    config = LMEncoderConfig.preset(sparse, dense, device=device, dtype=dtype, **overrides)
    return LMEncoder(config, cache_dir=cache_dir)


def poster_encoder(device: str = "cuda", dtype: str = "bfloat16", **overrides: Any) -> LMEncoder:
    """The poster's stack: ``preset_encoder("gemma-2b-it-res-jb", "nomic-v1", ...)``.

    gemma-2b-it, SAE ``gemma-2b-it-res-jb`` / ``blocks.12.hook_resid_post`` (mean pooling), Nomic
    embed text v1 without prefixes. Arguments as ``preset_encoder``'s.
    """
    return preset_encoder("gemma-2b-it-res-jb", "nomic-v1", device=device, dtype=dtype, **overrides)


def gemma_scope_encoder(device: str = "cuda", dtype: str = "bfloat16", **overrides: Any) -> LMEncoder:
    """Gemma Scope: ``preset_encoder("gemma-scope-2b-l12", "nomic-v1.5", ...)``.

    Gemma 2 2B with the canonical 16k Gemma Scope SAE of block 12 (mean pooling), Nomic v1.5 with
    its task prefixes. Arguments as ``preset_encoder``'s.
    """
    return preset_encoder("gemma-scope-2b-l12", "nomic-v1.5", device=device, dtype=dtype, **overrides)


__all__ = [
    "DENSE_PRESETS",
    "SPARSE_PRESETS",
    "CodeCache",
    "LMEncoder",
    "LMEncoderConfig",
    "LMResidualEncoder",
    "decoder_layers",
    "from_sae_lens",
    "gemma_scope_encoder",
    "load_causal_lm",
    "load_lm_sae",
    "neuronpedia_labels",
    "parse_hook",
    "poster_encoder",
    "preset_encoder",
]
