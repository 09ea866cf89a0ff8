"""Sparse autoencoder inference, read from sae-lens' on-disk format.

A directory holds ``cfg.json`` and ``sae_weights.safetensors`` exactly as
``sae_lens.SAE.save_inference_model`` writes them, so it also loads with
``sae_lens.SAE.load_from_disk``. Importing sae_lens takes about ten seconds, so the
query path uses this module instead; ``tests/test_sae.py`` proves both encode alike. Weights are
held as numpy arrays, so loading an SAE does not import torch; ``encode`` and ``decode`` (torch)
import it when first called, and the default encoder runs the SAE through ONNX Runtime
(``saememory.encoders.onnx``).
Optional ``labels.json``, ``families.json`` and ``hygiene.json`` beside the weights name the
features, group them and mark those never shown as explanations (``saememory.interpret.labels``,
``saememory.interpret.families``, ``saememory.interpret.hygiene``).

Besides sae-lens' own ``topk``, ``standard`` and ``jumprelu`` SAEs it reads ``kronsae`` SAEs
(Kurochkin et al. 2025), trained by ``saememory.kronsae``; the mAND maths lives here so that
inference and training share one implementation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file

from saememory.interpret.families import FAMILIES_FILENAME, load_families
from saememory.interpret.hygiene import HYGIENE_FILENAME, load_hygiene
from saememory.interpret.labels import LABELS_FILENAME, find_features, labels_from_data

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
ARCHITECTURES = ("topk", "standard", "jumprelu", "kronsae")


@dataclass
class SAEConfig:
    """The subset of sae-lens' ``cfg.json`` that inference needs.

    Args:
        d_in: Width of the vectors the SAE reads.
        d_sae: Number of features.
        architecture: ``"topk"``, ``"standard"`` (ReLU), ``"jumprelu"`` or ``"kronsae"``.
        k: Active features per vector; required for ``"topk"`` and ``"kronsae"``.
        apply_b_dec_to_input: Subtract the decoder bias before encoding. Defaults to True.
        rescale_acts_by_decoder_norm: Scale pre-activations by decoder row norms (sae-lens
            TopK). Defaults to False.
        normalize_activations: Must be ``"none"``; other input normalisations are not supported.
        metadata: sae-lens metadata; saememory reads ``model_name`` and ``hook_name``.
        h: KronSAE heads; required for ``"kronsae"`` (``d_sae = h * m * n``). Defaults to None.
        m: KronSAE rows of P per head (the first mAND argument). Defaults to None.
        n: KronSAE rows of Q per head (the second mAND argument). Defaults to None.
    """

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    normalize_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)
    h: int | None = None
    m: int | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"SAE architecture {self.architecture!r} is not supported; expected one of "
                f"{ARCHITECTURES}. Convert the SAE to one of these or encode it with sae_lens."
            )
        if self.architecture in ("topk", "kronsae") and (self.k is None or not 0 < self.k <= self.d_sae):
            raise ValueError(
                f"A {self.architecture} SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k}."
            )
        if self.architecture == "kronsae":
            check_kron_shape(self.d_sae, self.h, self.m, self.n)
        if self.normalize_activations != "none":
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported; only 'none'. "
                "Fold the normalisation into the weights (sae-lens can) and save again."
            )

    @property
    def encoder_width(self) -> int:
        """Columns of ``W_enc``: ``h * (m + n)`` for KronSAE, else ``d_sae``."""
        if self.architecture == "kronsae":
            return self.h * (self.m + self.n)
        return self.d_sae

    @property
    def hook_name(self) -> str | None:
        return self.metadata.get("hook_name")

    @property
    def model_name(self) -> str | None:
        return self.metadata.get("model_name")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> SAEConfig:
        """Builds a config from a sae-lens ``cfg.json`` dict, ignoring keys inference does not use."""
        missing = [key for key in ("d_in", "d_sae") if key not in cfg]
        if missing:
            raise ValueError(f"SAE config lacks {missing}; is this a sae-lens cfg.json?")
        return cls(
            d_in=int(cfg["d_in"]),
            d_sae=int(cfg["d_sae"]),
            architecture=cfg.get("architecture", "standard"),
            k=cfg.get("k"),
            apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
            rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
            normalize_activations=cfg.get("normalize_activations") or "none",
            metadata=dict(cfg.get("metadata") or {}),
            h=cfg.get("h"),
            m=cfg.get("m"),
            n=cfg.get("n"),
        )


class SparseAutoencoder:
    """An SAE ready to encode, with optional feature labels.

    Args:
        cfg: The SAE's configuration.
        weights: ``W_enc`` (d_in x d_sae; d_in x h(m+n) for KronSAE), ``b_enc``, ``W_dec``
            (d_sae x d_in), ``b_dec`` and, for JumpReLU, ``threshold``.
        labels: Feature id to human-readable label. Defaults to none.
        name: A short identity for manifests and model cards. Defaults to ``"custom"``.
        sha256: Hash of the weights file, so a saved memory can tell whether the SAE changed.
    """

    def __init__(
        self,
        cfg: SAEConfig,
        weights: dict[str, Any],
        labels: dict[int, str] | None = None,
        name: str = "custom",
        sha256: str | None = None,
    ) -> None:
        self.cfg = cfg
        expected = {
            "W_enc": (cfg.d_in, cfg.encoder_width),
            "b_enc": (cfg.encoder_width,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }
        if cfg.architecture == "jumprelu":
            expected["threshold"] = (cfg.d_sae,)
        for key, shape in expected.items():
            if key not in weights:
                raise ValueError(f"SAE weights lack {key!r}; found {sorted(weights)}.")
            if tuple(weights[key].shape) != shape:
                raise ValueError(
                    f"SAE weight {key!r} has shape {tuple(weights[key].shape)}, expected {shape} "
                    f"from cfg (d_in={cfg.d_in}, d_sae={cfg.d_sae})."
                )
        # numpy float32 (torch tensors are copied out once); the torch views are made on first use.
        self.arrays: dict[str, np.ndarray] = {key: _float32(weights[key]) for key in expected}
        if cfg.rescale_acts_by_decoder_norm:
            self.arrays["dec_norm"] = np.linalg.norm(self.arrays["W_dec"], axis=-1).astype(np.float32)
        self._tensors: dict[str, torch.Tensor] | None = None
        self.labels: dict[int, str] = dict(labels or {})
        self.phrases: dict[int, str] = {}  # the phrase a feature reads in context ("thank you"), from labels.json
        self.examples: dict[int, list[str]] = {}  # top-activating snippets (residual SAEs: firing word in [brackets])
        self.name = name
        self.sha256 = sha256
        self.families: dict[int, dict[str, Any]] = {}
        self.hidden: dict[int, str] = {}  # features never shown as an explanation, with why (interpret.hygiene)
        self._family_sizes: dict[int, int] = {}

    def _tensor(self, key: str) -> torch.Tensor | None:
        """A weight as a torch tensor sharing the array's memory (torch is imported here, once)."""
        if self._tensors is None:
            import torch

            self._tensors = {name: torch.from_numpy(array) for name, array in self.arrays.items()}
        return self._tensors.get(key)

    W_enc = property(lambda self: self._tensor("W_enc"))
    b_enc = property(lambda self: self._tensor("b_enc"))
    W_dec = property(lambda self: self._tensor("W_dec"))
    b_dec = property(lambda self: self._tensor("b_dec"))
    threshold = property(lambda self: self._tensor("threshold"))
    _dec_norm = property(lambda self: self._tensor("dec_norm"))

    @classmethod
    def from_disk(cls, path: str | Path, name: str | None = None) -> SparseAutoencoder:
        """Loads an SAE saved in sae-lens' format, with ``labels.json`` if present.

        Args:
            path: Directory holding ``cfg.json`` and ``sae_weights.safetensors``.
            name: Identity recorded in saved memories. Defaults to the directory name.

        Raises:
            FileNotFoundError: If either file is missing.
            ValueError: If the config or the weights are not what inference needs.
        """
        path = Path(path)
        for filename in (CFG_FILENAME, WEIGHTS_FILENAME):
            if not (path / filename).is_file():
                raise FileNotFoundError(
                    f"No {filename} in {path}: an SAE directory needs {CFG_FILENAME} and "
                    f"{WEIGHTS_FILENAME} as sae_lens' save_inference_model writes them."
                )
        cfg = SAEConfig.from_dict(json.loads((path / CFG_FILENAME).read_text()))
        raw = (path / WEIGHTS_FILENAME).read_bytes()
        weights = load_file(str(path / WEIGHTS_FILENAME))
        sha256 = hashlib.sha256(raw).hexdigest()
        labels, extras = None, {}
        if (path / LABELS_FILENAME).is_file():
            data = json.loads((path / LABELS_FILENAME).read_text(encoding="utf-8"))  # read once: about 1 MB
            extras = data if isinstance(data, dict) else {}
            made_for = extras.get("sae_sha256")
            if made_for not in (None, sha256):  # optional explanations must not make the SAE unusable
                logger.warning("Labels in %s were made for other weights (sha256 %s); not attached. "
                               "Rerun python -m saememory.interpret.label --saes %s for these weights.",
                               path, made_for, path)
                extras = {}
            else:
                labels = labels_from_data(data, path / LABELS_FILENAME)
        sae = cls(cfg, weights, labels, name=name or path.name, sha256=sha256)
        for key, strings in (("phrases", False), ("examples", True)):  # labels.json's other readings, if any
            try:
                readings = {int(f): value for f, value in (extras.get(key) or {}).items() if value}
                if not all(0 <= f < cfg.d_sae and (isinstance(v, list) and all(isinstance(x, str) for x in v)
                                                   if strings else isinstance(v, str)) for f, v in readings.items()):
                    raise ValueError(f"'{key}' must map feature ids 0..{cfg.d_sae - 1} to "
                                     + ("lists of strings" if strings else "strings"))
                setattr(sae, key, readings)
            except (AttributeError, TypeError, ValueError) as err:  # optional explanations must not make the SAE unusable
                logger.warning("%s of %s not attached: %s", key, path / LABELS_FILENAME, err)
        if (path / HYGIENE_FILENAME).is_file():
            try:
                hidden = load_hygiene(path / HYGIENE_FILENAME, sae_sha256=sae.sha256)
                if any(f >= cfg.d_sae for f in hidden):
                    raise ValueError(f"{path / HYGIENE_FILENAME} names features outside 0..{cfg.d_sae - 1}.")
                sae.hidden = hidden
            except ValueError as err:  # optional explanations must not make the SAE unusable
                logger.warning("Feature hygiene not attached: %s", err)
        if (path / FAMILIES_FILENAME).is_file():
            try:
                sae.set_families(load_families(path / FAMILIES_FILENAME, sae_sha256=sae.sha256))
            except ValueError as err:  # optional explanations must not make the SAE unusable
                logger.warning("Feature families not attached: %s", err)
        return sae

    def to(self, device: str | torch.device) -> SparseAutoencoder:
        """Moves the torch weights to ``device`` (in place) and returns the SAE; the arrays stay."""
        self._tensor("W_enc")
        self._tensors = {name: tensor.to(device) for name, tensor in self._tensors.items()}
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations of ``x`` (..., d_in), the same as sae-lens' ``SAE.encode`` (torch)."""
        import torch

        with torch.inference_mode():
            return self._encode(x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"SAE expects vectors of width d_in={self.cfg.d_in}, got {x.shape[-1]}.")
        x = x.float()
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.cfg.architecture == "kronsae":
            pre = kron_latents(pre, self.cfg.h, self.cfg.m, self.cfg.n)
        if self._dec_norm is not None:
            pre = pre * self._dec_norm
        if self.cfg.architecture in ("topk", "kronsae"):
            values, indices = torch.topk(pre, k=self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, values.relu())
        acts = pre.relu()
        if self.cfg.architecture == "jumprelu":
            acts = acts * (pre > self.threshold).to(acts.dtype)
        return acts

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction from feature activations (..., d_sae) (torch)."""
        import torch

        with torch.inference_mode():
            if self._dec_norm is not None:
                z = z / self._dec_norm
            return z.float() @ self.W_dec + self.b_dec

    def label(self, feature: int) -> str | None:
        return self.labels.get(int(feature))

    def phrase(self, feature: int) -> str | None:
        """The phrase the feature reads in context, e.g. ``"thank you"`` for a feature labelled
        ``"you"``; None where no phrase holds among enough of its top activations."""
        return self.phrases.get(int(feature))

    def set_families(self, families: dict[int, dict[str, Any]]) -> None:
        """Attaches feature families (``saememory.interpret.families.load_families``): parent, root, depth."""
        self.families = dict(families)
        self._family_sizes = {}
        for record in self.families.values():
            self._family_sizes[record["root"]] = self._family_sizes.get(record["root"], 0) + 1

    def family(self, feature: int) -> dict[str, Any] | None:
        """A feature's family as a hit carries it, or None without families or a record.

        Args:
            feature: Feature id.

        Returns:
            ``{"root", "root_label", "parent", "parent_label", "depth", "size"}``.
        """
        record = self.families.get(int(feature))
        if record is None:
            return None
        root, parent = record["root"], record["parent"]
        return {
            "root": root,
            "root_label": self.labels.get(root),
            "parent": parent,
            "parent_label": self.labels.get(parent) if parent is not None else None,
            "depth": record["depth"],
            "size": self._family_sizes.get(root, 1),
        }

    def find_features(self, text: str, limit: int = 5) -> list[int]:
        """Features whose label holds the words of ``text``, best match first.

        See ``saememory.interpret.labels.find_features`` for the matching rules.

        Raises:
            ValueError: If the SAE has no labels, or none matches.
        """
        if not self.labels:
            raise ValueError(f"SAE {self.name!r} has no feature labels; steer by feature id instead.")
        found = find_features(self.labels, text, limit)
        if not found:
            raise ValueError(f"No feature label of SAE {self.name!r} matches {text!r}; steer by feature id instead.")
        return found

    def identity(self) -> dict[str, Any]:
        """What a saved memory records to recognise this SAE again."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "architecture": self.cfg.architecture,
            "hook_name": self.cfg.hook_name,
        }


def check_kron_shape(d_sae: int, h: int | None, m: int | None, n: int | None) -> None:
    """Raises ValueError unless h, m, n are positive integers with ``h * m * n == d_sae``."""
    if not all(isinstance(v, int) and v > 0 for v in (h, m, n)):
        raise ValueError(
            f"A kronsae SAE needs positive integers h, m, n, got h={h}, m={m}, n={n}; "
            "set them in cfg.json (sae-lens writes them for saememory.kronsae SAEs)."
        )
    if h * m * n != d_sae:
        raise ValueError(
            f"A kronsae SAE has d_sae = h * m * n, but h={h}, m={m}, n={n} gives {h * m * n}, "
            f"not d_sae={d_sae}. Choose h, m, n whose product is d_sae."
        )


def mand(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KronSAE's mAND: ``sqrt(p * q)`` where both are positive, else 0 (broadcasting).

    The square root is taken only where the product is positive, so gradients stay finite.
    """
    import torch

    prod = p.relu() * q.relu()
    return torch.where(prod > 0, prod.clamp_min(1e-12).sqrt(), torch.zeros_like(prod))


def kron_latents(pre: torch.Tensor, h: int, m: int, n: int) -> torch.Tensor:
    """KronSAE latents from the fused encoder output, before TopK.

    Args:
        pre: (..., h * (m + n)) encoder pre-activations; per head the first ``m`` columns are
            ``P_k x`` and the next ``n`` are ``Q_k x``.
        h: Heads.
        m: Rows of P per head.
        n: Rows of Q per head.

    Returns:
        (..., h * m * n) latents; latent ``(k, i, j)`` sits at ``k * m * n + i * n + j`` and
        equals ``mand(relu(P_k x)_i, relu(Q_k x)_j)``.
    """
    heads = pre.reshape(*pre.shape[:-1], h, m + n)
    p, q = heads[..., :m], heads[..., m:]
    return mand(p.unsqueeze(-1), q.unsqueeze(-2)).reshape(*pre.shape[:-1], h * m * n)


def _float32(value: Any) -> np.ndarray:
    """A weight (numpy array or torch tensor) as a C-contiguous float32 numpy array."""
    if hasattr(value, "detach"):  # a torch tensor: copied out, so later in-place changes do not leak in
        value = value.detach().to("cpu").float().numpy().copy()
    return np.ascontiguousarray(value, dtype=np.float32)
