"""Networks, one per file, each a config dataclass plus an nn.Module (nanoGPT `model.py` style)."""
