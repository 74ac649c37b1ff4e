"""Training batches for an SAE, streamed from one site of an ActivationStore.

A site's items are vectors [d] or token sequences [pos, d]; tokens are flattened into rows, so an SAE on
`blocks.5.hook_resid_post` with position "all" sees every token of every image as one training row.
The stream is endless (epoch after epoch), seeded, and replayable: the same (store, site, batch_size, seed)
gives the same batches, so a resumed training run skips the batches it already used.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["ActivationBatches", "site_rows"]

CHUNK_BATCHES = 8  # rows are shuffled within chunks of this many batches (on top of the store's shard shuffle)


def site_rows(store, site: str) -> tuple[int, int]:
    """(tokens per item, d_in) of `site` in `store`; raises for sites whose items are not vectors or sequences."""
    if site not in store:
        raise KeyError(f"site {site!r} is not in this activation store (stored sites: {store.sites}); "
                       "extract it first or pass the model and data instead of a store")
    shape = tuple(store.shapes[site])
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f"site {site!r} holds items of shape {list(shape)}; an SAE reads vectors [d] or token "
                     "sequences [pos, d] (a residual stream or embedding hook), not this site")


class ActivationBatches:
    """Endless iterator of float32 batches [batch_size, d_in] from `store[site]`, rows flattened over tokens.

    Each epoch visits the store's shards in a seeded random order with rows shuffled within each shard
    (`ActivationStore.iter_batches(shuffle=True)`, memory: one shard), then shuffles the token rows within
    chunks of a few batches. `skip` drops that many batches first (used when resuming); every batch drawn
    so far is counted in `n_batches`.
    """

    def __init__(self, store, site: str, batch_size: int, seed: int = 0, skip: int = 0, device=None):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.store, self.site, self.batch_size, self.seed, self.device = store, site, batch_size, seed, device
        self.tokens_per_item, self.d_in = site_rows(store, site)
        self.n_rows = len(store) * self.tokens_per_item
        if self.n_rows < batch_size:
            raise ValueError(f"the store holds {self.n_rows} training rows at {site!r} ({len(store)} items × "
                             f"{self.tokens_per_item} tokens), fewer than one batch of {batch_size}: use a smaller "
                             "batch_size or more data")
        self.n_batches = 0
        self._it = self._generate()
        for _ in range(skip):
            next(self._it)
        self.n_batches = skip

    def __iter__(self) -> "ActivationBatches":
        return self

    def __next__(self) -> Tensor:
        self.n_batches += 1
        return next(self._it)

    def _chunks(self) -> Iterator[Tensor]:
        """Shuffled row chunks [m, d_in], epoch after epoch."""
        g = torch.Generator().manual_seed(self.seed)
        chunk_items = max(1, math.ceil(CHUNK_BATCHES * self.batch_size / self.tokens_per_item))
        epoch = 0
        while True:
            for acts, _ in self.store.iter_batches(chunk_items, sites=[self.site], shuffle=True,
                                                   seed=self.seed * 1_000_003 + epoch):
                rows = acts[self.site].reshape(-1, self.d_in)
                yield rows[torch.randperm(rows.shape[0], generator=g)]
            epoch += 1

    def _generate(self) -> Iterator[Tensor]:
        carry = None
        for rows in self._chunks():
            if carry is not None:
                rows = torch.cat([carry, rows])
            full = rows.shape[0] - rows.shape[0] % self.batch_size
            for start in range(0, full, self.batch_size):
                batch = rows[start:start + self.batch_size]
                yield batch.to(device=self.device, dtype=torch.float32)
            carry = rows[full:] if full < rows.shape[0] else None
