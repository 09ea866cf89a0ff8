"""Reading the SAE: why a message matched (``explain``), feature labels and families, steering."""
