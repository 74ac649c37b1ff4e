"""Saving and loading SAEs in sae_lens's own format, with the site, tower and model fingerprint (docs/saes.md).

A saved SAE is a folder sae_lens's `SAE.load_from_disk` opens unchanged:

    cfg.json                  sae_lens config; metadata.hook_name = the site, metadata.model_name,
                              metadata.workbench_tower, metadata.workbench_model_fingerprint (model.fingerprint())
    sae_weights.safetensors   the weights (safetensors: nothing is pickled)

`load_sae` takes such a folder or the name of a shipped SAE ("synthsocial/image-embed", ...; `shipped_saes()`
lists them), and checks the SAE against a model: another site or other weights raise SAEMismatchError
(strict=False warns instead).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from workbench.files import atomic_write, write_json_atomic
from workbench.models.hook_names import check_hook_name, hook_tower
from workbench.models.splice import (META_FINGERPRINT, META_TOWER, SAEMismatchError, SAEMismatchWarning,
                                     check_sae_fits, sae_site)

__all__ = ["save_sae", "load_sae", "read_sae_config", "resolve_sae_path", "shipped_saes", "shipped_dir",
           "SAELoadError", "SAEMismatchError", "SAEMismatchWarning", "CFG_FILENAME", "WEIGHTS_FILENAME"]

PathLike = Union[str, os.PathLike]
CFG_FILENAME, WEIGHTS_FILENAME = "cfg.json", "sae_weights.safetensors"  # sae_lens's file names


class SAELoadError(ValueError):
    """No SAE at the given path or name, or its files cannot be read."""


# ---------------------------------------------------------------------------------------------- shipped SAEs
def shipped_dir() -> Path:
    """Folder of the shipped SAEs: the repository's top-level `saes/` (a wheel installs it as
    `workbench/saes/shipped/`)."""
    installed = Path(__file__).resolve().parent / "shipped"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "saes"


def shipped_saes() -> list[str]:
    """Names of the shipped SAEs, e.g. ["synthsocial/image-embed", ...] (folders holding a cfg.json)."""
    root = shipped_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob(CFG_FILENAME))


def resolve_sae_path(path_or_name: PathLike) -> Path:
    """The folder of an SAE given as a path or a shipped name; SAELoadError (listing the names) if none."""
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"expected a path or a shipped SAE name such as 'synthsocial/image-embed', got "
                        f"{type(path_or_name).__name__}")
    p = Path(path_or_name)
    if (p / CFG_FILENAME).is_file():
        return p
    if isinstance(path_or_name, str) and not p.is_absolute():
        shipped = shipped_dir() / path_or_name
        if (shipped / CFG_FILENAME).is_file():
            return shipped
    names = shipped_saes()
    if p.is_dir():
        raise SAELoadError(f"{str(p)!r} is not a saved SAE: it has no {CFG_FILENAME} (save with save_sae or "
                           "sae_lens's save_model)")
    raise SAELoadError(f"no SAE at {str(path_or_name)!r}: not a folder with {CFG_FILENAME}, and not a shipped name "
                       f"(shipped: {names or 'none found in ' + str(shipped_dir())})")


def read_sae_config(path_or_name: PathLike) -> dict:
    """The cfg.json of a saved SAE (sae_lens config with the workbench metadata), without loading weights."""
    path = resolve_sae_path(path_or_name) / CFG_FILENAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SAELoadError(f"cannot read {str(path)!r}: {err}") from None
    if not isinstance(cfg, dict) or "d_in" not in cfg or "d_sae" not in cfg:
        raise SAELoadError(f"{str(path)!r} is not a sae_lens config (no d_in / d_sae)")
    return cfg


# ---------------------------------------------------------------------------------------------- save
def save_sae(sae, path: PathLike, model=None, site: Optional[str] = None, **metadata: Any) -> Path:
    """Write `sae` (a sae_lens SAE or TrainingSAE) to the folder `path` in sae_lens's format.

    The site (`site`, or the one `sae.cfg.metadata.hook_name` records), its tower and, when `model` is given,
    `model.fingerprint()` and `model.name` go into the config's metadata (also set on `sae.cfg.metadata`, so a
    saved SAE knows where it belongs). `metadata`: further JSON-serialisable entries (e.g. training figures).
    A training SAE is saved as its inference SAE, as sae_lens's `save_inference_model` does. Each file is
    written atomically. Returns the folder.
    """
    for attr in ("cfg", "state_dict", "W_dec"):
        if not hasattr(sae, attr):
            raise TypeError(f"expected a sae_lens SAE, got {type(sae).__name__}")
    site = sae_site(sae, site)
    if model is not None:
        try:
            check_hook_name(model, site)
        except ValueError as err:
            raise ValueError(f"cannot record site {site!r} for this SAE: {err}") from None
    meta = sae.cfg.metadata
    entries = {"hook_name": site, META_TOWER: hook_tower(site), **metadata}
    if model is not None:
        entries.update({META_FINGERPRINT: model.fingerprint(), "model_name": str(model.name)})
    for key, value in entries.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"metadata {key!r} must be JSON-serialisable (finite), got {value!r}") from None
        meta[key] = value

    state = sae.state_dict()
    if hasattr(sae, "save_inference_model"):  # a TrainingSAE: what sae_lens's save_inference_model writes
        sae.process_state_dict_for_saving_inference(state)
        cfg = sae.cfg.get_inference_sae_cfg_dict()
    else:
        sae.process_state_dict_for_saving(state)
        cfg = sae.cfg.to_dict()
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in state.items()}
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} exists and is not a folder; an SAE is saved as a folder")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS_FILENAME, lambda tmp: save_file(state, tmp))
    write_json_atomic(folder / CFG_FILENAME, cfg)
    return folder


# ---------------------------------------------------------------------------------------------- load
def load_sae(path_or_name: PathLike, model=None, site: Optional[str] = None, device=None, strict: bool = True):
    """Load a saved SAE (a folder, or a shipped name such as "synthsocial/image-resid-last").

    With `model`, the SAE is checked against it: the site (`site`, default the recorded one) must be the one
    the SAE was trained at and the model's fingerprint the recorded one, else SAEMismatchError naming both
    (strict=False: a SAEMismatchWarning); d_in must match the site's width. device: default the model's
    device, else "cpu". Returns a sae_lens SAE (in eval mode) whose `cfg.metadata.hook_name` is the site.
    """
    path = resolve_sae_path(path_or_name)
    read_sae_config(path)  # a clear error for a malformed cfg.json before sae_lens sees it
    if not (path / WEIGHTS_FILENAME).is_file():
        raise SAELoadError(f"{str(path)!r} has a {CFG_FILENAME} but no {WEIGHTS_FILENAME}")
    if device is None:
        device = model.device if model is not None else "cpu"
    from safetensors import SafetensorError
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(str(path), device=str(device))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as err:
        raise SAELoadError(f"sae_lens cannot load the SAE at {str(path)!r}: {err}") from None
    sae.eval()
    if site is not None and sae.cfg.metadata.hook_name is None:
        sae.cfg.metadata.hook_name = site  # an SAE saved without a site: it belongs where the caller says
    if model is not None:
        site = sae_site(sae, site)
        try:
            check_hook_name(model, site)
        except ValueError as err:
            raise SAEMismatchError(f"the SAE at {str(path)!r} reads {site!r}: {err}") from None
        check_sae_fits(model, sae, site, strict=strict)
        if site != sae.cfg.metadata.hook_name:
            sae.cfg.metadata.hook_name = site  # strict=False at another site: splice it where it was asked for
    return sae
