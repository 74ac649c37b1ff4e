"""Activation extraction and the on-disk activation store.

    store = extract(model, dataset, ["blocks.11.hook_resid_post", "head_contributions"], cache_dir="acts/")
    store["head_contributions"]          # [n, layers, heads, d_embed]
    store.labels["gender"]               # [n]
    ActivationStore.open("acts/")        # later, without the model
"""
from .extract import SPECIAL_SITES, collate_items, extract, extract_text
from .store import ActivationStore

__all__ = ["extract", "extract_text", "ActivationStore", "SPECIAL_SITES", "collate_items"]
