"""Activation extraction and the on-disk activation store.

    store = extract(model, dataset, ["blocks.11.hook_resid_post", "head_contributions"], cache_dir="acts/")
    store["head_contributions"]          # [n, layers, heads, d_embed]
    store.labels["gender"]               # [n]
    ActivationStore.open("acts/")        # later, without the model

Layout, checksums, resuming and errors (ShardError): docs/activations.md.
"""
from .extract import SPECIAL_SITES, collate_items, extract, extract_text
from .store import ActivationStore, ShardError

__all__ = ["extract", "extract_text", "ActivationStore", "ShardError", "SPECIAL_SITES", "collate_items"]
