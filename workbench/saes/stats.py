"""Latent statistics for browsing an SAE: firing frequency, mean activation per group of a label, top-k
activating items, and AP for a label — as tidy pandas tables (docs/saes.md).

    stats = LatentStats.compute(model, sae, SynthSocial("test_balanced"))     # one extraction pass
    stats.summary()                      # latent, frequency, mean, max
    stats.group_means("gender")          # latent, group, n, mean, frequency
    stats.top_k(5, latents=[3, 17])      # latent, rank, index, value
    stats.ap("gender")                   # latent, auroc, ap  (one-vs-rest rows with a class column for >2 classes)

The latents are `{site}.hook_sae_acts_post` of the SAE spliced at its site: `compute` splices it (with the
error term, so the model's own activations are untouched) and extracts that hook in one pass with
`workbench.activations.extract` / `extract_text`; `from_store` reads a store extracted that way, or any
[n, d_sae] tensor goes straight into `LatentStats(acts, labels)`. Everything is held in memory
(n × d_sae floats).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch
from torch import Tensor

from workbench.models.hook_names import sae_hook_name
from workbench.models.splice import sae_site

__all__ = ["LatentStats", "latent_hook"]


def latent_hook(site: str) -> str:
    """The hook holding the latents of the SAE spliced at `site`: `{site}.hook_sae_acts_post`."""
    return sae_hook_name(site, "sae_acts_post")


class LatentStats:
    """Per-latent statistics of SAE latents `acts` [n, d_sae] over n items (images or prompts).

    labels: {key: [n] ints} (e.g. a store's labels); label_names: {key: [name of value 0, 1, ...]} used for the
    group column. threshold: a latent fires on an item when its activation is > threshold. reduce: "max" or
    "mean" turns token latents [n, pos, d_sae] into one row per item (the latent's max / mean over tokens).
    """

    def __init__(self, acts: Tensor, labels: Optional[Mapping[str, Tensor]] = None,
                 label_names: Optional[Mapping[str, Sequence[str]]] = None, site: Optional[str] = None,
                 threshold: float = 0.0, reduce: Optional[str] = None):
        if not isinstance(acts, Tensor):
            raise TypeError(f"acts must be a tensor [n, d_sae], got {type(acts).__name__}")
        if reduce not in (None, "max", "mean"):
            raise ValueError(f"reduce must be None, 'max' or 'mean' (over the token axis), got {reduce!r}")
        if reduce is not None and acts.ndim == 3:
            acts = acts.amax(1) if reduce == "max" else acts.mean(1)
        if acts.ndim != 2:
            hint = (" (one row per token: pass reduce='max' or 'mean', or extract with position='pooled' or an "
                    "int position)" if acts.ndim == 3 else "")
            raise ValueError(f"acts must be [n, d_sae], got shape {list(acts.shape)}{hint}")
        if acts.shape[0] == 0 or acts.shape[1] == 0:
            raise ValueError(f"acts is empty (shape {list(acts.shape)}); nothing to summarise")
        if not acts.is_floating_point() or not bool(torch.isfinite(acts).all()):
            raise ValueError("acts must be finite floating-point latents")
        self.acts = acts.detach().float().cpu()
        self.labels = {k: _check_labels(v, k, self.acts.shape[0]) for k, v in (labels or {}).items()}
        self.label_names = {k: list(v) for k, v in (label_names or {}).items()}
        self.site, self.threshold = site, float(threshold)

    @property
    def n(self) -> int:
        return self.acts.shape[0]

    @property
    def d_sae(self) -> int:
        return self.acts.shape[1]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_store(cls, store, site: Optional[str] = None, threshold: float = 0.0,
                   reduce: Optional[str] = None) -> "LatentStats":
        """From an ActivationStore holding `{site}.hook_sae_acts_post` (the one such site if `site` is None),
        with the store's labels and label names."""
        if site is None:
            found = [s for s in store.sites if s.endswith(".hook_sae_acts_post")]
            if len(found) != 1:
                raise ValueError(f"pass site=...: the store holds {len(found)} SAE latent sites ({found}) among "
                                 f"{store.sites}")
            hook = found[0]
        else:
            hook = site if site.endswith(".hook_sae_acts_post") else latent_hook(site)
            if hook not in store.sites:
                raise ValueError(f"the store has no {hook!r}; its sites are {store.sites}")
        return cls(store[hook], store.labels, store.label_names, site=hook[: -len(".hook_sae_acts_post")],
                   threshold=threshold, reduce=reduce)

    @classmethod
    def compute(cls, model, sae, data, site: Optional[str] = None, position="pooled", batch_size: int = 64,
                cache_dir=None, labels: Optional[Mapping[str, Tensor]] = None, threshold: float = 0.0,
                reduce: Optional[str] = None, progress: bool = False, **extract_kwargs) -> "LatentStats":
        """One extraction pass of the SAE's latents over `data`: a dataset of images (as `extract` takes) or a
        list of prompts (text-tower sites, as `extract_text` takes; pass `labels` for them).

        The SAE is spliced at `site` (default: the site it records) for the pass, with the error term, unless
        one is spliced there already. position: "pooled" (the CLS / EOT token), an int, or "all" with
        reduce="max" / "mean" (over tokens). `cache_dir`: keep the latents in a store on disk.
        """
        from workbench.activations import extract, extract_text

        site = sae_site(sae, site)
        hook = latent_hook(site)
        text = site.startswith("text.")
        if text and (isinstance(data, str) or not isinstance(data, Sequence)
                     or not all(isinstance(p, str) for p in data)):
            raise TypeError(f"{site!r} is a text-tower site: pass the prompts as a list of strings")
        spliced = model.spliced_saes().get(site)
        if spliced is not None and spliced is not sae:
            raise ValueError(f"another SAE is spliced at {site!r}; remove it first (model.remove_saes({site!r}))")
        run = extract_text if text else extract
        kwargs = dict(batch_size=batch_size, cache_dir=cache_dir, position=position, progress=progress,
                      **extract_kwargs)
        if spliced is None:
            with model.saes((sae, site), use_error_term=True):
                store = run(model, data, [hook], **kwargs)
        else:
            store = run(model, data, [hook], **kwargs)
        return cls(store[hook], labels if labels is not None else store.labels,
                   store.label_names if labels is None else None, site=site, threshold=threshold, reduce=reduce)

    # ------------------------------------------------------------------ tables
    def firing(self) -> Tensor:
        """bool [n, d_sae]: where each latent fires."""
        return self.acts > self.threshold

    def summary(self):
        """One row per latent: latent, frequency (fraction of items it fires on), mean (over all items), max."""
        import pandas as pd

        return pd.DataFrame({"latent": range(self.d_sae),
                             "frequency": self.firing().double().mean(0).numpy(),
                             "mean": self.acts.double().mean(0).numpy(),
                             "max": self.acts.max(0).values.double().numpy()})

    def group_means(self, label: str):
        """One row per latent and group of `label`: latent, group (its name if known), n (items in the group),
        mean (activation over the group's items), frequency (fraction of them it fires on)."""
        import pandas as pd

        codes = self._label(label)
        values = torch.unique(codes)
        onehot = (codes[:, None] == values[None, :]).double()  # [n, groups]: every group in one matmul
        counts = onehot.sum(0)
        means = (onehot.T @ self.acts.double()) / counts[:, None]  # [groups, d_sae]
        freqs = (onehot.T @ self.firing().double()) / counts[:, None]
        names = self.label_names.get(label)
        groups = [names[v] if names is not None and 0 <= v < len(names) else v for v in values.tolist()]
        g, d = len(groups), self.d_sae
        return pd.DataFrame({"latent": list(range(d)) * g,
                             "group": [x for x in groups for _ in range(d)],
                             "n": counts.long().repeat_interleave(d).numpy(),
                             "mean": means.reshape(-1).numpy(),
                             "frequency": freqs.reshape(-1).numpy()})

    def top_k(self, k: int = 10, latents: Union[None, int, Sequence[int]] = None):
        """The k items activating each latent most: latent, rank (0 = highest), index (the item's row in the
        data), value. Ties keep the lower index first; latents: which ones (default all)."""
        import pandas as pd

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        cols = self._latents(latents)
        k = min(k, self.n)
        sub = self.acts[:, cols]
        # a stable descending sort: equal values keep the lower item index first
        order = torch.sort(sub, dim=0, descending=True, stable=True).indices[:k]  # [k, len(cols)]
        values = torch.gather(sub, 0, order)
        return pd.DataFrame({"latent": torch.tensor(cols).repeat_interleave(k).numpy(),
                             "rank": list(range(k)) * len(cols),
                             "index": order.T.reshape(-1).numpy(),
                             "value": values.T.reshape(-1).double().numpy()})

    def ap(self, label: str, latents: Union[None, int, Sequence[int]] = None):
        """AUROC and AP of each latent's activation as a score for `label` (`workbench.metrics.unit_scores`,
        batched over latents): binary labels → one row per latent (positive class = the larger value); more
        classes → one-vs-rest rows with a `class` column (its name if known)."""
        from workbench.metrics import unit_scores

        codes = self._label(label)
        cols = self._latents(latents)
        table = unit_scores(self.acts[:, cols], codes, unit_index=["latent"])
        table["latent"] = [cols[i] for i in table["latent"]]
        names = self.label_names.get(label)
        if "class" in table and names is not None:
            table["class"] = [names[c] if 0 <= c < len(names) else c for c in table["class"]]
        return table

    # ------------------------------------------------------------------ checks
    def _label(self, label: str) -> Tensor:
        if label not in self.labels:
            raise KeyError(f"no label {label!r}; labels: {sorted(self.labels) or 'none (pass labels=...)'}")
        return self.labels[label]

    def _latents(self, latents) -> list[int]:
        if latents is None:
            return list(range(self.d_sae))
        cols = [latents] if isinstance(latents, int) and not isinstance(latents, bool) else list(latents)
        bad = [c for c in cols if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.d_sae]
        if bad or not cols:
            raise ValueError(f"latents must be ints in 0..{self.d_sae - 1}, got {bad or cols}")
        return cols

    def __repr__(self) -> str:
        return (f"LatentStats(site={self.site!r}, n={self.n}, d_sae={self.d_sae}, labels={sorted(self.labels)}, "
                f"threshold={self.threshold:g})")


def _check_labels(v, key: str, n: int) -> Tensor:
    t = torch.as_tensor(v)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"labels[{key!r}] must be [n={n}], got shape {list(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"labels[{key!r}] must be integers (class codes), got {t.dtype}")
    return t.long().cpu()
