"""Shared fixtures: the real bundled model and SAE, loaded once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests must never reach for the network

from saememory import Encoder, SAEMemory  # noqa: E402

from tests.helpers import CONVERSATION  # noqa: E402


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The default encoder: bundled all-MiniLM-L6-v2 with the default residual SAE."""
    return Encoder()


@pytest.fixture
def memory(encoder: Encoder) -> SAEMemory:
    """A fresh memory holding the small multi-session conversation of tests/helpers.py."""
    mem = SAEMemory(encoder)
    mem.add(CONVERSATION)
    return mem
