"""saememory: interpretable long-term chat memory (dense + sparse-autoencoder retrieval)."""

__version__ = "0.1.0"
