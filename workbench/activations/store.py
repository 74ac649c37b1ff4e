"""On-disk activation store: safetensors shards plus a JSON manifest, written atomically.

Layout of a cache directory::

    cache_dir/manifest.json              what was extracted, from what, and which shards are complete
    cache_dir/shard_00000.safetensors    rows [0, shard_size): "act/<site>" [m, *shape], "label/<key>" [m]
    cache_dir/shard_00001.safetensors    rows [shard_size, 2·shard_size) …

Crash safety: every file is written to `<name>.tmp`, fsynced and renamed over its final name, so a reader
never sees a half-written file. A shard counts only once the manifest lists it (with its byte size); the
manifest is rewritten after each shard, so a kill between the two leaves an unlisted shard that the next
run overwrites. Completed shards always form a prefix of the data, so a resumed run continues at the first
missing shard.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor

SCHEMA = "workbench.activations/v1"
MANIFEST = "manifest.json"
ACT_PREFIX, LABEL_PREFIX = "act/", "label/"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}



def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 → "float16" (the manifest's spelling); raises for non-float dtypes."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (as torch dtypes, e.g. torch.float16), got {dtype!r}")
    return name


# ---------------------------------------------------------------------------------------------- atomic files
def _fsync_dir(folder: Path) -> None:
    try:  # a directory fsync makes the rename itself durable; not available on every OS (Windows)
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    _replace_atomically(tmp, path)


def save_shard_atomic(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> int:
    """Write a safetensors shard via `<path>.tmp` + rename; returns its size in bytes."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata))
    _replace_atomically(tmp, path)
    return path.stat().st_size


def remove_leftovers(root: Path) -> list[str]:
    """Delete `*.tmp` files left by a killed run (never read; their final names were never written)."""
    removed = []
    for tmp in root.glob("*.tmp"):
        tmp.unlink()
        removed.append(tmp.name)
    return removed


def clear_cache_dir(root: Path) -> None:
    """Remove the store's own files (manifest, shards, temp files) and nothing else."""
    for pattern in (MANIFEST, "shard_*.safetensors", "*.tmp"):
        for path in root.glob(pattern):
            path.unlink()


# ---------------------------------------------------------------------------------------------- manifest
def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no activation cache at {root}: {MANIFEST} is missing; create one with "
            "workbench.activations.extract(model, dataset, sites, cache_dir=...)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete the folder or re-run extract with "
                         "overwrite=True") from e
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"{path} has schema {manifest.get('schema')!r}, expected {SCHEMA!r}; "
                         "it was written by another tool or version: use a new cache_dir or overwrite=True")
    return manifest


def identity(manifest: dict) -> dict:
    """The fields that must agree for a cache to be resumed, in the order they are checked
    (site shapes are left out: they follow from the model, the sites and the position)."""
    return {
        "tower": manifest["tower"],
        "model fingerprint": manifest["model"]["fingerprint"],
        "dataset": manifest["dataset"],
        "sites": sorted(manifest["sites"]),
        "dtype": manifest["dtype"],
        "position": manifest["position"],
        "shard_size": manifest["shard_size"],
    }


def check_compatible(stored: dict, requested: dict, root: Path) -> None:
    """Raise a ValueError naming the first identity field on which `requested` differs from `stored`
    (both as returned by `identity`). A requested value of None (e.g. shard_size not given) matches anything."""
    for name, old in identity(stored).items():
        new = requested[name]
        if new is not None and old != new:
            n_done = len(stored.get("completed", []))
            raise ValueError(
                f"the activation cache at {root} was written with a different {name}:\n"
                f"  stored:    {old!r}\n  requested: {new!r}\n"
                f"Use a new cache_dir for this extraction, or pass overwrite=True to discard the "
                f"{n_done} cached shard(s)."
            )


def valid_completed_prefix(root: Path, manifest: dict) -> list[dict]:
    """The listed shards that are still intact (file present, recorded size), up to the first damaged one."""
    good = []
    for record in manifest.get("completed", []):
        path = root / record["file"]
        if not path.is_file() or path.stat().st_size != record["bytes"]:
            break
        good.append(record)
    return good


# ---------------------------------------------------------------------------------------------- buffers
class RowBuffer:
    """Preallocated tensors for `n_rows` items: one per site ([n_rows, *shape], `dtype`) and one per label
    ([n_rows], int64). Batches are copied in place, so memory is allocated once, not per batch."""

    def __init__(self, n_rows: int, shapes: Mapping[str, Sequence[int]], label_keys: Sequence[str],
                 dtype: torch.dtype):
        self.acts = {s: torch.empty(n_rows, *shape, dtype=dtype) for s, shape in shapes.items()}
        self.labels = {k: torch.empty(n_rows, dtype=torch.long) for k in label_keys}

    def put(self, row: int, acts: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> None:
        """Copy a batch (acts [b, *shape], labels [b]) into rows [row, row + b)."""
        for site, value in acts.items():
            self.acts[site][row:row + value.shape[0]].copy_(value)
        for key, value in labels.items():
            self.labels[key][row:row + value.shape[0]].copy_(value)

    def tensors(self, n_rows: int) -> dict[str, Tensor]:
        """The first n_rows rows, keyed as in a shard file (views, no copy)."""
        out = {ACT_PREFIX + s: t[:n_rows] for s, t in self.acts.items()}
        out.update({LABEL_PREFIX + k: t[:n_rows] for k, t in self.labels.items()})
        return out


# ---------------------------------------------------------------------------------------------- the store
class ActivationStore:
    """Activations of some hook sites over a dataset, with the dataset's labels.

    On disk (from `extract(..., cache_dir=...)` or `ActivationStore.open(cache_dir)`) shards are read lazily
    with `safetensors.safe_open`; in memory (`cache_dir=None`) the tensors are held directly.

        store["blocks.11.hook_resid_post"]   # [n, *shape] tensor (concatenates the shards)
        store.labels["gender"]               # [n] int64
        for acts, labels in store.iter_batches(256, shuffle=True): ...

    Attributes: `sites`, `shapes`, `dtype`, `position`, `fingerprint`, `manifest`, `label_names`, `root`.
    """

    def __init__(self, manifest: dict, root: Optional[Path] = None, tensors: Optional[dict[str, Tensor]] = None):
        if (root is None) == (tensors is None):
            raise ValueError("ActivationStore needs exactly one of root (a cache folder) or tensors (in memory)")
        self.manifest = manifest
        self.root = None if root is None else Path(root)
        self._tensors = tensors  # in memory: keyed like a shard file ("act/<site>", "label/<key>")
        self._labels: Optional[dict[str, Tensor]] = None
        self._shards = manifest["completed"] if root is not None else []

    # -------------------------------------------------------------- construction
    @classmethod
    def open(cls, cache_dir, partial: bool = False) -> "ActivationStore":
        """Open a cache folder. An unfinished extraction raises unless `partial=True` (then the store holds
        the completed shards only, a prefix of the dataset)."""
        root = Path(cache_dir)
        manifest = read_manifest(root)
        n_done = sum(r["stop"] - r["start"] for r in manifest["completed"])
        if n_done < manifest["n"] and not partial:
            raise ValueError(
                f"the extraction in {root} is unfinished ({len(manifest['completed'])} of {manifest['n_shards']} "
                f"shards, {n_done} of {manifest['n']} items); call extract(...) again with the same arguments and "
                "cache_dir to resume it, or open it with partial=True to read the completed part"
            )
        for record in manifest["completed"]:
            path = root / record["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != record["bytes"]:
                found = "missing" if size is None else f"{size} bytes"
                raise ValueError(
                    f"shard {path} is damaged (manifest says {record['bytes']} bytes, found {found}); "
                    "call extract(...) again with the same cache_dir to recompute it"
                )
        return cls(manifest, root=root)

    # -------------------------------------------------------------- description
    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-item shape of each site (without the leading item dimension)."""
        return {s: tuple(v["shape"]) for s, v in self.manifest["sites"].items()}

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    @property
    def position(self):
        return self.manifest["position"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @property
    def label_names(self) -> dict[str, list[str]]:
        return self.manifest["dataset"].get("label_names") or {}

    @property
    def label_keys(self) -> list[str]:
        return list(self.manifest["label_keys"])

    @property
    def n_shards(self) -> int:
        return 1 if self.root is None else len(self._shards)

    def __len__(self) -> int:
        if self.root is None:
            return self.manifest["n"]
        return sum(r["stop"] - r["start"] for r in self._shards)

    def __contains__(self, site: str) -> bool:
        return site in self.manifest["sites"]

    def check_model(self, model) -> None:
        """Raise if `model`'s weights are not the ones these activations were extracted from."""
        if model.fingerprint() != self.fingerprint:
            raise ValueError(
                f"these activations come from model {self.manifest['model']['name']!r} with fingerprint "
                f"{self.fingerprint[:12]}…, but the given model's is {model.fingerprint()[:12]}…"
            )

    def __repr__(self) -> str:
        where = "in memory" if self.root is None else f"{self.n_shards} shard(s) in {self.root}"
        sites = ", ".join(f"{s}: {list(shape)}" for s, shape in self.shapes.items())
        m = self.manifest["model"]
        return (f"ActivationStore(n={len(self)}, dtype={self.manifest['dtype']}, position={self.position!r}, "
                f"model={m['name']!r} {m['fingerprint'][:12]}…, {where}\n  sites: {{{sites}}}\n"
                f"  labels: {self.label_keys})")

    # -------------------------------------------------------------- reading
    def _check_site(self, site: str) -> str:
        if site not in self.manifest["sites"]:
            import difflib

            close = difflib.get_close_matches(site, self.sites, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"site {site!r} was not extracted{hint} (stored sites: {self.sites})")
        return site

    def _read(self, record: dict, keys: Sequence[str]) -> dict[str, Tensor]:
        from safetensors import safe_open

        with safe_open(str(self.root / record["file"]), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def _gather(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        if self.root is None:
            return self._tensors[key]
        out = torch.empty(len(self), *shape, dtype=dtype)
        for record in self._shards:
            out[record["start"]:record["stop"]] = self._read(record, [key])[key]
        return out

    def __getitem__(self, site: str) -> Tensor:
        """All items' activations at `site`: [n, *shape] (shards are read and concatenated on each call)."""
        self._check_site(site)
        return self._gather(ACT_PREFIX + site, self.shapes[site], self.dtype)

    @property
    def labels(self) -> dict[str, Tensor]:
        """{label key: [n] int64}; loaded once and cached (labels are small)."""
        if self._labels is None:
            self._labels = {k: self._gather(LABEL_PREFIX + k, (), torch.long) for k in self.label_keys}
        return self._labels

    def iter_shards(self, site: str) -> Iterator[Tensor]:
        """Yield `site`'s activations shard by shard ([m, *shape] each): one shard in memory at a time."""
        self._check_site(site)
        key = ACT_PREFIX + site
        if self.root is None:
            yield self._tensors[key]
            return
        for record in self._shards:
            yield self._read(record, [key])[key]

    def iter_batches(self, batch_size: int, sites: Optional[Sequence[str]] = None, shuffle: bool = False,
                     seed: int = 0, drop_last: bool = False) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """Yield `(acts {site: [b, *shape]}, labels {key: [b]})` batches, streaming shard by shard.

        shuffle: visit shards in a random order and permute rows within each shard (seeded by `seed`) — a
        shuffle local to shards, which keeps memory at one shard plus one batch.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if sites is None:
            sites = self.sites
        sites = [self._check_site(s) for s in ([sites] if isinstance(sites, str) else sites)]
        keys = [ACT_PREFIX + s for s in sites] + [LABEL_PREFIX + k for k in self.label_keys]
        g = torch.Generator().manual_seed(seed)

        def chunks() -> Iterator[dict[str, Tensor]]:
            if self.root is None:
                yield {k: self._tensors[k] for k in keys}
                return
            order = torch.randperm(len(self._shards), generator=g).tolist() if shuffle else range(len(self._shards))
            for i in order:
                yield self._read(self._shards[i], keys)

        carry: Optional[dict[str, Tensor]] = None
        for chunk in chunks():
            if shuffle:
                perm = torch.randperm(next(iter(chunk.values())).shape[0], generator=g)
                chunk = {k: v[perm] for k, v in chunk.items()}
            if carry is not None:  # rows left over from the previous shard start this one's first batch
                chunk = {k: torch.cat([carry[k], v]) for k, v in chunk.items()}
            m = next(iter(chunk.values())).shape[0]
            full = m - m % batch_size
            for start in range(0, full, batch_size):
                yield self._split({k: v[start:start + batch_size] for k, v in chunk.items()})
            carry = {k: v[full:] for k, v in chunk.items()} if full < m else None
        if carry is not None and not drop_last:
            yield self._split(carry)

    @staticmethod
    def _split(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        acts = {k[len(ACT_PREFIX):]: v for k, v in batch.items() if k.startswith(ACT_PREFIX)}
        labels = {k[len(LABEL_PREFIX):]: v for k, v in batch.items() if k.startswith(LABEL_PREFIX)}
        return acts, labels
