"""HeadDashboard: switch attention heads' writes to the pooled token on and off and watch retrieval fairness move.

    dash = HeadDashboard(model, SynthSocial("test_balanced"), attribute="gender")
    dash                      # in JupyterLab: the grid, the op selector, live metrics, the gallery, export / load
    dash.state.toggle(5, 1)   # the same from Python; dash.state.metrics["gender_ndkl"]

One toggle per (layer, head), coloured by the head's held-out probe AP or bias attribution
(`workbench.methods.expert_heads.find_expert_heads`, every layer). The op applies to every head switched on:
zero, the neutral prototype, one class's prototype, or scale by α. Heads of the last block are re-evaluated
exactly from the cached pass (`CLSTail`); a head in an earlier block costs a forward pass over the gallery.
"Export spec" writes an `InterventionSpec` (`apply(model, InterventionSpec.load(path))` reproduces the
embeddings); "Load spec" restores one, also a spec written by `workbench experts` (docs/dashboards.md).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from .state import DashboardState, Gallery, LiveProtocol

__all__ = ["HeadState", "HeadDashboard", "HEAD_OPS"]

Head = tuple[int, int]
HEAD_OPS = ("zero", "neutral", "scale")  # plus "prototype: <class>" with a finding, and "spec" after a load
SPEC_OP = "spec"


class HeadState(DashboardState):
    """Which heads are switched on and what the op does to them (see the module docstring).

    finding: an `ExpertHeadsFinding` (its table colours the grid; its prototypes enable the "neutral" and
    "prototype: <class>" ops); table: a per-head table (layer, head, ap, attribution) when there is no finding.
    """

    def __init__(self, model, gallery: Gallery, protocol: LiveProtocol, finding=None, table=None,
                 alpha: float = 0.5):
        cfg = model.visual.cfg
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.finding = finding
        self.table = finding.table if finding is not None and table is None else table
        self.prototypes = None if finding is None else finding.prototypes
        self.class_names = {} if finding is None else dict(finding.class_names)
        self.selected: dict[Head, None] = {}  # ordered set, in the order heads were switched on
        self.op, self.alpha = "zero", self._check_alpha(alpha)
        self.loaded: dict[Head, object] = {}  # head -> Edit, for op "spec"
        self.loaded_from: Optional[str] = None
        super().__init__(model, gallery, protocol)

    def __repr__(self) -> str:
        heads = ", ".join(f"L{l}H{h}" for l, h in self.selected) or "none"
        return (f"HeadState(heads on: {heads}; op={self.describe_op()}; path={self.path}; "
                f"{self.protocol.attribute}_ndkl={self.metrics[f'{self.protocol.attribute}_ndkl']:.4f})")

    # ------------------------------------------------------------------ ops
    @property
    def ops(self) -> list[str]:
        """The ops available: zero, scale, and with prototypes neutral and one per class (and spec after a load)."""
        out = ["zero", "scale"]
        if self.prototypes is not None:
            out += ["neutral"] + [f"prototype: {name}" for name in self.class_names.values()]
        if self.loaded:
            out.append(SPEC_OP)
        return out

    def describe_op(self) -> str:
        if self.op == "scale":
            return f"scale α={self.alpha:g}"
        if self.op == SPEC_OP:
            return f"values of {self.loaded_from or 'the loaded spec'}"
        return self.op

    @staticmethod
    def _check_alpha(alpha) -> float:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not torch.isfinite(torch.tensor(
                float(alpha))):
            raise ValueError(f"alpha (the scale factor of op 'scale') must be a finite number, got {alpha!r}")
        return float(alpha)

    def set_op(self, op: str, alpha: Optional[float] = None) -> None:
        """Choose the op for every head switched on (`ops` lists them); alpha: the factor of "scale"."""
        if op not in self.ops:
            hint = " (prototype ops need a finding: HeadDashboard computes one)" if op.startswith(
                ("neutral", "prototype")) else ""
            raise ValueError(f"unknown op {op!r}; choose one of {self.ops}{hint}")
        if op == SPEC_OP:
            missing = [h for h in self.selected if h not in self.loaded]
            if missing:
                raise ValueError(f"op 'spec' uses the loaded spec's values, which it has only for "
                                 f"{self._names(self.loaded)}; switch off {self._names(missing)} first")
        if alpha is not None:
            self.alpha = self._check_alpha(alpha)
        self.op = op
        self._changed()

    def set_alpha(self, alpha: float) -> None:
        self.alpha = self._check_alpha(alpha)
        if self.op == "scale":
            self._changed()

    # ------------------------------------------------------------------ heads
    @staticmethod
    def _names(heads: Iterable[Head]) -> str:
        return ", ".join(f"L{l}H{h}" for l, h in heads)

    def _check_head(self, layer, head) -> Head:
        for name, v, n in (("layer", layer, self.n_layers), ("head", head, self.n_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                raise ValueError(f"{name} must be an int in 0..{n - 1}, got {v!r}")
        return (layer, head)

    def toggle(self, layer: int, head: int, on: Optional[bool] = None) -> bool:
        """Switch head (layer, head) on, off (`on`), or flip it; returns whether it is on now."""
        key = self._check_head(layer, head)
        on = key not in self.selected if on is None else bool(on)
        if on and self.op == SPEC_OP and key not in self.loaded:
            raise ValueError(f"the loaded spec has no value for L{layer}H{head}; choose another op to add heads")
        if on and self.op not in (SPEC_OP, "zero", "scale"):
            self._prototype_values([key])  # fails now, with the reason, rather than at refresh
        if on == (key in self.selected):
            return on
        if on:
            self.selected[key] = None
        else:
            del self.selected[key]
        self._changed()
        return on

    def set_heads(self, heads: Iterable[Head]) -> None:
        """Switch on exactly `heads` (one refresh)."""
        heads = [self._check_head(*h) for h in heads]
        with self.batch():
            self.selected = dict.fromkeys(heads)

    def clear(self) -> None:
        """Switch every head off."""
        with self.batch():
            self.selected = {}

    @property
    def heads(self) -> list[Head]:
        return list(self.selected)

    # ------------------------------------------------------------------ edits
    def _prototype_values(self, heads: Sequence[Head]) -> dict:
        key = "neutral" if self.op == "neutral" else next(
            c for c, name in self.class_names.items() if self.op == f"prototype: {name}")
        values = self.prototypes[key]
        missing = [h for h in heads if h not in values]
        if missing:
            raise ValueError(f"no prototype for {self._names(missing)}: the finding covers layers "
                             f"{self.finding.layers}; build it with layers='all'")
        return values

    def edits(self) -> list:
        """The current edits (`Edit`s on `blocks.{l}.attn.hook_cls_result`), one per head switched on."""
        from workbench.primitives import ablate_heads

        heads = self.heads
        if not heads:
            return []
        if self.op == "zero":
            return list(ablate_heads(heads, op="zero"))
        if self.op == "scale":
            return list(ablate_heads(heads, op="scale", factor=self.alpha))
        if self.op == SPEC_OP:
            return [self.loaded[h] for h in heads]
        return list(ablate_heads(heads, op="replace", value=self._prototype_values(heads)))

    def _embed(self) -> tuple[Tensor, str]:
        from workbench.evaluation import cached_edit
        from workbench.primitives import edits_to_hooks, intervene

        edits = self.edits()
        if not edits:
            return self.baseline_embeddings, "baseline"
        tail = self.gallery.tail
        if tail is not None and all(cached_edit(e, self.model) for e in edits):
            emb = tail.encode(edits_to_hooks(self.model, edits), normalize=True).float().cpu()
            return emb, "cached"
        with intervene(self.model, edits):
            emb = self.gallery.forward()
        return torch.nn.functional.normalize(emb, dim=-1), "forward"

    # ------------------------------------------------------------------ specs
    def to_spec(self, **provenance):
        """The current edits as an `InterventionSpec` (provenance: method "dashboard", the attribute, heads, op)."""
        from workbench.primitives import InterventionSpec

        edits = self.edits()
        if not edits:
            raise ValueError("nothing to export: no head is switched on")
        fields = {"method": "dashboard", "attribute": self.protocol.attribute,
                  "dataset": repr(self.gallery.dataset) if self.gallery.dataset is not None else None,
                  "heads": self._names(self.heads), "op": self.describe_op(), **provenance}
        return InterventionSpec.from_edits(self.model, edits, **fields)

    def load_spec(self, spec: Union[str, Path, object]) -> None:
        """Restore the heads and op of a spec (a path or an `InterventionSpec`): its heads are switched on, the op
        is recognised (zero, scale α, the neutral or a class prototype of this dashboard's finding) or, when its
        values are other ones (e.g. prototypes from another reference set), kept as op "spec"."""
        from workbench.primitives import InterventionSpec

        source = None
        if not isinstance(spec, InterventionSpec):
            source = Path(spec).name
            spec = InterventionSpec.load(spec)
        spec.validate(self.model)
        other = [e for e in spec.edits if not (e.target == "head" and e.tower == "image" and e.position == "pooled")]
        if other:
            raise ValueError(f"the HeadDashboard restores head edits at the pooled token of the image tower; this spec "
                             f"has {len(other)} other edit(s) (first: a {other[0].target} edit, {other[0]!r}): "
                             "use NeuronDashboard for SAE "
                             "latents, or apply(model, spec) for the rest")
        if not spec.edits:
            raise ValueError("the spec has no edits")
        heads = [(e.layer, e.head) for e in spec.edits]
        if len(set(heads)) != len(heads):
            raise ValueError(f"the spec edits a head twice ({self._names(heads)}); the dashboard shows one op per head")
        op, alpha = self._recognise(spec.edits)
        with self.batch():
            self.loaded = dict(zip(heads, spec.edits))
            self.loaded_from = source or spec.provenance.get("variant") or "spec"
            self.selected = dict.fromkeys(heads)
            self.op = op
            if alpha is not None:
                self.alpha = alpha
        self.message = f"loaded {self._names(heads)} with op {self.describe_op()}"

    def _recognise(self, edits) -> tuple[str, Optional[float]]:
        ops = {e.op for e in edits}
        if ops == {"zero"}:
            return "zero", None
        if ops == {"scale"} and all(isinstance(e.value, float) for e in edits) and len({e.value for e in edits}) == 1:
            return "scale", edits[0].value
        if ops <= {"replace", "mean", "set"} and self.prototypes is not None:
            keys = [("neutral", "neutral")] + [(c, f"prototype: {n}") for c, n in self.class_names.items()]
            for key, name in keys:
                values = self.prototypes[key]
                if all(isinstance(e.value, Tensor) and (e.layer, e.head) in values
                       and torch.equal(e.value, values[(e.layer, e.head)].float()) for e in edits):
                    return name, None
        return SPEC_OP, None


class HeadDashboard:
    """The head dashboard (ipywidgets); `state` is the `HeadState` it observes.

    Args:
        model: a HookedCLIP; data: the gallery, a labelled dataset (e.g. `SynthSocial("test_balanced")`);
        queries: {target class: prompt} (default "a photo of a {class}"); attribute: the protected label.
        reference: the dataset the heads are scored and the prototypes computed on (default `data`);
        finding: an `ExpertHeadsFinding` to use instead (computed with layers="all" otherwise).
        colour_by: "ap" or "attribution"; gallery_k: images per gallery row; spec_path: default export path.
    """

    def __init__(self, model, data, queries=None, attribute: str = "gender", *, target: str = "occupation",
                 reference=None, finding=None, colour_by: str = "ap", top_k: int = 100, gallery_k: int = 8,
                 spec_path: Union[str, Path] = "head_spec.json", batch_size: int = 256, progress: bool = True,
                 gallery: Optional[Gallery] = None):
        from workbench.methods.expert_heads import find_expert_heads

        if colour_by not in ("ap", "attribution"):
            raise ValueError(f"colour_by must be 'ap' or 'attribution', got {colour_by!r}")
        if gallery is None:
            gallery = Gallery.capture(model, data, batch_size=batch_size, progress=progress)
        protocol = LiveProtocol(model, gallery, queries=queries, attribute=attribute, target=target, top_k=top_k)
        if finding is None:
            finding = find_expert_heads(model, reference if reference is not None else data, attribute=attribute,
                                        layers="all", queries=queries, target=target, batch_size=batch_size,
                                        progress=progress)
        self.state = HeadState(model, gallery, protocol, finding=finding)
        self.colour_by, self.gallery_k, self.spec_path = colour_by, gallery_k, Path(spec_path)
        self._widget = None

    def __repr__(self) -> str:
        return f"HeadDashboard({self.state!r})"

    @property
    def widget(self):
        """The ipywidgets tree (built on first use)."""
        if self._widget is None:
            from .widgets import build_head_widgets

            self._widget = build_head_widgets(self)
        return self._widget

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
