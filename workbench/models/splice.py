"""Splicing: a module with hook points put in at a hook site, so its hook points join the model's (docs/hooks.md).

The hook point at `site` is replaced by a `SplicedHookPoint` that runs the site's own hooks, then the module.
The module's hook points become direct children of the spliced hook point, so they are named `{site}.{hook}`
and appear in `model.hook_dict`, `run_with_cache` and `model.hooks`; `{site}` itself stays a hook point (its
hooks see the activation before the module). The module is kept out of the module tree, so the model's
`state_dict` (and `fingerprint()`) do not change and no name is doubled.

SAEs (sae_lens objects, duck-typed here: `.encode`, `.decode`, `.cfg`, `hook_sae_*` hook points) are spliced
through `SAESplice`, with the sae_lens hook names:

    {site}.hook_sae_input       [..., d_in]   the SAE's input
    {site}.hook_sae_acts_pre    [..., d_sae]  latents before the activation function
    {site}.hook_sae_acts_post   [..., d_sae]  latents (edit these)
    {site}.hook_sae_recons      [..., d_in]   the reconstruction decode(z)
    {site}.hook_sae_error       [..., d_in]   input − clean reconstruction (use_error_term=True only)
    {site}.hook_sae_output      [..., d_in]   what flows on: recons (+ error)

`[..., ]` is the site's layout: [b, pos, d] for block hooks (every token), [b, d] for the embeddings.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from .hook_names import TOWER_PREFIX, check_hook_name, hook_tower, stream_width
from .hooks import is_active

__all__ = [
    "SplicedHookPoint", "SAESplice", "SpliceError", "SAEMismatchError", "SAEMismatchWarning", "SAE_HOOKS",
    "splice", "unsplice", "spliced_modules", "add_sae", "remove_saes", "saes", "spliced_saes", "sae_site",
]

SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")
_SAE_OWN_HOOKS = SAE_HOOKS[:4]  # called inside sae.encode / sae.decode
# Metadata keys a workbench-saved SAE carries in cfg.json (sae_lens keeps unknown metadata as it is).
META_TOWER, META_FINGERPRINT = "workbench_tower", "workbench_model_fingerprint"


class SpliceError(ValueError):
    """A module or SAE cannot be spliced (or removed) at the requested site."""


class SAEMismatchError(SpliceError):
    """The SAE was trained at another site or on a model with other weights (override with strict=False)."""


class SAEMismatchWarning(UserWarning):
    """As SAEMismatchError, when the check was relaxed with strict=False."""


class SplicedHookPoint(HookPoint):
    """The hook point at a site with `module` spliced in: x → the site's own hooks → module(x).

    The module's direct HookPoint children become this hook point's children (named `{site}.{name}`); the
    module itself is held outside the module tree (`.spliced`)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.__dict__["spliced"] = module  # not a submodule: no doubled names, no parameters in the model
        for name, child in module.named_children():
            if isinstance(child, HookPoint):
                setattr(self, name, child)

    def __call__(self, x: Tensor, *args, **kwargs) -> Tensor:
        return self.spliced(super().__call__(x, *args, **kwargs))

    def __repr__(self) -> str:
        return f"SplicedHookPoint(name={self.name!r}, {self.spliced!r})"


def _tower_and_path(model, site: str) -> tuple[nn.Module, list[str]]:
    tower_name = hook_tower(site)
    tower = model.visual if tower_name == "image" else getattr(model, "text", None)
    if tower is None:
        raise SpliceError(f"cannot splice at {site!r}: the model has no {tower_name} tower")
    return tower, site[len(TOWER_PREFIX[tower_name]):].split(".")


def _parent(module: nn.Module, path: list[str]) -> nn.Module:
    for part in path[:-1]:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _refresh(model, tower) -> None:
    tower.setup()
    if tower is not model:
        model.setup()


def splice(model, site: str, module: nn.Module) -> SplicedHookPoint:
    """Splice `module` in at `site` (a hook name of `model`, a HookedCLIP); its hook points appear as `{site}.*`.

    Raises SpliceError if something is spliced there already, or if hooks are attached to the site (remove
    them first, e.g. by leaving the `model.hooks(...)` block, so that no hook is lost)."""
    try:
        check_hook_name(model, site)
    except ValueError as err:
        raise SpliceError(f"cannot splice at {site!r}: {err}") from None
    old = model.hook_dict[site]
    if isinstance(old, SplicedHookPoint):
        raise SpliceError(f"{type(old.spliced).__name__} is already spliced at {site!r}; remove it first "
                          f"(model.remove_saes({site!r}))")
    if type(old) is not HookPoint:
        raise SpliceError(f"{site!r} is not a plain hook point of the model (it is a {type(old).__name__}); "
                          "splice at a hook of the towers, e.g. 'blocks.5.hook_resid_post' or 'hook_image_embed'")
    if is_active(old):
        raise SpliceError(f"hooks are attached to {site!r}; splice before adding them (or call model.reset_hooks())")
    tower, path = _tower_and_path(model, site)
    new = SplicedHookPoint(module)
    setattr(_parent(tower, path), path[-1], new)
    _refresh(model, tower)
    return new


def unsplice(model, site: str) -> nn.Module:
    """Undo `splice` at `site`: a plain hook point again; returns the module that was spliced there."""
    point = model.hook_dict.get(site)
    if not isinstance(point, SplicedHookPoint):
        spliced = sorted(spliced_modules(model))
        raise SpliceError(f"nothing is spliced at {site!r}" + (f"; spliced sites: {spliced}" if spliced else ""))
    tower, path = _tower_and_path(model, site)
    for child in point.children():  # hooks left on the module's hook points must not outlive the splice
        if isinstance(child, HookPoint):
            child.remove_hooks("both", including_permanent=True)
    setattr(_parent(tower, path), path[-1], HookPoint())
    _refresh(model, tower)
    return point.spliced


def spliced_modules(model) -> dict[str, nn.Module]:
    """{site: module} for everything spliced into `model`."""
    return {name: hp.spliced for name, hp in model.hook_dict.items() if isinstance(hp, SplicedHookPoint)}


# ---------------------------------------------------------------------------------------------- SAEs
_IDENTITY = nn.Identity()


@contextmanager
def _without_hooks(sae) -> Iterator[None]:
    """Run `sae` with its hook points swapped for identities (the clean pass of the error term)."""
    saved = {name: getattr(sae, name) for name in _SAE_OWN_HOOKS if hasattr(sae, name)}
    try:
        for name in saved:
            setattr(sae, name, _IDENTITY)
        yield
    finally:
        for name, hook in saved.items():
            setattr(sae, name, hook)


def _check_is_sae(sae) -> None:
    for attr in ("encode", "decode", "cfg", "W_dec", *_SAE_OWN_HOOKS):
        if not hasattr(sae, attr):
            raise TypeError(f"expected a sae_lens SAE (with .encode, .decode, .cfg and hook_sae_* hook points), "
                            f"got {type(sae).__name__} without {attr!r}")


class SAESplice(nn.Module):
    """An SAE as a module to splice: h → decode(encode(h)) (+ the error term h − clean reconstruction).

    The SAE's own hook points (input, acts_pre, acts_post, recons) are shared, so hooks on
    `{site}.hook_sae_acts_post` edit the latents `encode` returns; hook_sae_error and hook_sae_output belong to
    the splice. With use_error_term=True the output is exactly the input until a hook changes something: with
    no hook attached the SAE is skipped (the output *is* h); with hooks, output = recons(z') + (h − recons(z)),
    z' the hooked latents, z the clean ones. As in sae_lens, the error term is a constant for gradients.
    """

    def __init__(self, sae, use_error_term: bool = False):
        super().__init__()
        _check_is_sae(sae)
        if not isinstance(use_error_term, bool):
            raise TypeError(f"use_error_term must be True or False, got {use_error_term!r}")
        self.__dict__["sae"] = sae
        for name in _SAE_OWN_HOOKS:
            setattr(self, name, getattr(sae, name))
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = use_error_term

    def _check(self, x: Tensor) -> None:
        d_in = int(self.sae.cfg.d_in)
        if x.shape[-1] != d_in:
            raise SpliceError(f"the SAE reads vectors of size d_in={d_in}, but the activations have shape "
                              f"{list(x.shape)}")
        device = self.sae.W_dec.device
        if device != x.device:
            raise SpliceError(f"the spliced SAE is on {device} but the model runs on {x.device}; move it with "
                              "sae.to(model.device) (splicing keeps it out of the model, so model.to() does not)")

    def forward(self, x: Tensor) -> Tensor:
        own = [getattr(self, name) for name in _SAE_OWN_HOOKS]
        if self.use_error_term and not is_active(*own, self.hook_sae_error, self.hook_sae_output):
            return x  # recons + (x − recons) is x: nothing looks or edits, so skip the SAE
        self._check(x)
        sae = self.sae
        recons = sae.decode(sae.encode(x))
        out = recons.to(x.dtype)
        if self.use_error_term:
            with torch.no_grad():
                if is_active(*own):  # the hooks may have edited the latents: the error needs a clean pass
                    with _without_hooks(sae):
                        clean = sae.decode(sae.encode(x))
                else:
                    clean = recons
                error = self.hook_sae_error(x - clean.to(x.dtype))
            out = out + error
        return self.hook_sae_output(out)

    def extra_repr(self) -> str:
        c = self.sae.cfg
        return (f"{type(self.sae).__name__}(d_in={c.d_in}, d_sae={c.d_sae}), "
                f"use_error_term={self.use_error_term}")


def sae_site(sae, site: Optional[str] = None) -> str:
    """The site an SAE reads: `site` if given, else its metadata's `hook_name` (set by `save_sae`)."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    recorded = getattr(meta, "hook_name", None) if meta is not None else None
    if site is None:
        if recorded is None:
            raise SpliceError("the SAE does not record its site (cfg.metadata.hook_name); pass site=..., "
                              "e.g. 'hook_image_embed'")
        return recorded
    return site


def check_sae_fits(model, sae, site: str, strict: bool = True) -> None:
    """Raise SAEMismatchError (a SAEMismatchWarning with strict=False) if `sae` was made for another site or
    for a model with other weights (per its metadata); SpliceError if its width cannot fit the site at all."""
    meta = sae.cfg.metadata
    problems = []
    recorded = getattr(meta, "hook_name", None)
    if recorded is not None and recorded != site:
        problems.append(f"it was trained at {recorded!r}, not {site!r}")
    fingerprint = getattr(meta, META_FINGERPRINT, None)
    if fingerprint is not None and fingerprint != model.fingerprint():
        problems.append(f"it was trained on a model with fingerprint {fingerprint[:12]}…, but this model "
                        f"{model.name!r} has {model.fingerprint()[:12]}…")
    if problems:
        msg = "this SAE does not belong here: " + "; ".join(problems)
        if strict:
            raise SAEMismatchError(msg + ". Pass strict=False to use it anyway")
        warnings.warn(msg, SAEMismatchWarning, stacklevel=3)
    tower = model.visual if hook_tower(site) == "image" else model.text
    try:
        width = stream_width(site, tower.cfg)
    except ValueError as err:
        raise SpliceError(f"cannot splice an SAE at {site!r}: {err}") from None
    if int(sae.cfg.d_in) != width:
        raise SpliceError(f"the SAE reads vectors of size d_in={sae.cfg.d_in}, but {site!r} has width {width}")
    if sae.W_dec.device != model.device:
        raise SpliceError(f"the SAE is on {sae.W_dec.device} but the model is on {model.device}; "
                          "move it with sae.to(model.device)")


def add_sae(model, sae, site: Optional[str] = None, use_error_term: bool = False, strict: bool = True) -> str:
    """Splice `sae` into `model` at `site` (default: the site its metadata records); returns the site.

    use_error_term=True adds the reconstruction error back, so the model is unchanged until the SAE's hook
    points are edited; False lets the reconstruction flow on. strict=False turns a site or fingerprint
    mismatch (SAEMismatchError) into a warning."""
    _check_is_sae(sae)
    site = sae_site(sae, site)
    try:
        check_hook_name(model, site)
    except ValueError as err:
        raise SpliceError(f"cannot splice the SAE: {err}") from None
    check_sae_fits(model, sae, site, strict=strict)
    splice(model, site, SAESplice(sae, use_error_term=use_error_term))
    return site


def spliced_saes(model) -> dict[str, Any]:
    """{site: sae} for the SAEs spliced into `model`."""
    return {site: m.sae for site, m in spliced_modules(model).items() if isinstance(m, SAESplice)}


def remove_saes(model, sites: Union[None, str, Sequence[str]] = None) -> list:
    """Remove the SAEs spliced at `sites` (default: all); returns them."""
    present = spliced_saes(model)
    if sites is None:
        sites = list(present)
    elif isinstance(sites, str):
        sites = [sites]
    missing = [s for s in sites if s not in present]
    if missing:
        raise SpliceError(f"no SAE is spliced at {missing}; spliced sites: {sorted(present)}")
    return [unsplice(model, s).sae for s in sites]


@contextmanager
def saes(model, *sae_list, use_error_term: bool = False, strict: bool = True) -> Iterator[Any]:
    """Context manager: the SAEs spliced inside the block, removed on exit (also after an exception).

    Each item is an SAE (spliced at the site its metadata records) or a pair (sae, site)."""
    added: list[str] = []
    try:
        for item in sae_list:
            sae, site = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
            added.append(add_sae(model, sae, site=site, use_error_term=use_error_term, strict=strict))
        yield model
    finally:
        for site in reversed(added):
            unsplice(model, site)
