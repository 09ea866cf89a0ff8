"""Encoders: text to a dense vector and a sparse SAE code.

- ``base.py``: ``EncoderProtocol`` (what ``SAEMemory`` needs of an encoder), ``Encoded`` (what
  encoding returns) and the registry that saves and rebuilds an encoder by its config
  (``encoder_config``, ``encoder_from_config``).
- ``sentence_transformer.py``: ``Encoder``, the default: a sentence-transformers model (bundled
  all-MiniLM-L6-v2) and an SAE on its layer states or its embedding; the bundled SAEs.
- ``onnx.py``: the lean runtime ``Encoder`` uses for the bundled model: ONNX Runtime (int8 by
  default) and the ``tokenizers`` library, the SAE's encoder as an ONNX graph; no torch.
- ``lm.py``: ``LMEncoder``, the poster's stack: SAE codes of a causal LM's residual stream (Gemma
  with sae-lens SAEs) and a sentence-transformers dense side.

Importing this package loads numpy and scipy only. The default encoder loads ONNX Runtime; the
sentence-transformers runtime and ``lm.py`` load torch and their models.
"""

from saememory.encoders.base import POOLINGS, Encoded, EncoderProtocol, check_encoded, encoder_config, encoder_from_config

__all__ = ["POOLINGS", "Encoded", "EncoderProtocol", "check_encoded", "encoder_config", "encoder_from_config"]
