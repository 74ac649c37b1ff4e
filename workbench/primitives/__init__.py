"""Primitives: edits (ablation, steering) as composable hooks, and the JSON `InterventionSpec`.

- `edit`: the `Edit` value type (validation, resolution to a hook, `to_dict`/`from_dict`); `values` its
  canonical values; `ops` the op registry (`register_op`); `compile`: `edits_to_hooks`, the one mechanism
  everything below produces; `sae`: `sae_transform`, the one SAE pass.
- `ablate`: `ablate_heads`, `ablate_neurons`, `ablate_latents`, `Intervention` (`+` to compose),
  `intervene(model, edits)`, reference means (`mean_activations`, `class_prototypes`).
- `steer`: `add_direction`, `project_out`, `modulate_latents`, SAE steering hooks (`sae_blend_hook`,
  `sae_modulation_hook`), `steer`.
- `spec`: `InterventionSpec` (save / load / validate), `apply(model, spec)`.
- `patch`: activation patching effect matrices (`patch_heads`, `patch_sites`).
"""
from workbench.models.hook_names import POSITIONS, TOWERS

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
from .compile import edit_hook_fn, edits_to_hooks
from .edit import TARGETS, Edit
from .errors import EditError, EditTargetError
from .ops import Op, apply_op, get_op, op_names, register_op
from .patch import PatchResult, SitePatchResult, logit_metric, patch_heads, patch_sites, similarity_metric
from .sae import sae_transform
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
from .steer import add_direction, modulate_latents, project_out, sae_blend_hook, sae_modulation_hook, steer

__all__ = [
    "Edit", "EditError", "EditTargetError", "edits_to_hooks", "edit_hook_fn", "apply_op", "TARGETS", "POSITIONS",
    "TOWERS", "Op", "register_op", "get_op", "op_names",
    "Intervention", "intervene", "ablate_heads", "ablate_neurons", "ablate_latents", "mean_activations",
    "class_prototypes", "Prototypes",
    "add_direction", "project_out", "modulate_latents", "sae_transform", "sae_blend_hook", "sae_modulation_hook",
    "steer",
    "InterventionSpec", "ModelRef", "SAERef", "apply", "sae_sha256", "SCHEMA",
    "SpecError", "SpecFormatError", "SidecarError", "FingerprintMismatchError", "SpecModelMismatchError", "SAEError",
    "FingerprintWarning",
    "patch_heads", "patch_sites", "PatchResult", "SitePatchResult", "similarity_metric", "logit_metric",
]
