"""Interactive dashboards (ipywidgets) over one observable state object (docs/dashboards.md).

- `HeadDashboard` / `HeadState`: toggle attention heads (zero, neutral or class prototype, scale α), live
  NDKL, MaxSkew, mAP and zero-shot accuracy, the retrieval gallery, export / load an InterventionSpec.
- `NeuronDashboard` / `NeuronState`: browse and silence SAE latents (γ, blend α), same metrics and export.
- `Gallery` (cached once: labels, clean embeddings, the last block at the pooled token) and `LiveProtocol`
  (queries encoded once; metrics from `workbench.metrics`): what both measure on.

The states run without widgets (plain Python, tests); ipywidgets is imported only when a widget is shown.
"""
from .heads import HeadDashboard, HeadState
from .neurons import NeuronDashboard, NeuronState
from .state import DashboardState, Gallery, LiveProtocol

__all__ = ["HeadDashboard", "HeadState", "NeuronDashboard", "NeuronState", "DashboardState", "Gallery",
           "LiveProtocol"]
