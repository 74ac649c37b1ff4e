"""Plotly figures for workbench results (plotly is imported inside each function, not at import time)."""
from .compare import group_mix_table, plot_method_comparison, plot_retrieval_mix
from .experts import plot_expert_heads, plot_head_sweep, plot_metric_bars, plot_neuron_ap, plot_retrieval_gallery
from .patching import plot_effects
from .probes import head_score_matrix, plot_head_scores

__all__ = ["plot_effects", "plot_head_scores", "head_score_matrix", "plot_expert_heads", "plot_neuron_ap",
           "plot_metric_bars", "plot_head_sweep", "plot_retrieval_gallery", "group_mix_table", "plot_retrieval_mix",
           "plot_method_comparison"]
