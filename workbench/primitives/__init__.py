"""Primitives: edits (ablation, steering) as composable hooks, and the JSON `InterventionSpec`.

- `edits`: the `Edit` value type and `edits_to_hooks` — the one mechanism everything below produces.
- `ablate`: `ablate_heads`, `ablate_neurons`, `ablate_latents`, `Intervention` (`+` to compose),
  `intervene(model, edits)`, reference means (`mean_activations`, `class_prototypes`).
- `steer`: `add_direction`, `project_out`, SAE steering (`sae_blend_hook`, `sae_modulation_hook`), `steer`.
- `spec`: `InterventionSpec` (save / load / validate), `apply(model, spec)`.
- `patch`: activation patching effect matrices (`patch_heads`, `patch_sites`).
"""
from .ablate import (
    Intervention,
    Prototypes,
    ablate_heads,
    ablate_latents,
    ablate_neurons,
    class_prototypes,
    intervene,
    mean_activations,
)
from .edits import OPS, POSITIONS, SITES, TOWERS, Edit, EditError, EditTargetError, apply_op, edits_to_hooks
from .patch import PatchResult, SitePatchResult, logit_metric, patch_heads, patch_sites, similarity_metric
from .spec import (
    SCHEMA,
    FingerprintMismatchError,
    FingerprintWarning,
    InterventionSpec,
    ModelRef,
    SAEError,
    SAERef,
    SidecarError,
    SpecError,
    SpecFormatError,
    SpecModelMismatchError,
    apply,
    sae_sha256,
)
from .steer import add_direction, project_out, sae_blend_hook, sae_modulation_hook, sae_transform, steer

__all__ = [
    "Edit", "EditError", "EditTargetError", "edits_to_hooks", "apply_op", "SITES", "OPS", "POSITIONS", "TOWERS",
    "Intervention", "intervene", "ablate_heads", "ablate_neurons", "ablate_latents", "mean_activations",
    "class_prototypes", "Prototypes",
    "add_direction", "project_out", "sae_transform", "sae_blend_hook", "sae_modulation_hook", "steer",
    "InterventionSpec", "ModelRef", "SAERef", "apply", "sae_sha256", "SCHEMA",
    "SpecError", "SpecFormatError", "SidecarError", "FingerprintMismatchError", "SpecModelMismatchError", "SAEError",
    "FingerprintWarning",
    "patch_heads", "patch_sites", "PatchResult", "SitePatchResult", "similarity_metric", "logit_metric",
]
