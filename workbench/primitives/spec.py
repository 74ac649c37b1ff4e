"""`InterventionSpec`: a versioned, validated JSON file describing edits to one model (docs/interventions.md).

File format (schema "workbench.intervention/v2"):

    {
      "schema": "workbench.intervention/v2",
      "model": {"name": "ViT-B-32", "pretrained": "openai", "fingerprint": "<sha256 of the weights>"},
      "edits": [
        {"target": "head", "op": "replace", "layer": 11, "head": 3, "index": null, "position": "pooled",
         "tower": "image", "value": {"sidecar": "edit0.value"}},
        {"target": "neuron", "op": "scale", "layer": 11, "head": 3, "index": [5, 17], "position": "pooled",
         "tower": "image", "value": 0.1}
      ],
      "sidecar": "debias.values.safetensors",        # null when every value is inline
      "sae": {"path": "saes/resid11", "sha256": "..."},   # null, or the SAE sae_latent edits need
                                                      # (+ "splice": {"use_error_term": bool}, see below)
      "alpha": 1.0,                                   # SAE blend: h' = α·decode(z') + (1 − α)·h
      "provenance": {"method": "expert_heads", "dataset": "fairface", "attribute": "gender",
                     "date": "2026-01-01T00:00:00+00:00", "workbench_version": "0.1.0"}
    }

Edit objects are `Edit.to_dict()` (`hook`, `scale` and `reference` may be omitted). Values (and references):
null, a number, a (nested) list for small tensors (≤ 16 numbers by default), or {"sidecar": key} naming a
tensor in the sidecar safetensors file next to the JSON (equal tensors are stored once). Values are float32
and round-trip bit-exactly; nothing is pickled. Relative SAE / sidecar paths are relative to the JSON file's
folder. Files are written with the permissions the umask gives, both or neither (see `save`).

With `sae.splice` the edits ran on that SAE spliced at its site (`model.add_sae`, docs/saes.md): `apply` splices
it for the duration (unless the model already has an SAE spliced there with the same use_error_term), so
the outputs are the ones the spec was made from; without it, the SAE runs as a separate pass (blend α).

Version 1 files ("workbench.intervention/v1") are still read: their edits say "site" for the target, and
position "cls" is read as "pooled".

Errors (all `SpecError`, a ValueError): `SpecFormatError` (malformed file: schema/version, unknown or
missing keys, wrong types, unknown op/site/position, bad shapes), `SidecarError` (missing sidecar file or
key), `FingerprintMismatchError` (the spec was made for other weights), `SpecModelMismatchError` (an edit
does not fit the model), `SAEError` (no SAE / SAE hash mismatch).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from torch import Tensor

from workbench.files import atomic_write

from .compile import edits_to_hooks
from .edit import Edit, spliced
from .errors import EditError, EditTargetError
from .values import is_finite_number

__all__ = [
    "InterventionSpec", "ModelRef", "SAERef", "apply", "sae_sha256", "SCHEMA",
    "SpecError", "SpecFormatError", "SidecarError", "FingerprintMismatchError", "SpecModelMismatchError",
    "SAEError", "FingerprintWarning",
]

SCHEMA = "workbench.intervention/v2"
SCHEMA_V1 = "workbench.intervention/v1"
_SCHEMA_PREFIX = "workbench.intervention/"
SIDECAR_THRESHOLD = 16  # tensors with more numbers than this go to the sidecar file
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = {"schema", "model", "edits", "sidecar", "sae", "alpha", "provenance"}
PathLike = Union[str, os.PathLike]


class SpecError(ValueError):
    """Base class of every intervention-spec error."""


class SpecFormatError(SpecError):
    """The spec file is malformed (schema/version, keys, types, values)."""


class SidecarError(SpecError):
    """The sidecar safetensors file, or a key in it, is missing or unreadable."""


class FingerprintMismatchError(SpecError):
    """The spec was made for a model with different weights."""


class SpecModelMismatchError(SpecError):
    """An edit of the spec does not fit the model (layer/head/index range, value shape, hook)."""


class SAEError(SpecError):
    """The SAE that sae_latent edits need is missing, unreadable, or not the one the spec was made with."""


class FingerprintWarning(UserWarning):
    """The spec's model fingerprint does not match (or is absent) and the check was relaxed."""


# ---------------------------------------------------------------------------------------------- references
@dataclass(frozen=True)
class ModelRef:
    """The model a spec applies to: open_clip name, pretrained tag and `HookedCLIP.fingerprint()`."""

    name: str
    pretrained: Optional[str] = None
    fingerprint: Optional[str] = None

    @classmethod
    def of(cls, model) -> "ModelRef":
        return cls(name=str(model.name), pretrained=model.pretrained, fingerprint=model.fingerprint())

    def describe(self) -> str:
        fp = self.fingerprint[:12] + "…" if self.fingerprint else "none"
        return f"{self.name!r} (pretrained={self.pretrained!r}, fingerprint {fp})"


def sae_sha256(path: PathLike) -> str:
    """sha256 of an SAE on disk: of the file, or of a folder's files (relative names + bytes, sorted)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        h.update(p.read_bytes())
    elif p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    else:
        raise SAEError(f"no SAE at {str(p)!r} (expected a sae_lens folder with cfg.json and sae_weights.safetensors)")
    return h.hexdigest()


@dataclass(frozen=True)
class SAERef:
    """Where the SAE lives (a sae_lens folder) and its `sae_sha256`, checked before it is used.

    use_error_term: None when the edits run as a separate SAE pass; True/False when they ran on the SAE
    spliced at its site with that setting (`apply` splices it again)."""

    path: str
    sha256: str
    use_error_term: Optional[bool] = None

    @classmethod
    def from_path(cls, path: PathLike, use_error_term: Optional[bool] = None) -> "SAERef":
        return cls(path=os.fspath(path), sha256=sae_sha256(path), use_error_term=use_error_term)


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(eq=False)
class InterventionSpec:
    """A list of edits for one model, with the SAE they need, the blend α and provenance.

    Build with `InterventionSpec.from_edits(model, edits, ...)` (or `Intervention.to_spec`), write with
    `spec.save(path)`, read with `InterventionSpec.load(path)`, apply with `with apply(model, spec): ...`.
    """

    model: ModelRef
    edits: list[Edit]
    sae: Optional[SAERef] = None
    alpha: float = 1.0
    provenance: dict = field(default_factory=dict)
    base_dir: Optional[Path] = field(default=None, repr=False)  # folder relative paths are resolved against
    schema = SCHEMA

    def __post_init__(self):
        if not isinstance(self.model, ModelRef):
            raise SpecFormatError(f"model must be a ModelRef, got {type(self.model).__name__}")
        self.edits = list(self.edits)
        for i, e in enumerate(self.edits):
            if not isinstance(e, Edit):
                raise SpecFormatError(f"edits[{i}] is a {type(e).__name__}, not an Edit")
        if self.sae is not None and not isinstance(self.sae, SAERef):
            raise SpecFormatError(f"sae must be an SAERef or None, got {type(self.sae).__name__}")
        if not is_finite_number(self.alpha):
            raise SpecFormatError(f"alpha must be a finite number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        _check_provenance(self.provenance, "provenance")
        self._sae_cache = None

    @classmethod
    def from_edits(cls, model, edits: Sequence[Edit], sae: Union[None, PathLike, SAERef] = None, alpha: float = 1.0,
                   method: Optional[str] = None, dataset: Optional[str] = None, attribute: Optional[str] = None,
                   **extra: Any) -> "InterventionSpec":
        """Spec for `model` (name, pretrained, fingerprint recorded) with date and workbench version filled in.

        sae: the path of the sae_lens folder sae_latent edits use (hashed now), or an SAERef.
        extra: further provenance fields (JSON scalars).
        """
        from workbench import __version__

        edits = [edits] if isinstance(edits, Edit) else list(getattr(edits, "edits", edits))
        for i, e in enumerate(edits):  # fail early on edits that cannot fit this model (SAE ones are checked on apply)
            if isinstance(e, Edit) and e.target != "sae_latent":
                try:
                    e.validate(model)
                except EditTargetError as err:
                    raise SpecModelMismatchError(f"edits[{i}]: {err}") from None
        if sae is not None and not isinstance(sae, SAERef):
            if not isinstance(sae, (str, os.PathLike)):
                raise SAEError("pass the SAE's folder path (or an SAERef), not an SAE object: the spec records "
                               "where the SAE lives and its hash")
            sae = SAERef.from_path(sae)
        splice = _splice_setting(model, edits)
        if sae is not None and splice is not None:
            sae = SAERef(sae.path, sae.sha256, use_error_term=splice)
        provenance = {"method": method, "dataset": dataset, "attribute": attribute,
                      "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "workbench_version": __version__, **extra}
        return cls(model=ModelRef.of(model), edits=edits, sae=sae, alpha=alpha, provenance=provenance)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InterventionSpec):
            return NotImplemented
        return (self.model == other.model and self.edits == other.edits and self.sae == other.sae
                and self.alpha == other.alpha and self.provenance == other.provenance)

    __hash__ = None

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self, sidecar_threshold: int = SIDECAR_THRESHOLD,
                     sidecar_name: Optional[str] = None) -> tuple[dict, dict[str, Tensor]]:
        """(JSON-ready dict, {sidecar key: tensor}); tensors with more than `sidecar_threshold` numbers go to
        the sidecar (named `sidecar_name` in the JSON). Equal tensors (e.g. one prototype for several heads)
        are stored once, under the key of their first use."""
        tensors: dict[str, Tensor] = {}
        seen: dict[tuple, str] = {}  # (shape, sha256 of the bytes) -> sidecar key

        def to_json(i: int, name: str, t: Tensor):
            if t.numel() <= sidecar_threshold:
                return None  # inline list
            digest = (tuple(t.shape), hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest())
            if digest not in seen:
                seen[digest] = f"edit{i}.{name}"
                tensors[seen[digest]] = t.clone()  # a tensor of its own: safetensors refuses shared memory
            return {"sidecar": seen[digest]}

        edits = [e.to_dict(lambda name, t, i=i: to_json(i, name, t)) for i, e in enumerate(self.edits)]
        doc = {
            "schema": SCHEMA,
            "model": {"name": self.model.name, "pretrained": self.model.pretrained,
                      "fingerprint": self.model.fingerprint},
            "edits": edits,
            "sidecar": (sidecar_name or "values.safetensors") if tensors else None,
            "sae": None if self.sae is None else {"path": self.sae.path, "sha256": self.sae.sha256,
                                                  **({} if self.sae.use_error_term is None else
                                                     {"splice": {"use_error_term": self.sae.use_error_term}})},
            "alpha": self.alpha,
            "provenance": dict(self.provenance),
        }
        return doc, tensors

    @classmethod
    def from_json_dict(cls, doc: Any, sidecar: Optional[Mapping[str, Tensor]] = None, source: str = "spec",
                       base_dir: Optional[PathLike] = None) -> "InterventionSpec":
        """Validate a parsed JSON document and build the spec; `sidecar` maps keys to tensors (if referenced).
        Raises SpecFormatError / SidecarError naming `source` and the offending field."""
        return _Parser(source, sidecar).spec(doc, base_dir)

    def save(self, path: PathLike, sidecar_threshold: int = SIDECAR_THRESHOLD) -> Path:
        """Write `path` (JSON) and, if needed, `<stem>.values.safetensors` beside it.

        Both files are prepared in full (serialised in memory, then written to temporary files) before either
        replaces the previous one, so a failure while preparing leaves the previous spec as it was. Files get
        the permissions a plain `open(path, "w")` would (the umask), not those of temporary files.
        """
        from safetensors.torch import save as safetensors_bytes

        path = Path(path)
        if path.suffix != ".json":
            raise SpecError(f"spec files end in .json, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar_path = path.with_name(f"{path.stem}.values.safetensors")
        doc, tensors = self.to_json_dict(sidecar_threshold, sidecar_path.name)
        if self.sae is not None and not os.path.isabs(self.sae.path):  # keep it valid relative to the new folder
            doc["sae"]["path"] = os.path.relpath(self.sae_path(), path.parent.resolve())
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        sidecar = safetensors_bytes(tensors, metadata={"schema": SCHEMA}) if tensors else None

        def write_json(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")
            if sidecar is not None:  # renamed into place only once the JSON's temporary file is complete
                atomic_write(sidecar_path, lambda t: Path(t).write_bytes(sidecar))

        atomic_write(path, write_json)
        if sidecar is None and sidecar_path.exists():
            sidecar_path.unlink()  # a stale sidecar from an earlier save would only confuse readers
        return path

    @classmethod
    def load(cls, path: PathLike) -> "InterventionSpec":
        """Read and validate a spec file (and its sidecar); see the module docstring for the errors."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no spec file at {str(path)!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SpecFormatError(f"{path}: cannot read the file: {err}") from None
        doc = parse_json(text, str(path))
        sidecar = _LazySidecar(path.parent, doc.get("sidecar") if isinstance(doc, dict) else None, str(path))
        return cls.from_json_dict(doc, sidecar=sidecar, source=str(path), base_dir=path.parent)

    # ------------------------------------------------------------------ model checks and application
    def sae_path(self) -> Path:
        if self.sae is None:
            raise SAEError("this spec has no `sae` entry")
        p = Path(self.sae.path)
        return (p if p.is_absolute() else Path(self.base_dir or ".") / p).resolve()

    def load_sae(self, device=None):
        """The spec's SAE (sae_lens `SAE.load_from_disk`), after checking its sha256; cached on the spec."""
        if self._sae_cache is None:
            path = self.sae_path()
            if not path.exists():
                raise SAEError(f"the spec needs the SAE at {str(path)!r}, which does not exist; pass sae=... to use "
                               "one you have loaded")
            digest = sae_sha256(path)
            if digest != self.sae.sha256:
                raise SAEError(f"the SAE at {str(path)!r} has sha256 {digest[:12]}…, but the spec was made with "
                               f"{self.sae.sha256[:12]}…; it is a different SAE")
            from sae_lens import SAE

            self._sae_cache = SAE.load_from_disk(str(path), device=str(device or "cpu"))
        return self._sae_cache

    def _resolve_sae(self, model, sae):
        needs = [e for e in self.edits if e.target == "sae_latent" and e.hook_name(model) == e.target_hook()]
        if not needs or sae is not None:
            return sae
        if self.sae is None:
            raise SAEError(f"{len(needs)} sae_latent edit(s) need an SAE, but the spec has no `sae` entry; "
                           "pass sae=... (a sae_lens SAE)")
        return self.load_sae(device=model.device)

    def validate(self, model, sae=None, strict_fingerprint: bool = True) -> None:
        """Check the fingerprint and every edit against `model` (and the SAE); raise a SpecError subclass.

        strict_fingerprint=False turns a fingerprint mismatch into a FingerprintWarning.
        """
        self._check_fingerprint(model, strict_fingerprint)
        sae = self._resolve_sae(model, sae)
        for i, e in enumerate(self.edits):
            try:
                e.validate(model, sae=sae)
            except EditTargetError as err:
                raise SpecModelMismatchError(f"edits[{i}]: {err}") from None

    def _check_fingerprint(self, model, strict: bool) -> None:
        if self.model.fingerprint is None:
            warnings.warn(f"the spec for {self.model.name!r} records no model fingerprint; cannot check that it "
                          "matches this model's weights", FingerprintWarning, stacklevel=3)
            return
        mine = ModelRef.of(model)
        if mine.fingerprint == self.model.fingerprint:
            return
        msg = (f"this spec was made for model {self.model.describe()}, but it is applied to {mine.describe()}: "
               "the weights differ")
        if strict:
            raise FingerprintMismatchError(msg + "; pass strict_fingerprint=False to apply it anyway")
        warnings.warn(msg, FingerprintWarning, stacklevel=3)

    def splice_sites(self) -> list[str]:
        """Sites whose sae_latent edits ran on a spliced SAE (empty unless the spec's `sae.splice` is set)."""
        if self.sae is None or self.sae.use_error_term is None:
            return []
        return list(dict.fromkeys(e.target_hook() for e in self.edits if e.target == "sae_latent"))

    def hooks(self, model, sae=None, strict_fingerprint: bool = True) -> list:
        """Validated `[(hook_name, fn)]` for `model.hooks(fwd_hooks=...)`. A spec whose edits ran on a spliced
        SAE needs it spliced (`apply` does that); SAEError otherwise."""
        for site in self.splice_sites():
            if not spliced(model, site):
                raise SAEError(f"this spec's sae_latent edits ran on the SAE spliced at {site!r} (use_error_term="
                               f"{self.sae.use_error_term}); use apply(model, spec), which splices it, or splice it "
                               f"first: model.add_sae(spec.load_sae(), site={site!r}, "
                               f"use_error_term={self.sae.use_error_term})")
        if self.sae is not None and self.sae.use_error_term is None:
            busy = sorted({e.target_hook() for e in self.edits
                           if e.target == "sae_latent" and spliced(model, e.target_hook())})
            if busy:
                raise SAEError(f"this spec's sae_latent edits run as a separate pass of its SAE, but an SAE is spliced "
                               f"at {busy}, which would change what they compute; remove it first "
                               f"(model.remove_saes({busy}))")
        self.validate(model, sae=sae, strict_fingerprint=strict_fingerprint)
        return edits_to_hooks(model, self.edits, sae=self._resolve_sae(model, sae), alpha=self.alpha, validate=False)


@contextmanager
def apply(model, spec: Union[InterventionSpec, PathLike], sae=None, strict_fingerprint: bool = True) -> Iterator[Any]:
    """Context manager applying a spec (or the spec file at a path) to `model`; hooks removed on exit.

        with apply(model, "debias.json"):
            emb = model.encode_image(images)
    """
    if not isinstance(spec, InterventionSpec):
        spec = InterventionSpec.load(spec)
    added: list[str] = []
    try:
        for site in spec.splice_sites():  # the edits ran on a spliced SAE: splice it again for the block
            if spliced(model, site):
                mine = getattr(model.hook_dict[site].spliced, "use_error_term", None)
                if mine != spec.sae.use_error_term:
                    raise SAEError(f"the SAE spliced at {site!r} has use_error_term={mine}, but the spec's edits "
                                   f"ran with use_error_term={spec.sae.use_error_term}")
                continue
            spec._check_fingerprint(model, strict_fingerprint)
            model.add_sae(sae if sae is not None else spec.load_sae(device=model.device), site=site,
                          use_error_term=spec.sae.use_error_term, strict=strict_fingerprint)
            added.append(site)
        hooks = spec.hooks(model, sae=sae, strict_fingerprint=strict_fingerprint)
        with model.hooks(fwd_hooks=hooks):
            yield model
    finally:
        if added:
            model.remove_saes(added)


# ---------------------------------------------------------------------------------------------- parsing
def parse_json(text: str, source: str = "spec") -> Any:
    """json.loads that rejects NaN/Infinity and duplicate keys with a SpecFormatError."""

    def no_constants(name):
        raise SpecFormatError(f"{source}: {name} is not allowed in a spec (values must be finite)")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise SpecFormatError(f"{source}: duplicate keys {dup}")
        return dict(pairs)

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise SpecFormatError(f"{source}: not valid JSON: {err}") from None
    except RecursionError:
        raise SpecFormatError(f"{source}: JSON nested too deeply") from None


def _check_provenance(prov: Any, where: str, error=SpecFormatError) -> None:
    if not isinstance(prov, dict):
        raise error(f"{where} must be an object of name → string/number/null, got {type(prov).__name__}")
    for k, v in prov.items():
        if not isinstance(k, str):
            raise error(f"{where} keys must be strings, got {k!r}")
        if not (v is None or isinstance(v, (str, bool)) or is_finite_number(v)):
            raise error(f"{where}.{k} must be a string, a number, a bool or null, got {type(v).__name__}")


class _LazySidecar(Mapping):
    """Sidecar tensors, read from disk on first access (so a spec with inline values needs no file)."""

    def __init__(self, folder: Path, name: Any, source: str):
        self.folder, self.name, self.source, self._data = folder, name, source, None

    def _load(self) -> dict:
        if self._data is None:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            if not isinstance(self.name, str) or not self.name:
                raise SpecFormatError(f"{self.source}: values refer to a sidecar, but 'sidecar' names no file "
                                      f"(got {self.name!r})")
            if Path(self.name).name != self.name:
                raise SpecFormatError(f"{self.source}: 'sidecar' must be a file name in the spec's folder, "
                                      f"got {self.name!r}")
            path = self.folder / self.name
            if not path.is_file():
                raise SidecarError(f"{self.source}: the sidecar file {str(path)!r} is missing; it holds the spec's "
                                   "tensor values and must sit next to the JSON file")
            try:
                self._data = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as err:
                raise SidecarError(f"{self.source}: cannot read the sidecar file {str(path)!r}: {err}") from None
        return self._data

    def __getitem__(self, key: str) -> Tensor:
        data = self._load()
        if key not in data:
            raise SidecarError(f"{self.source}: the sidecar file {str(self.folder / self.name)!r} has no tensor "
                               f"{key!r} (it has {sorted(data)[:8]})")
        return data[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class _Parser:
    """Validates a parsed spec document field by field; every problem becomes a SpecFormatError/SidecarError."""

    def __init__(self, source: str, sidecar: Optional[Mapping[str, Tensor]]):
        self.source, self.sidecar = source, sidecar

    def fail(self, where: str, problem: str) -> SpecFormatError:
        return SpecFormatError(f"{self.source}: {where}: {problem}")

    def obj(self, x: Any, where: str, required: set, allowed: set) -> dict:
        if not isinstance(x, dict):
            raise self.fail(where, f"expected an object, got {_type(x)}")
        missing, unknown = sorted(required - set(x)), sorted(set(x) - allowed, key=str)
        if missing:
            raise self.fail(where, f"missing key(s) {missing}")
        if unknown:
            raise self.fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        return x

    def string(self, x: Any, where: str, optional: bool = False) -> Optional[str]:
        if x is None and optional:
            return None
        if not isinstance(x, str) or not x:
            raise self.fail(where, f"expected a non-empty string{' or null' if optional else ''}, got {_type(x)}")
        return x

    def spec(self, doc: Any, base_dir) -> InterventionSpec:
        if not isinstance(doc, dict):
            raise self.fail("document", f"expected a JSON object, got {_type(doc)}")
        schema = doc.get("schema")
        if not isinstance(schema, str) or not schema.startswith(_SCHEMA_PREFIX):
            raise self.fail("schema", f"not a workbench intervention spec (schema {schema!r}, expected {SCHEMA!r})")
        if schema not in (SCHEMA, SCHEMA_V1):
            raise self.fail("schema", f"unsupported version {schema!r}; this workbench reads {SCHEMA!r} and "
                                      f"{SCHEMA_V1!r} (upgrade workbench to read newer specs)")
        doc = self.obj(doc, "document", {"schema", "model", "edits"}, _TOP_KEYS)
        m = self.obj(doc["model"], "model", {"name"}, {"name", "pretrained", "fingerprint"})
        fp = self.string(m.get("fingerprint"), "model.fingerprint", optional=True)
        if fp is not None and not _HEX64.match(fp):
            raise self.fail("model.fingerprint", "expected 64 lowercase hex digits (HookedCLIP.fingerprint())")
        model = ModelRef(self.string(m["name"], "model.name"),
                         self.string(m.get("pretrained"), "model.pretrained", optional=True), fp)
        if not isinstance(doc["edits"], list):
            raise self.fail("edits", f"expected a list of edits, got {_type(doc['edits'])}")
        edits = [self.edit(e, f"edits[{i}]", v1=schema == SCHEMA_V1) for i, e in enumerate(doc["edits"])]
        if "sidecar" in doc:
            self.string(doc["sidecar"], "sidecar", optional=True)
        sae = None
        if doc.get("sae") is not None:
            s = self.obj(doc["sae"], "sae", {"path", "sha256"}, {"path", "sha256", "splice"})
            digest = self.string(s["sha256"], "sae.sha256")
            if not _HEX64.match(digest):
                raise self.fail("sae.sha256", "expected 64 lowercase hex digits")
            use_error_term = None
            if s.get("splice") is not None:
                sp = self.obj(s["splice"], "sae.splice", {"use_error_term"}, {"use_error_term"})
                if not isinstance(sp["use_error_term"], bool):
                    raise self.fail("sae.splice.use_error_term",
                                    f"expected true or false, got {_type(sp['use_error_term'])}")
                use_error_term = sp["use_error_term"]
            sae = SAERef(self.string(s["path"], "sae.path"), digest, use_error_term)
        alpha = doc.get("alpha", 1.0)
        if not is_finite_number(alpha):
            raise self.fail("alpha", f"expected a finite number, got {_type(alpha)}")
        prov = doc.get("provenance", {})
        _check_provenance(prov, f"{self.source}: provenance")
        base = Path(base_dir) if base_dir is not None else None
        return InterventionSpec(model=model, edits=edits, sae=sae, alpha=float(alpha), provenance=dict(prov), base_dir=base)

    def edit(self, d: Any, where: str, v1: bool = False) -> Edit:
        if v1 and isinstance(d, dict):  # version 1 called the target "site" (position "cls" is still accepted)
            if "target" in d:
                raise self.fail(where, "unknown key(s) ['target'] in a version 1 spec (it says 'site')")
            d = {("target" if k == "site" else k): v for k, v in d.items()}
        try:
            return Edit.from_dict(d, tensor_from_json=lambda name, obj: self.sidecar_tensor(obj, f"{where}.{name}"))
        except EditError as err:
            raise self.fail(where, str(err)) from None

    def sidecar_tensor(self, v: Mapping, where: str) -> Tensor:
        if set(v) != {"sidecar"}:
            raise self.fail(where, f'a value object must be {{"sidecar": key}}, got keys {sorted(v, key=str)}')
        key = self.string(v["sidecar"], f"{where}.sidecar")
        if self.sidecar is None:
            raise SidecarError(f"{self.source}: {where} refers to sidecar tensor {key!r}, but no sidecar was given")
        try:
            t = self.sidecar[key]
        except KeyError:  # a plain mapping passed to from_json_dict (files raise SidecarError themselves)
            raise SidecarError(f"{self.source}: {where} refers to sidecar tensor {key!r}, which the sidecar "
                               f"does not have") from None
        if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
            raise self.fail(where, f"sidecar entry {key!r} is not a float tensor")
        return t


def _splice_setting(model, edits: Sequence[Edit]) -> Optional[bool]:
    """use_error_term of the SAE spliced where the sae_latent edits act, None if they use a separate pass."""
    settings = {}
    for e in edits:
        if isinstance(e, Edit) and e.target == "sae_latent" and spliced(model, e.target_hook()):
            settings[e.target_hook()] = getattr(model.hook_dict[e.target_hook()].spliced, "use_error_term", None)
    if len(set(settings.values())) > 1:
        raise SAEError(f"the SAEs spliced at {sorted(settings)} differ in use_error_term ({settings}); a spec "
                       "records one setting")
    return next(iter(settings.values()), None)


def _type(x: Any) -> str:
    return "null" if x is None else type(x).__name__
