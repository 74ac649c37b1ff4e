"""Streaming activation extraction over a dataset (image tower) or a list of prompts (text tower).

One forward pass per batch collects every requested site: a storing hook (which returns its input, so
the fused attention path stays fast and any intervention hooks already on the model still apply) is put
on each hook point the sites need. Token dimensions are reduced inside the hook (`position`), so only
what is kept leaves the forward pass.

Memory: with `cache_dir` the results go through one preallocated shard buffer that is written to disk
when full, so peak memory does not grow with the dataset; without it, one preallocated tensor per site
holds everything. The cache layout, checksums, resuming and errors: docs/activations.md.
"""
from __future__ import annotations

import json
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from workbench.models.hook_names import (
    act_name,
    canonical_position,
    check_hook_name,
    pooled_index,
    select_position,
)

from .sources import ImageSource, TextSource, collate_items, sample_indices  # noqa: F401 (re-exported)
from .store import (
    DTYPES,
    MANIFEST,
    SCHEMA,
    ActivationStore,
    RowBuffer,
    check_compatible,
    clear_cache_dir,
    dtype_name,
    identity,
    merge_rank_progress,
    read_manifest,
    remove_leftovers,
    remove_rank_progress,
    save_shard,
    shard_metadata,
    shard_name,
    shard_rows,
    sort_out_shards,
    write_json_atomic,
)

# Special sites computed from hooks rather than read from one: value = the space of head_contributions.
SPECIAL_SITES = {"head_contributions": "embed", "head_contributions:resid": "resid"}
DEFAULT_SHARD_BYTES = 128 * 2**20  # default shard size target; a shard is the unit of memory and of resuming

Position = Union[str, int]


# ---------------------------------------------------------------------------------------------- sites
def resolve_sites(model, sites: Union[str, Sequence[str]], tower: str) -> list[str]:
    """Validate site names for `tower` ("image" or "text"); duplicates are dropped, order kept."""
    sites = [sites] if isinstance(sites, str) else list(sites)
    if not sites:
        raise ValueError(f"no sites given; pass hook names such as 'blocks.0.hook_resid_post' or {list(SPECIAL_SITES)}")
    for site in sites:
        if not isinstance(site, str):
            raise TypeError(f"sites must be strings (hook names), got {site!r} of type {type(site).__name__}")
        if site in SPECIAL_SITES:
            if tower == "text":
                raise ValueError(f"{site!r} is an image-tower site; extract_text supports the text tower's "
                                 "hook names ('text.…') only")
            continue
        check_hook_name(model, site, extra=list(SPECIAL_SITES))
        if tower == "image" and site.startswith("text."):
            raise ValueError(f"{site!r} is a text-tower hook but extract() runs the image tower; "
                             "use extract_text(model, prompts, sites) for text hooks")
        if tower == "text" and not site.startswith("text."):
            raise ValueError(f"{site!r} is an image-tower hook but extract_text() runs the text tower; "
                             "use extract(model, dataset, sites) for image hooks, or a 'text.' hook name")
    return list(dict.fromkeys(sites))


def hooks_for_site(model, site: str) -> list[str]:
    """The hook points a site reads."""
    if site not in SPECIAL_SITES:
        return [site]
    names = [act_name("cls_result", l) for l in range(model.visual.cfg.n_layers)]
    return names + ([act_name("ln_post_scale")] if SPECIAL_SITES[site] == "embed" else [])


class SiteCollector:
    """Runs ONE forward pass per batch and returns every site's value, token axes already reduced.

    Call with images [b, 3, H, W] (image tower) or token ids [b, n_ctx] (text tower); returns
    {site: [b, *shape]} on the model's device.
    """

    def __init__(self, model, sites: Sequence[str], position: Position, tower: str):
        self.model, self.sites, self.tower = model, list(sites), tower
        self.position = canonical_position(position, allow_int=True)
        self.hook_names = list(dict.fromkeys(h for s in self.sites for h in hooks_for_site(model, s)))
        if any(s in SPECIAL_SITES for s in self.sites):
            from workbench.models.decompose import _check_cls_pooling

            _check_cls_pooling(model.visual)
        self._captured: dict[str, Tensor] = {}
        self._pooled: Optional[Tensor] = None

    def _store(self, t: Tensor, hook) -> Tensor:
        kept = select_position(t, hook.name, self.position, self._pooled)
        # clone a reduced view so the full-sequence tensor can be freed during the forward pass
        self._captured[hook.name] = t.detach() if kept is t else kept.detach().clone()
        return t

    def _head_contributions(self, space: str) -> Tensor:
        L = self.model.visual.cfg.n_layers
        heads = torch.stack([self._captured[act_name("cls_result", l)] for l in range(L)], dim=1)
        if space == "resid":
            return heads  # [b, L, H, d_model]
        from workbench.models.decompose import project_to_embed

        return project_to_embed(self.model.visual, heads, self._captured[act_name("ln_post_scale")])  # [b, L, H, d_embed]

    @torch.no_grad()
    def __call__(self, inputs: Tensor) -> dict[str, Tensor]:
        self._captured = {}
        fwd_hooks = [(name, self._store) for name in self.hook_names]
        try:
            if self.tower == "image":
                self.model.run_with_hooks(inputs, fwd_hooks=fwd_hooks)
            else:
                inputs = inputs.to(self.model.device)
                self._pooled = pooled_index(self.model, "text", inputs)
                self.model.run_with_hooks(text=inputs, fwd_hooks=fwd_hooks)
            return {s: self._head_contributions(SPECIAL_SITES[s]) if s in SPECIAL_SITES else self._captured[s]
                    for s in self.sites}
        finally:
            self._captured, self._pooled = {}, None


# ---------------------------------------------------------------------------------------------- planning
def plan_batches(start: int, n: int, batch_size: int, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges [start, n) cut into batches of at most batch_size that never straddle a shard boundary."""
    plan = []
    while start < n:
        stop = min(start + batch_size, (start // shard_size + 1) * shard_size, n)
        plan.append((start, stop))
        start = stop
    return plan


def default_shard_size(shapes: Mapping[str, Sequence[int]], n_labels: int, dtype: torch.dtype, batch_size: int) -> int:
    """Items per shard so that a shard takes about DEFAULT_SHARD_BYTES (a multiple of batch_size, ≥ batch_size)."""
    item_bytes = sum(math.prod(s) for s in shapes.values()) * torch.empty((), dtype=dtype).element_size() + 8 * n_labels
    per_shard = DEFAULT_SHARD_BYTES // max(item_bytes, 1)
    return max(batch_size, per_shard // batch_size * batch_size)


def _check_args(batch_size, position, shard_size, num_workers) -> Position:
    """Check the common arguments; returns the canonical position ("cls" becomes "pooled")."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if shard_size is not None and (not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1):
        raise ValueError(f"shard_size must be a positive int (items per shard) or None, got {shard_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
    return canonical_position(position, allow_int=True)


def _probe(collector: SiteCollector, source) -> tuple[dict[str, list[int]], list[str]]:
    """Per-item site shapes and label keys, from a forward pass on the first item (also validates positions)."""
    inputs, labels = source.first()
    return {s: list(v.shape[1:]) for s, v in collector(inputs).items()}, list(labels)


def _check_shapes(acts: Mapping[str, Tensor], shapes: Mapping[str, Sequence[int]]) -> None:
    for site, value in acts.items():
        if list(value.shape[1:]) != list(shapes[site]):
            raise ValueError(f"site {site!r} produced items of shape {list(value.shape[1:])} but the cache holds "
                             f"{list(shapes[site])}; use a new cache_dir or overwrite=True")


# ---------------------------------------------------------------------------------------------- entry points
def extract(model, dataset, sites: Union[str, Sequence[str]], batch_size: int = 64, device=None,
            cache_dir=None, dtype: torch.dtype = torch.float32, position: Position = "pooled", num_workers: int = 0,
            progress: bool = True, shard_size: Optional[int] = None, overwrite: bool = False,
            dataset_id: Optional[str] = None, preprocess: Optional[bool] = None) -> ActivationStore:
    """Run the image tower over `dataset` and collect activations at `sites`, one forward pass per batch.

    Args:
        model: a HookedCLIP. Hooks already on it (e.g. an intervention) stay active during extraction.
        dataset: `ds[i] -> (image, {label: int})` (or a bare image); labels are stored alongside. The image
            is either the model's input (the dataset's transform is `model.preprocess`) or a raw image that
            extract preprocesses itself: a PIL image, a uint8 tensor, or a float tensor in [0, 1] from a dataset
            whose `transform` is None (as `workbench.data` datasets yield without one). See docs/inputs.md.
        preprocess: None (default) decides as above; True applies `model.preprocess` to every item; False
            takes the items as model inputs. Model inputs are checked per batch (the model's input size,
            finite values, and values that look like raw [0, 1] or 0–255 pixels unless the dataset's transform
            is `model.preprocess` or preprocess=False); each failure is a ValueError saying what to pass.
        sites: hook names (`model.hook_dict`), or "head_contributions" ([L, H, d_embed] per item: each
            head's direct contribution to the image embedding at CLS) / "head_contributions:resid" ([L, H, d_model]).
        position: token reduction for hooks with a token axis: "pooled" (the CLS token, position 0; "cls" is an
            alias), "all", or an int (see docs/hooks.md).
            Attention patterns are reduced over the query axis.
        dtype: storage dtype of the activations (labels are int64).
        cache_dir: folder for safetensors shards + manifest.json; memory then stays at one shard. An existing
            cache with the same model, dataset, sites, dtype and position is resumed: every listed shard is
            verified (size, header, sha256) and only the missing or damaged shards are computed (a finished,
            intact one is returned without any forward pass); a different one raises ValueError unless
            `overwrite=True`. Without cache_dir, everything is kept in (preallocated) memory.
        shard_size: items per shard (default: about 128 MiB of activations, a multiple of batch_size).
        dataset_id: names the dataset in the manifest instead of a content hash of 8 of its items (pass one
            when the dataset's transform is random, or its items are costly to read twice).
        device: where to run (the model is moved there); default: the model's device.
        progress: show a tqdm bar (images/s).

    Returns an ActivationStore: `store[site]` [n, *shape], `store.labels[key]` [n].
    A fresh run makes one extra forward pass on one item to learn the sites' shapes.
    """
    position = _check_args(batch_size, position, shard_size, num_workers)
    source = ImageSource(model, dataset, num_workers, dataset_id, preprocess)
    return _extract(model, source, sites, batch_size=batch_size, device=device, cache_dir=cache_dir, dtype=dtype,
                    position=position, progress=progress, shard_size=shard_size, overwrite=overwrite)


def extract_text(model, prompts: Sequence[str], sites: Union[str, Sequence[str]], batch_size: int = 256,
                 device=None, cache_dir=None, dtype: torch.dtype = torch.float32, position: Position = "pooled",
                 progress: bool = True, shard_size: Optional[int] = None, overwrite: bool = False,
                 dataset_id: Optional[str] = None, truncate: bool = False) -> ActivationStore:
    """Run the text tower over `prompts` and collect activations at text hooks ("text.…").

    position "pooled" (alias "cls") takes the token the tower pools (the EOT token for open_clip's argmax pooling), the one
    `text.blocks.{l}.attn.hook_cls_result` refers to; "all" keeps every token [n_ctx, …]; an int takes that
    position. Other arguments as in `extract`; the store has no labels.

    `prompts` must be a list of strings; all are checked before any forward pass, as in `model.tokenize`:
    a prompt longer than the context raises a ValueError naming it unless `truncate=True` (cut, one
    warning), and words the model never saw are named in one UnknownWordsWarning (docs/inputs.md).
    """
    position = _check_args(batch_size, position, shard_size, 0)
    if model.text is None:
        raise ValueError("this model has no text tower")
    return _extract(model, TextSource(model, prompts, dataset_id, truncate), sites, batch_size=batch_size, device=device,
                    cache_dir=cache_dir, dtype=dtype, position=position, progress=progress, shard_size=shard_size,
                    overwrite=overwrite)


def _extract(model, source, sites, *, batch_size, device, cache_dir, dtype, position, progress, shard_size,
             overwrite) -> ActivationStore:
    dtype_str = dtype_name(dtype)
    if device is not None and torch.device(device) != model.device:
        model.to(device)
    sites = resolve_sites(model, sites, source.tower)
    collector = SiteCollector(model, sites, position, source.tower)
    header = _header(model, source, dtype_str, position, batch_size)
    if cache_dir is None:
        return _extract_in_memory(collector, source, header, dtype, progress)
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_cache_dir(root)
    remove_leftovers(root)
    manifest = _resume_or_start(root, collector, source, header, shard_size)
    _extract_missing_shards(root, manifest, collector, source, dtype, batch_size, progress)
    return ActivationStore.open(root)


def _header(model, source, dtype_str: str, position, batch_size: int) -> dict:
    """The manifest's fields that describe the request (model, dataset, dtype, position, batch size)."""
    import workbench

    header = {
        "schema": SCHEMA, "tower": source.tower,
        "model": {"name": model.name, "pretrained": model.pretrained, "fingerprint": model.fingerprint()},
        "dataset": source.describe(), "dtype": dtype_str, "position": position, "batch_size": batch_size,
        "workbench_version": workbench.__version__,
    }
    return json.loads(json.dumps(header))  # tuples → lists, so it compares equal to a manifest read back


def _new_manifest(header: dict, sites: Sequence[str], shapes: Mapping[str, Sequence[int]], label_keys: list[str],
                  n: int, shard_size: int) -> dict:
    return {**header, "sites": _site_entries(sites, shapes), "label_keys": label_keys, "n": n,
            "shard_size": shard_size, "n_shards": math.ceil(n / shard_size), "completed": []}


def _extract_in_memory(collector: SiteCollector, source, header: dict, dtype: torch.dtype, progress: bool):
    n = source.n
    shapes, label_keys = _probe(collector, source)
    buffer = RowBuffer(n, shapes, label_keys, dtype)
    for (start, _), acts, labels in _run(collector, source, plan_batches(0, n, header["batch_size"], n), n, 0,
                                         progress):
        buffer.put(start, acts, labels)
    manifest = _new_manifest(header, collector.sites, shapes, label_keys, n, n)
    return ActivationStore(manifest, tensors=buffer.tensors(n))


def _resume_or_start(root: Path, collector: SiteCollector, source, header: dict, shard_size: Optional[int]) -> dict:
    """The cache's manifest if it matches the request, else a new one (after a probe forward pass for the
    shapes), written to disk before any shard. Every listed shard is verified in full (size, header,
    sha256); damaged ones are dropped from the manifest, with a warning, so that only they are recomputed.
    Shards recorded by the ranks of a distributed run (progress_rank*.json, e.g. one where a rank died) are
    merged in first, whatever the number of processes now: shards are the same rows for any world size."""
    if (root / MANIFEST).exists():
        manifest = read_manifest(root)
        requested = identity({**header, "sites": dict.fromkeys(collector.sites), "shard_size": shard_size})
        check_compatible(manifest, requested, root)
        merged = merge_rank_progress(root, manifest)
        intact, damaged = sort_out_shards(root, manifest)
        if damaged:
            warnings.warn(f"activation cache {root}: recomputing {len(damaged)} damaged shard(s):\n  "
                          + "\n  ".join(damaged), UserWarning, stacklevel=4)
        if intact != manifest["completed"] or merged:
            manifest["completed"] = intact
            write_json_atomic(root / MANIFEST, manifest)
        remove_rank_progress(root)  # merged into the manifest (after it was written)
        return manifest
    remove_rank_progress(root)  # progress of an earlier extraction whose manifest is gone: never merged
    shapes, label_keys = _probe(collector, source)
    dtype = DTYPES[header["dtype"]]
    shard_size = shard_size or default_shard_size(shapes, len(label_keys), dtype, header["batch_size"])
    manifest = {**_new_manifest(header, collector.sites, shapes, label_keys, source.n, shard_size), "created": _now()}
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


def missing_shards(manifest: dict) -> list[int]:
    """Indices of the shards not yet completed, in order."""
    done = {r["start"] // manifest["shard_size"] for r in manifest["completed"]}
    return [i for i in range(manifest["n_shards"]) if i not in done]


def _extract_missing_shards(root: Path, manifest: dict, collector: SiteCollector, source, dtype: torch.dtype,
                            batch_size: int, progress: bool, only: Optional[Sequence[int]] = None,
                            on_shard=None) -> None:
    """Run the batches of every shard not yet completed (not necessarily a suffix: a damaged shard in the
    middle is recomputed alone), or of the shards `only` (a distributed rank's share); write each shard when
    full, then record it: in the manifest, or by `on_shard(record)` (a distributed rank's own progress file)."""
    n, shard_size = manifest["n"], manifest["shard_size"]
    missing = missing_shards(manifest) if only is None else list(only)
    if not missing:
        return
    shapes = {s: manifest["sites"][s]["shape"] for s in collector.sites}
    buffer = RowBuffer(min(shard_size, n), shapes, manifest["label_keys"], dtype)  # reused for every shard
    # this call's batch size may differ from the first run's (the manifest keeps that one): shards hold the same rows
    plan = [batch for i in missing for batch in plan_batches(*shard_rows(manifest, i), batch_size, shard_size)]
    total = n if only is None else sum(b - a for a, b in plan)  # a rank's bar counts its own share
    n_done = total - sum(b - a for a, b in plan)
    for (start, stop), acts, labels in _run(collector, source, plan, total, n_done, progress):
        _check_shapes(acts, shapes)
        shard, row = divmod(start, shard_size)
        buffer.put(row, acts, labels)
        shard_start, shard_stop = shard_rows(manifest, shard)
        if stop == shard_stop:
            written = save_shard(root / shard_name(shard), buffer.tensors(stop - shard_start),
                                 shard_metadata(shard, shard_start, stop, manifest["dtype"]))
            record = {"file": shard_name(shard), "start": shard_start, "stop": stop, **written}
            if on_shard is not None:
                on_shard(record)
                continue
            manifest["completed"].append(record)
            manifest["completed"].sort(key=lambda r: r["start"])
            manifest["updated"] = _now()
            write_json_atomic(root / MANIFEST, manifest)


def _run(collector: SiteCollector, source, plan, n: int, initial: int, progress: bool):
    """Yield ((start, stop), acts, labels) for each planned batch, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=n, initial=initial, unit=source.unit, disable=not progress,
              desc=f"extract {source.tower}") as bar:
        for (start, stop), (inputs, labels) in zip(plan, source.batches(plan)):
            if inputs.shape[0] != stop - start:
                raise RuntimeError(f"expected a batch of rows [{start}, {stop}) but got {inputs.shape[0]} items")
            yield (start, stop), collector(inputs), labels
            bar.update(stop - start)


def _site_entries(sites: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> dict:
    entries = {}
    for s in sites:
        entries[s] = {"shape": list(shapes[s])}
        if s in SPECIAL_SITES:
            entries[s]["description"] = (f"each head's direct contribution at CLS ({SPECIAL_SITES[s]} space), "
                                         "[layer, head, d]")
    return entries


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
