"""Debiasing methods, one module each, registered by name (see docs/methods.md).

- `registry`: `register_method`, `get_method`, `list_methods`, `method_for_spec` (a spec's
  `provenance["method"]` → the function that made it).
- `expert_heads`: `find_expert_heads` (per-head probes, per-neuron AP and bias attribution; probe-AP and
  attribution selections side by side) and `expert_variants` (prototype replacement, zero ablation,
  damping, expert neurons, intersectional sets); the first version `expert_heads` (top heads by bias
  attribution, neutral prototype) is registered as "expert_heads" and run by `workbench demo`.
- `debiaslens`: `find_social_neurons` (SAE latents that fire on every input of one group only, per attribute)
  and `debiaslens_variants` / `alpha_sweep_variants` (the selected latents set to γ and the blend
  α·decode(z) + (1 − α)·h, as InterventionSpecs on either tower); registered as "debiaslens".
- `ntide`: `run_ntide` (N-TIDE: a frozen-CLIP teacher with a learned neutral token distilled into an image-only
  student, with the paper's ablations; trained models, not edits) and `NTIDEConfig`; registered as "ntide".
- `sem`: `SEM` (Sparse Embedding Modulation of text embeddings in an SAE's latent space: SEMi / SEMb / SEMbi;
  SEMb and SEMbi export as a `rank_modulate` spec) and `sem_variants`; registered as "sem".
- `baselines`: the projection baselines `orth_proj` / `orth_cali` (Chuang et al.) as project_out Edits on the text
  embedding, `projection_variants`; `disentanglement`: SEM's sequential-probing disentanglement score.

Each method is a thin composition of the layers below it (activations, probes, primitives, evaluation):
it never re-implements a forward pass, a probe or a metric, and its result is a list of edits that
exports as an `InterventionSpec`.
"""
from . import expert_heads  # noqa: F401  (registers "expert_heads"; the module keeps its name here)
from . import debiaslens  # noqa: F401  (registers "debiaslens")
from . import sem, baselines  # noqa: F401,E401  (register "sem", "orth_proj", "orth_cali")
from . import ntide  # noqa: F401  (registers "ntide")
from .registry import get_method, list_methods, method_for_spec, register_method

__all__ = ["register_method", "get_method", "list_methods", "method_for_spec"]
