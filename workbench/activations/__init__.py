"""Activation extraction and the on-disk activation store.

    store = extract(model, dataset, ["blocks.11.hook_resid_post", "head_contributions"], cache_dir="acts/")
    store["head_contributions"]          # [n, layers, heads, d_embed]
    store.labels["gender"]               # [n]
    ActivationStore.open("acts/")        # later, without the model

Under torchrun, `extract_distributed(...)` gives each process a share of the shards of one store.

Layout, checksums, resuming and errors (ShardError): docs/activations.md.
"""
from .distributed import extract_distributed
from .extract import SPECIAL_SITES, collate_items, extract, extract_text
from .store import ActivationStore, ShardError

__all__ = ["extract", "extract_text", "extract_distributed", "ActivationStore", "ShardError", "SPECIAL_SITES",
           "collate_items"]
