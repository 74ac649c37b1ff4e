"""On-disk activation store: safetensors shards plus a JSON manifest, checksummed and written atomically.

Layout of a cache directory (docs/activations.md describes it in full)::

    cache_dir/manifest.json              what was extracted, from what, and which shards are complete
                                         (per shard: file, rows, byte size, sha256 of the file's bytes)
    cache_dir/shard_00000.safetensors    rows [0, shard_size): "act/<site>" [m, *shape], "label/<key>" [m];
                                         its metadata repeats its index, rows and dtype
    cache_dir/shard_00001.safetensors    rows [shard_size, 2·shard_size) …

Crash safety: every file goes through `workbench.files.atomic_write` (temporary file, fsync, rename), so a
reader never sees a half-written file. A shard counts only once the manifest lists it; the manifest is
rewritten after each shard, so a kill between the two leaves an unlisted shard that the next run rewrites.

What is verified, and when:
- `ActivationStore.open`: every listed shard exists with its recorded byte size, and its safetensors header
  agrees with the manifest (index and rows in the shard's metadata, tensor names, dtypes and shapes). Cheap:
  the header only.
- the first read of a shard in a process: the sha256 of the whole file against the manifest's (the file
  is read once more; about the cost of reading it).
- a resumed `extract(...)`: all of the above for every listed shard; the damaged ones, and only those,
  are recomputed.
A failed check raises `ShardError`, naming the shard file and saying to call `extract(...)` again with the
same cache_dir.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor

from workbench.files import TMP_SUFFIX, atomic_write, write_json_atomic

SCHEMA = "workbench.activations/v2"
OLD_SCHEMAS = ("workbench.activations/v1",)  # byte sizes only, no checksums: not readable, recompute
MANIFEST = "manifest.json"
ACT_PREFIX, LABEL_PREFIX = "act/", "label/"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# safetensors' header spelling of each storage dtype (labels are always int64, "I64")
HEADER_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_HASH_CHUNK = 4 * 2**20


class ShardError(ValueError):
    """A cached shard is missing, damaged, or disagrees with the manifest (the message names the file).

    Attributes: `path` (the shard file) and `problem` (what is wrong with it, without the advice)."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"activation shard {path} {problem}; {redo_hint(path.parent)}")
        self.path, self.problem = path, problem


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 → "float16" (the manifest's spelling); raises for non-float dtypes."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (as torch dtypes, e.g. torch.float16), got {dtype!r}")
    return name


def redo_hint(root: Path) -> str:
    return (f"call extract(...) again with the same arguments and cache_dir={str(root)!r}: "
            "it recomputes the damaged shard(s) only")


# ---------------------------------------------------------------------------------------------- files
def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks (memory stays flat)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def shard_metadata(index: int, start: int, stop: int, dtype: str) -> dict[str, str]:
    """What a shard records about itself (safetensors metadata is str → str), so a shard renamed or listed
    under another name, or a manifest whose dtype was changed, is caught from the shard's own header."""
    return {"schema": SCHEMA, "index": str(index), "start": str(start), "stop": str(stop), "dtype": dtype}


def save_shard(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> dict:
    """Write a safetensors shard atomically; returns {"bytes": size, "sha256": hex digest of the file}.

    The digest is taken from the temporary file before the rename (the bytes are still in the page cache,
    so this costs hashing, not a disk read). A written shard is not marked verified: readers check it like
    any other (a file timestamp is too coarse to prove it was not changed since)."""
    from safetensors.torch import save_file

    digest = {}

    def write(tmp: str) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata))
        digest["sha256"] = file_sha256(Path(tmp))

    atomic_write(path, write)
    return {"bytes": path.stat().st_size, "sha256": digest["sha256"]}


# Leftovers of a killed run: files.atomic_write's temporary names, and the older `<name>.tmp` ones.
_LEFTOVERS = (f".{MANIFEST}.*{TMP_SUFFIX}", f".shard_*.safetensors.*{TMP_SUFFIX}", f".progress_rank*.json.*{TMP_SUFFIX}",
              f"{MANIFEST}{TMP_SUFFIX}", f"shard_*.safetensors{TMP_SUFFIX}")
# A distributed extraction's ranks record their finished shards here (rank 0 alone writes the manifest);
# rank 0 merges them into the manifest at the end, or on the next run if a rank died.
RANK_PROGRESS = "progress_rank*.json"


def remove_leftovers(root: Path) -> list[str]:
    """Delete temporary files left by a killed run (never read; their final names were never written)."""
    removed = []
    for pattern in _LEFTOVERS:
        for tmp in root.glob(pattern):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def clear_cache_dir(root: Path) -> None:
    """Remove the store's own files (manifest, shards, temporary files) and nothing else."""
    for pattern in (MANIFEST, "shard_*.safetensors", RANK_PROGRESS, *_LEFTOVERS):
        for path in root.glob(pattern):
            path.unlink()


# ---------------------------------------------------------------------------------------------- rank progress
def rank_progress_name(rank: int) -> str:
    return f"progress_rank{rank:05d}.json"


def write_rank_progress(root: Path, rank: int, manifest: dict, records: Sequence[dict]) -> None:
    """Record (atomically) the shards rank `rank` finished in this run. `manifest["created"]` ties the file
    to its manifest, so progress left over from another extraction is never merged."""
    write_json_atomic(Path(root) / rank_progress_name(rank),
                      {"schema": SCHEMA, "rank": rank, "manifest_created": manifest.get("created"),
                       "completed": list(records)})


def merge_rank_progress(root: Path, manifest: dict) -> int:
    """Add the shards recorded in progress_rank*.json files (by ranks of a distributed run, perhaps one that
    died) to `manifest["completed"]` in place; returns how many were added. Records are verified later like
    any other (`sort_out_shards`); files of another extraction or unreadable ones are ignored."""
    known = {r.get("start") for r in manifest.get("completed", []) if isinstance(r, dict)}
    added = 0
    for path in sorted(Path(root).glob(RANK_PROGRESS)):
        try:
            progress = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not (isinstance(progress, dict) and progress.get("schema") == SCHEMA
                and progress.get("manifest_created") == manifest.get("created")):
            continue
        for record in progress.get("completed", []):
            if isinstance(record, dict) and record.get("start") not in known:
                manifest.setdefault("completed", []).append(record)
                known.add(record.get("start"))
                added += 1
    manifest.get("completed", []).sort(
        key=lambda r: r["start"] if isinstance(r, dict) and isinstance(r.get("start"), int) else -1)
    return added


def remove_rank_progress(root: Path) -> None:
    for path in Path(root).glob(RANK_PROGRESS):
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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete the folder or re-run extract with "
                         "overwrite=True") from e
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if schema in OLD_SCHEMAS:
        raise ValueError(f"{path} has schema {schema!r}: written by an earlier workbench that recorded no "
                         f"checksums, so its shards cannot be verified; re-run extract(...) with overwrite=True "
                         "to recompute it, or use a new cache_dir")
    if schema != SCHEMA:
        raise ValueError(f"{path} has schema {schema!r}, expected {SCHEMA!r}; "
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


def shard_rows(manifest: dict, index: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index`."""
    start = index * manifest["shard_size"]
    return start, min(start + manifest["shard_size"], manifest["n"])


def record_problem(manifest: dict, record) -> Optional[str]:
    """Why a manifest entry of `completed` is not a well-formed record of its shard (None if it is)."""
    if not (isinstance(record, dict) and isinstance(record.get("file"), str)
            and all(isinstance(record.get(k), int) for k in ("start", "stop", "bytes"))
            and isinstance(record.get("sha256"), str)):
        return f"has a malformed entry in {MANIFEST} ({record!r}): expected file, start, stop, bytes, sha256"
    rows = f"rows [{record['start']}, {record['stop']})"
    index, offset = divmod(record["start"], manifest["shard_size"])
    if offset or not 0 <= index < manifest["n_shards"] or record["stop"] != shard_rows(manifest, index)[1]:
        return f"is listed in {MANIFEST} for {rows}, which are no shard's rows (the manifest was edited)"
    if record["file"] != shard_name(index):
        return (f"is listed in {MANIFEST} for {rows}, which are the rows of {shard_name(index)} "
                "(shard names in the manifest were swapped or edited)")
    return None


def completed_records(manifest: dict) -> dict[int, dict]:
    """{shard index: record} of the well-formed entries of `completed`."""
    return {record["start"] // manifest["shard_size"]: record
            for record in manifest.get("completed", []) if record_problem(manifest, record) is None}


def completed_prefix(manifest: dict) -> list[dict]:
    """The completed shards 0, 1, … up to the first one not completed (a prefix of the dataset)."""
    records, out = completed_records(manifest), []
    while len(out) in records:
        out.append(records[len(out)])
    return out


# ---------------------------------------------------------------------------------------------- verification
# Shards whose checksum was verified in this process, keyed by what would change if the file were rewritten:
# a file is hashed once per process, not on every read.
_VERIFIED: set[tuple[str, str, int, int]] = set()


def _verified_key(path: Path, sha256: str, stat: os.stat_result) -> tuple[str, str, int, int]:
    return str(path.resolve()), sha256, stat.st_size, stat.st_mtime_ns


def mark_verified(path: Path, sha256: str, stat: Optional[os.stat_result] = None) -> None:
    _VERIFIED.add(_verified_key(path, sha256, stat or path.stat()))


def check_shard_header(root: Path, manifest: dict, record: dict) -> None:
    """Raise ShardError unless the shard file exists with its recorded size and its safetensors header agrees
    with the manifest: index and rows in its metadata, one tensor per site and label key, with the manifest's
    dtype and [rows, *shape]. Reads the header only."""
    from safetensors import SafetensorError, safe_open

    problem = record_problem(manifest, record)
    if problem:
        name = record.get("file") if isinstance(record, dict) else None
        raise ShardError(root / (name if isinstance(name, str) and name else "<unnamed shard>"), problem)
    path = root / record["file"]
    size = path.stat().st_size if path.is_file() else None
    if size != record["bytes"]:
        found = "is missing" if size is None else f"has {size} bytes"
        raise ShardError(path, f"is damaged: {MANIFEST} records {record['bytes']} bytes but the file {found}")
    index = record["start"] // manifest["shard_size"]
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            header = {k: (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except SafetensorError as e:
        raise ShardError(path, f"is damaged: its safetensors header cannot be read ({e})") from None
    claimed = {k: meta.get(k) for k in ("index", "start", "stop")}
    expected = {"index": str(index), "start": str(record["start"]), "stop": str(record["stop"])}
    if claimed != expected:
        raise ShardError(path, f"holds shard {claimed['index']} (rows [{claimed['start']}, {claimed['stop']})) "
                                f"but {MANIFEST} lists it as shard {index} (rows [{record['start']}, {record['stop']})): "
                                "shard files were renamed or the manifest was edited")
    m = record["stop"] - record["start"]
    want = {ACT_PREFIX + s: (HEADER_DTYPES[manifest["dtype"]], [m, *v["shape"]]) for s, v in manifest["sites"].items()}
    want.update({LABEL_PREFIX + k: ("I64", [m]) for k in manifest["label_keys"]})
    missing = sorted(set(want) - set(header))
    if missing:
        raise ShardError(path, f"lacks tensor(s) {missing} that {MANIFEST} lists")
    for key, (dtype, shape) in want.items():
        if header[key][0] != dtype:
            raise ShardError(path, f"holds {key} as {header[key][0]} but {MANIFEST} says dtype "
                                    f"{manifest['dtype']!r} ({dtype}): the manifest was edited or belongs to other shards")
        if header[key][1] != shape:
            raise ShardError(path, f"holds {key} with shape {header[key][1]} but {MANIFEST} implies {shape}")


def verify_shard(root: Path, manifest: dict, record: dict) -> None:
    """check_shard_header, then the sha256 of the whole file against the manifest's (once per process)."""
    check_shard_header(root, manifest, record)
    path = root / record["file"]
    stat = path.stat()
    if _verified_key(path, record["sha256"], stat) in _VERIFIED:
        return
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise ShardError(path, f"is damaged: its sha256 is {digest[:16]}… but {MANIFEST} records "
                                f"{record['sha256'][:16]}… (the file's content changed since it was written)")
    mark_verified(path, digest, stat)


def sort_out_shards(root: Path, manifest: dict) -> tuple[list[dict], list[str]]:
    """Fully verify every listed shard: (intact records in shard order, one line per damaged or malformed
    entry saying what is wrong with it). Used when resuming, to recompute exactly the damaged ones."""
    intact: dict[int, dict] = {}
    damaged = []
    for record in manifest.get("completed", []):
        try:
            verify_shard(root, manifest, record)
        except ShardError as e:
            damaged.append(f"{e.path.name} {e.problem}")
            continue
        intact[record["start"] // manifest["shard_size"]] = record  # a shard listed twice counts once
    return [intact[i] for i in sorted(intact)], damaged


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
        self._shards = completed_prefix(manifest) if root is not None else []

    # -------------------------------------------------------------- construction
    @classmethod
    def open(cls, cache_dir, partial: bool = False) -> "ActivationStore":
        """Open a cache folder. An unfinished extraction raises unless `partial=True` (then the store holds
        the completed shards up to the first missing one: a prefix of the dataset).

        Every listed shard is checked against the manifest here (size and safetensors header, cheap); its
        sha256 is checked the first time it is read in this process (`verify()` checks all of them now). A
        failed check raises ShardError naming the shard file (see docs/activations.md)."""
        root = Path(cache_dir)
        manifest = read_manifest(root)
        for record in manifest["completed"]:
            check_shard_header(root, manifest, record)
        shards = completed_prefix(manifest)
        if len(shards) < manifest["n_shards"] and not partial:
            n_done = sum(r["stop"] - r["start"] for r in completed_records(manifest).values())
            raise ValueError(
                f"the extraction in {root} is unfinished ({len(completed_records(manifest))} of "
                f"{manifest['n_shards']} shards, {n_done} of {manifest['n']} items"
                + (", more recorded in progress_rank*.json by the ranks of a distributed run"
                   if any(root.glob(RANK_PROGRESS)) else "")
                + "); call extract(...) again with the same arguments and cache_dir to resume it, or open it with "
                "partial=True to read the completed part"
            )
        return cls(manifest, root=root)

    def verify(self) -> None:
        """Check every shard's sha256 now (otherwise each is checked on its first read in this process)."""
        for record in self._shards:
            verify_shard(self.root, self.manifest, record)

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
        from safetensors import SafetensorError, safe_open

        path = self.root / record["file"]
        verify_shard(self.root, self.manifest, record)  # the sha256 is computed once per process
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in keys}
        except (SafetensorError, OSError) as e:  # e.g. replaced or removed after it was verified
            raise ShardError(path, f"cannot be read ({e})") from None

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
