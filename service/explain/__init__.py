"""Explanations: attributions for any task model, computed through its batcher at low priority."""
