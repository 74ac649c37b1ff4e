"""Plotly figures for workbench results (plotly is imported inside each function, not at import time)."""
from .patching import plot_effects

__all__ = ["plot_effects"]
