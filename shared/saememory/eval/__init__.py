"""Evaluation: LongMemEval data and its official retrieval metrics (``longmemeval.py``, stdlib + numpy)."""
