"""Hand-made conversations and builders for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# One user's history over three sessions: one planted fact among everyday distractors.
PLANTED = "By the way, my sister Ana moved to Lisbon last spring and loves it there."
DISTRACTORS = [
    "Can you suggest a recipe for a quick weeknight pasta?",
    "I need to renew my car insurance before the end of the month.",
    "What are some good stretches after a long run?",
    "My laptop keeps freezing when I open too many browser tabs.",
    "I'm thinking of repainting the kitchen a pale green.",
    "How long should I steep green tea?",
    "I started learning the guitar two weeks ago.",
    "Remind me to water the tomato plants on Thursday.",
    "What's the difference between a Roth IRA and a traditional IRA?",
    "Our team meeting got moved to Friday afternoon.",
    "I watched a documentary about octopuses last night.",
    "Do you know any good podcasts about history?",
    "I'm allergic to peanuts, so I avoid Thai takeout.",
    "My bike chain keeps slipping on steep hills.",
    "The printer at work only prints in black and white now.",
    "I want to plan a weekend hiking trip in the mountains.",
    "Which houseplants survive in low light?",
    "I finally finished reading that long fantasy novel.",
]
CONVERSATION = (
    [{"role": "user", "content": t, "session_id": "s1", "timestamp": "2024-03-01"} for t in DISTRACTORS[:6]]
    + [{"role": "user", "content": PLANTED, "session_id": "s2", "timestamp": "2024-04-12", "id": "planted"}]
    + [{"role": "assistant", "content": "That sounds lovely! Lisbon is a beautiful city.", "session_id": "s2"}]
    + [{"role": "user", "content": t, "session_id": "s3", "timestamp": "2024-05-20"} for t in DISTRACTORS[6:]]
)
QUESTION = "Which city does my sister live in now?"


def save_sae_lens_sae(path: Path, architecture: str, d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0) -> Path:
    """Saves a random sae-lens SAE of the given architecture in sae-lens' own format."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
    elif architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)  # decoder norms away from 1, so rescaling matters
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.5)
    sae.cfg.metadata.hook_name = "sentence_embedding"
    sae.save_model(path)  # sae-lens' own writer: cfg.json + sae_weights.safetensors
    return path


def load_script(path: Path):
    """Imports a script (an example or a benchmark) by path, registered in sys.modules as its dataclasses need."""
    name = f"_lme_script_{path.parent.name}_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def save_float32_format(path: Path, records: list[dict], dense, sparse, manifest: dict, *, index_type: str = "Flat",
                        version: int = 2, dim: int | None = None, d_sae: int | None = None) -> Path:
    """Writes a save as FaissBackend wrote them before format 3: float32 ``dense.npy``, a float32
    ``sparse.npz``, a ``faiss.index`` for every index type (holding the float32 vectors), BM25
    without stemming, and ``version`` (1: no checksums) in the manifest. Returns the snapshot folder."""
    import json

    import faiss
    import numpy as np
    import scipy.sparse as sp

    from saememory.backends import snapshot
    from saememory.lexical import LexicalIndex

    dense = np.asarray(dense, dtype=np.float32)
    dim, d_sae = dim or dense.shape[1], d_sae if d_sae is not None else sparse.shape[1]

    def write_files(tmp: Path) -> None:
        np.save(tmp / "dense.npy", dense, allow_pickle=False)
        sp.save_npz(tmp / "sparse.npz", sp.csr_matrix(sparse, dtype=np.float32))
        lexical = LexicalIndex()
        if records:
            lexical.add([r["content"] for r in records])
        lexical.save(tmp)
        index = faiss.IndexIDMap2(faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT))
        if records and index.is_trained:
            index.add_with_ids(dense, np.arange(len(records), dtype=np.int64))
        faiss.write_index(index, str(tmp / "faiss.index"))
        (tmp / "records.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    full = {**manifest, "backend": "faiss", "dim": dim, "d_sae": d_sae, "index_type": index_type,
            "n_messages": len(records)}
    snapshot.write_snapshot(path, full, write_files)
    folder = path / (path / "CURRENT").read_text()
    written = json.loads((folder / "manifest.json").read_text())
    written["format_version"] = version
    if version < 2:
        del written["files"]
    (folder / "manifest.json").write_text(json.dumps(written))
    return folder


def to_float32_format(snapshot: Path, version: int = 2) -> None:
    """Rewrites a snapshot of an exact (``"Flat"``) FaissBackend in the layout saves had before format 3:
    float32 ``dense.npy`` and ``sparse.npz`` (the stored values, decoded) and a ``faiss.index``
    in place of the int8 arrays, with the manifest's ``format_version`` (1: no checksums)."""
    import hashlib
    import json

    import faiss
    import numpy as np
    import scipy.sparse as sp

    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["index_type"] == "Flat"
    values, scale = (np.load(snapshot / f"dense_{part}.npy") for part in ("values", "scale"))
    dense = values.astype(np.float32) * scale[:, None]
    indptr, indices, data, code_scale = (np.load(snapshot / f"sparse_{part}.npy")
                                         for part in ("indptr", "indices", "values", "scale"))
    owner = np.repeat(np.arange(len(scale)), np.diff(indptr))
    sparse = sp.csr_matrix((data.astype(np.float32) * code_scale[owner], indices.astype(np.int32), indptr),
                           shape=(len(scale), manifest["d_sae"]))
    for name in ("dense_values", "dense_scale", "sparse_indptr", "sparse_indices", "sparse_values", "sparse_scale"):
        (snapshot / f"{name}.npy").unlink()
        del manifest["files"][f"{name}.npy"]
    np.save(snapshot / "dense.npy", dense, allow_pickle=False)
    sp.save_npz(snapshot / "sparse.npz", sparse)
    index = faiss.IndexIDMap2(faiss.index_factory(manifest["dim"], "Flat", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(dense, np.arange(len(dense), dtype=np.int64))
    faiss.write_index(index, str(snapshot / "faiss.index"))
    for name in ("dense.npy", "sparse.npz", "faiss.index"):
        manifest["files"][name] = hashlib.sha256((snapshot / name).read_bytes()).hexdigest()
    manifest["format_version"] = version
    if version < 2:
        del manifest["files"]
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
