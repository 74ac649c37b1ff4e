"""What a dashboard measures, cached once, and the observable state every widget reads (docs/dashboards.md).

A dashboard is a `DashboardState` (plain Python: toggle, set an op, export / load a spec) plus widgets that
observe it; nothing here imports ipywidgets, so the same logic runs from a script or a test:

    gallery = Gallery.capture(model, SynthSocial("test_balanced"))       # one forward pass, cached
    protocol = LiveProtocol(model, gallery, attribute="gender")            # queries encoded once
    state = HeadState(model, gallery, protocol, finding=finding)           # workbench.dashboards.heads
    state.toggle(5, 1); state.metrics["gender_ndkl"]

Exact updates without a forward pass: `Gallery.capture` stores the last image block at the pooled token
(`workbench.models.cls_tail.CLSTail`, the path `evaluate_variants` uses), so an edit confined to that block's
pooled row — or at `hook_image_embed` — is recomputed from the cache; anything else runs a forward pass over
the gallery (its preprocessed images are kept in memory when they fit in `keep_inputs_mb`).
Metrics are the `workbench.metrics` functions with the protocol of `evaluate_variants` (same keys:
`zero_shot_accuracy`, `map`, `{g}_ndkl` (SISPI), `{g}_maxskew_at_{top_k}`), without the bootstrap.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

__all__ = ["Gallery", "LiveProtocol", "DashboardState", "thumbnail_array"]


class Gallery:
    """A gallery cached for live evaluation.

    labels: {key: LongTensor [n]}; label_names: {key: class names}; image_embed: [n, d_embed] the clean
    (unnormalised) image embeddings; tail: `CLSTail` of the last block (None for an average-pooled tower);
    dataset: the dataset the images come from (None for a gallery of cached activations only);
    inputs: the preprocessed batches kept in memory for forward passes (None: re-read from the dataset).
    """

    def __init__(self, model, labels: Mapping[str, Tensor], label_names: Mapping[str, Sequence[str]],
                 image_embed: Tensor, tail=None, dataset=None, inputs: Optional[list] = None,
                 batch_size: int = 256):
        n = image_embed.shape[0]
        if image_embed.ndim != 2 or n == 0:
            raise ValueError(f"image_embed must be [n, d_embed] with n ≥ 1, got shape {tuple(image_embed.shape)}")
        self.labels = {k: torch.as_tensor(v).long() for k, v in labels.items()}
        for k, v in self.labels.items():
            if tuple(v.shape) != (n,):
                raise ValueError(f"labels[{k!r}] has shape {tuple(v.shape)}, expected ({n},): one per image")
        self.label_names = {k: tuple(v) for k, v in label_names.items()}
        self.model, self.image_embed, self.tail = model, image_embed, tail
        self.dataset, self.inputs, self.batch_size = dataset, inputs, batch_size

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    def __repr__(self) -> str:
        how = "CLSTail cache" if self.tail is not None else "no cache (average pooling)"
        source = "images in memory" if self.inputs is not None else (
            "images re-read from the dataset" if self.dataset is not None else "cached activations only")
        return f"Gallery(n={len(self)}, labels={sorted(self.labels)}, {how}, {source})"

    @classmethod
    @torch.no_grad()
    def capture(cls, model, data, batch_size: int = 256, keep_inputs_mb: float = 1024,
                progress: bool = True) -> "Gallery":
        """One forward pass over `data` (a dataset yielding (image, {label: int}), raw or preprocessed as
        `extract` takes it): labels, clean embeddings and, for a CLS-pooled tower, the `CLSTail` cache.
        The preprocessed images stay in memory for forward passes when they take at most `keep_inputs_mb`."""
        from tqdm.auto import tqdm

        from workbench.evaluation import input_batches
        from workbench.models.cls_tail import CLSTail

        if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            raise TypeError("data must be a dataset yielding (image, {label: int}) (e.g. SynthSocial('test_balanced')),"
                            f" got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("the gallery is empty: data has no images")
        collected: dict[str, list] = {}
        kept: Optional[list] = []
        budget = keep_inputs_mb * 2 ** 20
        bar = tqdm(total=len(data), desc="cache gallery", unit="image", disable=not progress)

        def batches():
            nonlocal kept
            used = 0
            for x, lab in input_batches(model, data, batch_size):
                for k, v in lab.items():
                    collected.setdefault(k, []).append(torch.as_tensor(v))
                used += x.numel() * x.element_size()
                if kept is not None and used <= budget:
                    kept.append(x)
                elif kept is not None:
                    kept = None  # too large to keep: forward passes re-read the dataset
                bar.update(len(x))
                yield x

        if model.visual.cfg.pool == "tok":
            tail = CLSTail.capture(model, batches())
            embed = tail.image_embed.float().cpu()
        else:
            tail = None
            embed = torch.cat([model.encode_image(x.to(model.device)).float().cpu() for x in batches()])
        bar.close()
        labels = {k: torch.cat(v).long() for k, v in collected.items()}
        names = getattr(data, "label_names", None)
        if names is None:
            from workbench.data.vocab import LABEL_NAMES as names
        return cls(model, labels, names, embed, tail=tail, dataset=data, inputs=kept, batch_size=batch_size)

    def batches(self):
        """Preprocessed image batches for a forward pass (from memory, else re-read from the dataset)."""
        if self.inputs is not None:
            return iter(self.inputs)
        if self.dataset is None:
            raise ValueError("this gallery holds cached activations only, and the current edits need a forward pass "
                             "over the images (they are not confined to the last block's pooled row or the image "
                             "embedding): build the dashboard from a dataset")
        from workbench.evaluation import input_batches

        return (x for x, _ in input_batches(self.model, self.dataset, self.batch_size))

    @torch.no_grad()
    def forward(self) -> Tensor:
        """[n, d_embed] unnormalised embeddings of a forward pass under whatever hooks are active."""
        model = self.model
        return torch.cat([model.encode_image(x.to(model.device)).float().cpu() for x in self.batches()])

    def image(self, index: int):
        """The gallery's image `index` as an array [3, h, w] for display, or None without a dataset."""
        if self.dataset is None:
            return None
        return thumbnail_array(self.dataset[int(index)][0])


def thumbnail_array(image):
    """A displayable uint8 array [3, h, w] from a PIL image, a uint8 tensor or a float tensor (values outside
    [0, 1], e.g. a preprocessed image, are rescaled to the image's own range)."""
    import numpy as np

    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()
    array = np.asarray(image.detach().cpu().float() if isinstance(image, Tensor) else image)
    if array.dtype == np.uint8:
        return array
    if array.min() < 0 or array.max() > 1:
        array = (array - array.min()) / max(float(array.max() - array.min()), 1e-12)
    return (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


class LiveProtocol:
    """Queries and labels fixed once; `metrics(embeddings)` measures a variant in milliseconds.

    queries: {`target` class: prompt} or one prompt per class (default "a photo of a {class}"), encoded once.
    attribute: the protected label; groups: every label whose NDKL / MaxSkew is shown (default (attribute,)).
    top_k: MaxSkew@top_k over the whole gallery (capped at the gallery size, as `evaluate_variants` does).
    """

    def __init__(self, model, gallery: Gallery, queries=None, attribute: str = "gender", target: str = "occupation",
                 groups: Optional[Sequence[str]] = None, top_k: int = 100):
        from workbench.evaluation import query_prompts

        names = gallery.label_names
        groups = (attribute,) if groups is None else ((groups,) if isinstance(groups, str) else tuple(groups))
        if attribute not in groups:
            groups = (attribute, *groups)
        for key, role in [(target, "target"), *[(g, "group") for g in groups]]:
            if key not in gallery.labels:
                raise ValueError(f"the gallery has no label {key!r} (the {role}); it has {sorted(gallery.labels)}")
            if key not in names:
                raise ValueError(f"no class names for label {key!r}: the dataset's label_names has {sorted(names)}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        classes = tuple(names[target])
        if queries is None:
            queries = {c: f"a photo of a {c}" for c in classes}
        self.prompts, self.codes = query_prompts(queries, classes, target)
        self.attribute, self.target, self.groups = attribute, target, groups
        self.top_k = min(top_k, len(gallery))
        self.labels = gallery.labels
        self.group_names = {g: tuple(names[g]) for g in groups}
        y = gallery.labels[target]
        self.relevant = (y[None, :] == torch.tensor(self.codes)[:, None]).numpy()  # [Q, n]
        empty = [self.prompts[i] for i, r in enumerate(self.relevant) if not r.any()]
        if empty:
            raise ValueError(f"no gallery image is relevant to the queries {empty}: drop them (queries={{class: "
                             "prompt}} for the classes present)")
        self.queried = self.relevant.any(0)
        position = {c: i for i, c in enumerate(self.codes)}
        self.query_of_image = torch.tensor([position.get(int(v), -1) for v in y[torch.from_numpy(self.queried)]])
        with torch.no_grad():
            self.text = model.encode_text(self.prompts, normalize=True).float().cpu()  # [Q, d_embed]

    def __repr__(self) -> str:
        return (f"LiveProtocol({len(self.prompts)} queries on {self.target!r}, groups={list(self.groups)}, "
                f"top_k={self.top_k})")

    @property
    def metric_names(self) -> list[str]:
        return ["zero_shot_accuracy", "map"] + [f"{g}_{m}" for g in self.groups
                                                 for m in ("ndkl", f"maxskew_at_{self.top_k}")]

    def similarity(self, embeddings: Tensor) -> Tensor:
        """[Q, n] query-image similarities of L2-normalised embeddings [n, d_embed]."""
        return self.text @ embeddings.T

    def metrics(self, embeddings: Tensor) -> dict[str, float]:
        """{metric: value} of L2-normalised embeddings [n, d_embed], with `workbench.metrics`."""
        from workbench.metrics import max_skew_at_k, mean_average_precision, ndkl, zero_shot_accuracy

        sim = self.similarity(embeddings).numpy()
        out = {"zero_shot_accuracy": zero_shot_accuracy(sim.T[self.queried], self.query_of_image),
               "map": mean_average_precision(sim, self.relevant)}
        for g in self.groups:
            codes, size = self.labels[g].numpy(), len(self.group_names[g])
            out[f"{g}_ndkl"] = ndkl(sim, codes, n_groups=size, relevant_mask=self.relevant)
            out[f"{g}_maxskew_at_{self.top_k}"] = max_skew_at_k(sim, codes, k=self.top_k, n_groups=size)
        return {k: float(v) for k, v in out.items()}

    def ranking(self, embeddings: Tensor, query: int, k: int) -> list[int]:
        """The top-k gallery indices for query `query` (ties to the lower index, as `workbench.metrics.rank`)."""
        from workbench.metrics import rank

        sim = (self.text[query:query + 1] @ embeddings.T).numpy()
        return [int(i) for i in rank(sim, min(k, embeddings.shape[0]))[0]]


class DashboardState:
    """The observable state of a dashboard: the current edits, their embeddings and metrics.

    Subclasses define `edits()` and `_embed()`. Every change calls `refresh()`, which recomputes the metrics and
    calls each observer `fn(state)`; `with state.batch():` groups several changes into one refresh.
    Attributes after a refresh: `metrics` {metric: value}, `baseline` (the unedited model's), `embeddings`
    [n, d_embed] (normalised), `path` ("baseline" | "cached" | "forward": how they were computed) and
    `last_update_s` (seconds the refresh took).
    """

    def __init__(self, model, gallery: Gallery, protocol: LiveProtocol):
        if not isinstance(gallery, Gallery):
            raise TypeError(f"gallery must be a workbench.dashboards.Gallery, got {type(gallery).__name__}")
        if not isinstance(protocol, LiveProtocol):
            raise TypeError(f"protocol must be a workbench.dashboards.LiveProtocol, got {type(protocol).__name__}")
        self.model, self.gallery, self.protocol = model, gallery, protocol
        self.baseline_embeddings = torch.nn.functional.normalize(gallery.image_embed.float(), dim=-1)
        self.baseline = protocol.metrics(self.baseline_embeddings)
        self.embeddings, self.metrics, self.path = self.baseline_embeddings, dict(self.baseline), "baseline"
        self.last_update_s = 0.0
        self.query = 0
        self.message = ""
        self._observers: list[Callable] = []
        self._held = 0

    # ------------------------------------------------------------------ observers
    def observe(self, fn: Callable[["DashboardState"], Any]) -> None:
        """Call `fn(state)` after every refresh."""
        if not callable(fn):
            raise TypeError(f"observe needs a callable fn(state), got {type(fn).__name__}")
        self._observers.append(fn)

    @contextmanager
    def batch(self):
        """Group changes: one refresh at the end of the block."""
        self._held += 1
        try:
            yield self
        finally:
            self._held -= 1
        if not self._held:
            self.refresh()

    def _changed(self) -> None:
        if not self._held:
            self.refresh()

    def refresh(self) -> None:
        """Recompute embeddings and metrics for the current edits and notify the observers."""
        start = time.perf_counter()
        emb, self.path = self._embed()
        self.embeddings = emb
        self.metrics = self.protocol.metrics(emb) if self.path != "baseline" else dict(self.baseline)
        self.last_update_s = time.perf_counter() - start
        for fn in self._observers:
            fn(self)

    # ------------------------------------------------------------------ to override
    def edits(self) -> list:
        raise NotImplementedError

    def _embed(self) -> tuple[Tensor, str]:
        raise NotImplementedError

    # ------------------------------------------------------------------ reading
    def set_query(self, query: Union[int, str]) -> None:
        """Choose the gallery's query by position or prompt (does not change the metrics)."""
        prompts = self.protocol.prompts
        if isinstance(query, str):
            if query not in prompts:
                raise ValueError(f"unknown query {query!r}; queries: {prompts}")
            query = prompts.index(query)
        if isinstance(query, bool) or not isinstance(query, int) or not 0 <= query < len(prompts):
            raise ValueError(f"query must be a prompt or an index in 0..{len(prompts) - 1}, got {query!r}")
        self.query = query
        for fn in self._observers:
            fn(self)

    def metrics_table(self):
        """Tidy table: metric, baseline, current, change."""
        import pandas as pd

        rows = [{"metric": m, "baseline": self.baseline[m], "current": self.metrics[m],
                 "change": self.metrics[m] - self.baseline[m]} for m in self.protocol.metric_names]
        return pd.DataFrame(rows)

    def top(self, k: int = 8, which: str = "current", query: Optional[int] = None) -> list[int]:
        """Top-k gallery indices of the chosen query for the current (or "baseline") embeddings."""
        if which not in ("current", "baseline"):
            raise ValueError(f"which must be 'current' or 'baseline', got {which!r}")
        emb = self.embeddings if which == "current" else self.baseline_embeddings
        return self.protocol.ranking(emb, self.query if query is None else query, k)

    def group_mix(self, k: int = 8, group: Optional[str] = None) -> dict[str, list[str]]:
        """{"baseline": [...], "current": [...]}: the `group` class name of each of the top-k images."""
        group = group or self.protocol.attribute
        names, codes = self.gallery.label_names[group], self.gallery.labels[group]
        return {w: [str(names[int(codes[i])]) for i in self.top(k, w)] for w in ("baseline", "current")}

    def gallery_figure(self, k: int = 8, group: Optional[str] = None):
        """Plotly figure: the top-k images of the chosen query before / after, each row with its group mix
        (`workbench.viz.plot_retrieval_mix`)."""
        from workbench.viz import plot_retrieval_mix

        group = group or self.protocol.attribute
        mix = self.group_mix(k, group)
        thumbs = {w: [self.gallery.image(i) for i in self.top(k, w)] for w in ("baseline", "current")}
        if any(t is None for ts in thumbs.values() for t in ts):
            thumbs = None
        return plot_retrieval_mix(mix, self.gallery.label_names[group], self.protocol.prompts[self.query],
                                  thumbnails=thumbs)

    # ------------------------------------------------------------------ specs
    def to_spec(self, **provenance):
        raise NotImplementedError

    def save_spec(self, path: Union[str, Path], **provenance) -> Path:
        """Write the current edits as an InterventionSpec JSON (and its sidecar); returns the path.
        Raises ValueError when nothing is edited (an empty spec would silently do nothing)."""
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"spec files end in .json, got {str(path)!r}")
        if not self.edits():
            raise ValueError("nothing to export: no edit is switched on (toggle a head or a latent first)")
        from workbench.files import check_writable_dir

        check_writable_dir(path.parent, "spec folder")
        return self.to_spec(**provenance).save(path)
