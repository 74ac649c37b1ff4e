"""NeuronDashboard: browse an image-tower SAE's latents, silence some (set them to γ), blend with α, and watch
retrieval fairness move (the DebiasLens edit, docs/methods.md).

    dash = NeuronDashboard(model, "synthsocial/image-embed", SynthSocial("test_balanced"), attribute="gender")
    dash                                   # in JupyterLab
    dash.state.toggle(17); dash.state.set_alpha(0.6); dash.state.metrics["gender_ndkl"]

The edit is h' = α·decode(z') + (1 − α)·h at the SAE's site, z' = the latents with the chosen ones set to γ
(`ablate_latents(..., op="set" | "zero")` with the spec's α: a separate SAE pass, no splice). Exact without a
forward pass: at `hook_image_embed` from the cached latents (decode(z') = decode(z) + (z' − z)·W_dec when the
decoder is affine, checked once; else the edit's own hook on the cached input), at a site of the last block
after its attention through the cached `CLSTail`; elsewhere a forward pass over the gallery.
"""
from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from .state import DashboardState, Gallery, LiveProtocol

__all__ = ["NeuronState", "NeuronDashboard"]


class NeuronState(DashboardState):
    """The latents switched on, γ and α (see the module docstring).

    sae: a sae_lens SAE on an image-tower site (`cfg.metadata.hook_name`, or `site`); sae_path: its folder, needed
    to export (the spec records its path and hash).
    """

    def __init__(self, model, gallery: Gallery, protocol: LiveProtocol, sae, sae_path=None, site: Optional[str] = None,
                 alpha: float = 0.6, gamma: float = 0.0):
        from workbench.models.cls_tail import tail_hook_names
        from workbench.models.hook_names import hook_tower
        from workbench.saes.stats import LatentStats

        for attr in ("encode", "decode", "cfg", "W_dec"):
            if not hasattr(sae, attr):
                raise TypeError(f"sae must be a sae_lens SAE (load_sae(...)), got {type(sae).__name__}")
        site = site or getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
        if not site:
            raise ValueError("the SAE records no site (cfg.metadata.hook_name); pass site=... "
                             "(e.g. 'hook_image_embed')")
        if site not in model.hook_dict:
            raise ValueError(f"the SAE's site {site!r} is not a hook point of this model")
        if hook_tower(site) != "image":
            raise ValueError(f"NeuronDashboard edits image-tower SAEs; {site!r} is on the {hook_tower(site)} tower "
                             "(evaluate text-side specs with evaluate_variants)")
        self.sae, self.site = sae, site
        self.sae_path = None if sae_path is None else Path(sae_path)
        self.latents: dict[int, None] = {}
        self.alpha, self.gamma = self._check_alpha(alpha), self._check_gamma(gamma)
        self.d_sae = int(sae.cfg.d_sae)
        self._mode = "forward"
        self._h = self._z = self._rec = None
        with torch.no_grad():
            if site == "hook_image_embed":
                self._h = gallery.image_embed.to(sae.W_dec.device, sae.W_dec.dtype)
                self._mode = "embed"
            elif gallery.tail is not None and site in tail_hook_names(model):
                self._h = self._tail_input(gallery.tail, site)
                self._mode = "tail"
            if self._h is not None:
                self._z = sae.encode(self._h)
                self._rec = sae.decode(self._z)
                acts = self._z
            else:
                acts = LatentStats.compute(model, sae, gallery.dataset, site=site).acts
        if self._mode == "embed" and not self._affine_decoder():
            self._mode = "embed_hook"
        self.stats = LatentStats(acts, gallery.labels, gallery.label_names, site=site)
        super().__init__(model, gallery, protocol)

    def __repr__(self) -> str:
        on = ", ".join(map(str, self.latents)) or "none"
        return (f"NeuronState(site={self.site!r}, latents on: {on}; γ={self.gamma:g}, α={self.alpha:g}; "
                f"path={self.path}; {self.protocol.attribute}_ndkl="
                f"{self.metrics[f'{self.protocol.attribute}_ndkl']:.4f})")

    @staticmethod
    def _tail_input(tail, site: str) -> Tensor:
        """The pooled row of `site` in the cached last block: [n, width]."""
        rows = []

        def keep(x, hook=None):
            rows.append(x.reshape(x.shape[0], -1).clone())
            return x

        tail.encode(fwd_hooks=[(site, keep)])
        return torch.cat(rows)

    @torch.no_grad()
    def _affine_decoder(self) -> bool:
        """decode(z + δ·e_i) − decode(z) = δ·W_dec[i] on a few rows and latents (fp32 rounding): the delta update
        is exact for this SAE."""
        z = self._z[:8]
        idx = torch.arange(min(4, self.d_sae))
        shifted = z.clone()
        shifted[:, idx] += 1.0
        got = self.sae.decode(shifted) - self.sae.decode(z)
        want = torch.ones(len(z), len(idx), dtype=z.dtype, device=z.device) @ self.sae.W_dec[idx]
        return bool(torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max() + 1)))

    # ------------------------------------------------------------------ controls
    @staticmethod
    def _check_alpha(alpha) -> float:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= float(alpha) <= 1:
            raise ValueError(f"alpha must be in [0, 1] (h' = α·decode(z') + (1 − α)·h), got {alpha!r}")
        return float(alpha)

    @staticmethod
    def _check_gamma(gamma) -> float:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not torch.isfinite(
                torch.tensor(float(gamma))):
            raise ValueError(f"gamma (the value the latents are set to) must be a finite number, got {gamma!r}")
        return float(gamma)

    def _check_latent(self, latent) -> int:
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < self.d_sae:
            raise ValueError(f"latent must be an int in 0..{self.d_sae - 1} (the SAE's d_sae), got {latent!r}")
        return latent

    def toggle(self, latent: int, on: Optional[bool] = None) -> bool:
        """Switch a latent on (set to γ), off, or flip it; returns whether it is on now."""
        latent = self._check_latent(latent)
        on = latent not in self.latents if on is None else bool(on)
        if on != (latent in self.latents):
            if on:
                self.latents[latent] = None
            else:
                del self.latents[latent]
            self._changed()
        return on

    def set_latents(self, latents: Iterable[int]) -> None:
        """Switch on exactly `latents` (one refresh)."""
        latents = [self._check_latent(i) for i in latents]
        with self.batch():
            self.latents = dict.fromkeys(latents)

    def clear(self) -> None:
        with self.batch():
            self.latents = {}

    def set_gamma(self, gamma: float) -> None:
        self.gamma = self._check_gamma(gamma)
        if self.latents:
            self._changed()

    def set_alpha(self, alpha: float) -> None:
        self.alpha = self._check_alpha(alpha)
        if self.latents:
            self._changed()

    # ------------------------------------------------------------------ edits
    def edits(self) -> list:
        """The current edit: one sae_latent edit at the site (op "zero" for γ = 0, else "set" to γ)."""
        from workbench.primitives import ablate_latents

        if not self.latents:
            return []
        latents = sorted(self.latents)
        if self.gamma == 0.0:
            return list(ablate_latents(latents, op="zero", hook=self.site, position="all", tower="image"))
        return list(ablate_latents(latents, op="set", value=self.gamma, hook=self.site, position="all",
                                   tower="image"))

    @torch.no_grad()
    def _embed(self) -> tuple[Tensor, str]:
        from workbench.primitives import apply_op, edits_to_hooks, intervene

        edits = self.edits()
        if not edits:
            return self.baseline_embeddings, "baseline"
        if self._mode == "embed":
            idx = torch.tensor(sorted(self.latents), device=self._z.device)
            old = self._z[:, idx]
            new = apply_op(old, edits[0].op, None if edits[0].op == "zero" else self.gamma)
            rec = self._rec + (new - old) @ self.sae.W_dec[idx]
            emb = self.alpha * rec + (1.0 - self.alpha) * self._h
        elif self._mode == "embed_hook":
            ((_, fn),) = edits_to_hooks(self.model, edits, sae=self.sae, alpha=self.alpha)
            emb = fn(self._h.clone())
        elif self._mode == "tail":
            emb = self.gallery.tail.encode(edits_to_hooks(self.model, edits, sae=self.sae, alpha=self.alpha))
        else:
            with intervene(self.model, edits, sae=self.sae, alpha=self.alpha):
                emb = self.gallery.forward()
            return torch.nn.functional.normalize(emb.float().cpu(), dim=-1), "forward"
        return torch.nn.functional.normalize(emb.float().cpu(), dim=-1), "cached"

    # ------------------------------------------------------------------ browsing
    def latent_ap(self):
        """Latents by how well they score the attribute: latent, ap, auroc (and class for > 2 classes: each
        latent's best class), best first (`LatentStats.ap`)."""
        table = self.stats.ap(self.protocol.attribute)
        if "class" in table.columns:
            table = table.loc[table.groupby("latent")["ap"].idxmax()]
        return table.sort_values(["ap", "latent"], ascending=[False, True], ignore_index=True)

    # ------------------------------------------------------------------ specs
    def to_spec(self, **provenance):
        """The current edit as an `InterventionSpec` with the SAE's path and hash and α."""
        from workbench.primitives import InterventionSpec

        edits = self.edits()
        if not edits:
            raise ValueError("nothing to export: no latent is switched on")
        if self.sae_path is None:
            raise ValueError("the spec must record where the SAE lives: build the dashboard from the SAE's name or "
                             "folder (NeuronDashboard(model, 'synthsocial/image-embed', ...)) or pass sae_path=...")
        fields = {"method": "dashboard", "attribute": self.protocol.attribute,
                  "dataset": repr(self.gallery.dataset) if self.gallery.dataset is not None else None,
                  "latents": ",".join(map(str, sorted(self.latents))), "gamma": self.gamma, **provenance}
        return InterventionSpec.from_edits(self.model, edits, sae=self.sae_path.resolve(), alpha=self.alpha, **fields)

    def load_spec(self, spec: Union[str, Path, object]) -> None:
        """Restore latents, γ and α from a spec (a path or an `InterventionSpec`) made with this SAE at this site:
        sae_latent edits with op zero or set (one γ), run as a separate SAE pass."""
        from workbench.primitives import InterventionSpec, sae_sha256

        if not isinstance(spec, InterventionSpec):
            spec = InterventionSpec.load(spec)
        spec._check_fingerprint(self.model, True)
        bad = [e for e in spec.edits if not (e.target == "sae_latent" and e.tower == "image")]
        if bad or not spec.edits:
            first = f" (first: {bad[0]!r})" if bad else ""
            raise ValueError(f"the NeuronDashboard restores sae_latent edits on the image tower; this spec has "
                             f"{len(bad) if bad else 'no'} other edit(s){first}")
        sites = {e.target_hook() for e in spec.edits}
        if sites != {self.site}:
            raise ValueError(f"the spec edits the SAE at {sorted(sites)}, this dashboard's SAE is at {self.site!r}")
        if spec.sae is None or self.sae_path is None or spec.sae.sha256 != sae_sha256(self.sae_path):
            raise ValueError("the spec was made with another SAE (its sha256 differs from this dashboard's SAE at "
                             f"{self.sae_path}), or one of them records no path")
        if spec.sae.use_error_term is not None:
            raise ValueError("the spec's edits ran on the SAE spliced into the model; the dashboard runs the SAE as a "
                             "separate pass (α blend): evaluate it with evaluate_variants")
        gammas = {0.0 if e.op == "zero" else e.value for e in spec.edits}
        if not {e.op for e in spec.edits} <= {"zero", "set"} or len(gammas) != 1 or not all(
                isinstance(g, float) for g in gammas):
            raise ValueError("the dashboard restores edits that set latents to one value γ (ops zero / set with a "
                             f"scalar); this spec has ops {sorted({e.op for e in spec.edits})}")
        latents = []
        for e in spec.edits:
            if e.index is None:
                raise ValueError("the spec edits every latent (no index); the dashboard toggles listed latents")
            latents += [e.index] if isinstance(e.index, int) else list(e.index)
        with self.batch():
            self.latents = dict.fromkeys(latents)
            self.gamma, self.alpha = gammas.pop(), self._check_alpha(spec.alpha)
        self.message = f"loaded latents {sorted(self.latents)} (γ={self.gamma:g}, α={self.alpha:g})"


class NeuronDashboard:
    """The SAE-latent dashboard (ipywidgets); `state` is the `NeuronState` it observes.

    Args:
        model: a HookedCLIP; sae: a shipped name ("synthsocial/image-embed"), an SAE folder, or a loaded sae_lens
            SAE (then pass sae_path= to export specs); data: the gallery dataset; queries, attribute, target: as
            for HeadDashboard; alpha, gamma: the starting blend and value; gallery_k: images per gallery row.
    """

    def __init__(self, model, sae, data, queries=None, attribute: str = "gender", *, target: str = "occupation",
                 alpha: float = 0.6, gamma: float = 0.0, sae_path=None, top_k: int = 100, gallery_k: int = 8,
                 spec_path: Union[str, Path] = "latent_spec.json", batch_size: int = 256, progress: bool = True,
                 gallery: Optional[Gallery] = None):
        from workbench.saes import load_sae
        from workbench.saes.io import resolve_sae_path

        if isinstance(sae, (str, Path)):
            sae_path = resolve_sae_path(sae)
            sae = load_sae(sae_path, model=model)
        if gallery is None:
            gallery = Gallery.capture(model, data, batch_size=batch_size, progress=progress)
        protocol = LiveProtocol(model, gallery, queries=queries, attribute=attribute, target=target, top_k=top_k)
        self.state = NeuronState(model, gallery, protocol, sae, sae_path=sae_path, alpha=alpha, gamma=gamma)
        self.gallery_k, self.spec_path = gallery_k, Path(spec_path)
        self._ap = self.state.latent_ap()
        self._widget = None
        self._thumbs: dict = {}

    def __repr__(self) -> str:
        return f"NeuronDashboard({self.state!r})"

    def latent_options(self, n: int = 40) -> list[tuple[str, int]]:
        """(label, latent) of the n latents with the highest AP for the attribute."""
        rows = self._ap.head(n)
        cls = rows["class"] if "class" in rows.columns else [None] * len(rows)
        return [(f"#{int(l)}  AP {ap:.3f}" + (f" ({c})" if c is not None else ""), int(l))
                for l, ap, c in zip(rows["latent"], rows["ap"], cls)]

    def latent_html(self, latent: int, k: int = 6) -> str:
        """AP, frequency, mean activation by group and the top-k images of one latent, as HTML."""
        from .widgets import _png

        stats, attribute = self.state.stats, self.state.protocol.attribute
        row = self._ap[self._ap["latent"] == latent]
        ap = f"{float(row['ap'].iloc[0]):.3f}" if len(row) else "n/a"
        freq = float(stats.firing()[:, latent].float().mean())
        means = stats.group_means(attribute)
        means = means[means["latent"] == latent]
        groups = "".join(f"<tr><td>{html.escape(str(g))}</td><td>{m:.4f}</td><td>{f:.2f}</td></tr>"
                         for g, m, f in zip(means["group"], means["mean"], means["frequency"]))
        cells = []
        for i in stats.top_k(k, latents=[latent])["index"]:
            i = int(i)
            if i not in self._thumbs:
                image = self.state.gallery.image(i)
                self._thumbs[i] = None if image is None else _png(image)
            cells.append(f"<img src='data:image/png;base64,{self._thumbs[i]}' width='48' height='48' "
                         "style='image-rendering:pixelated;margin:1px'>" if self._thumbs[i] else f"#{i} ")
        return (f"<div><b>latent {latent}</b>: {html.escape(attribute)} AP {ap}, fires on {100 * freq:.1f} % of "
                f"the gallery</div><table style='font-family:monospace'><tr><th>group</th><th>mean</th>"
                f"<th>firing</th></tr>{groups}</table><div>top images: {''.join(cells)}</div>")

    @property
    def widget(self):
        if self._widget is None:
            from .widgets import build_neuron_widgets

            self._widget = build_neuron_widgets(self)
        return self._widget

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
