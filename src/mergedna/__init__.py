"""MergeDNA: context-aware genome modelling with a learned tokenizer (token merging)."""

__version__ = "0.1.0"
