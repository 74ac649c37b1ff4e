"""Sparse autoencoders as parts of the model: training (sae_lens `SAETrainer` fed by the activation store),
presets and the SAEs shipped for the embedded model. docs/saes.md.
"""
from workbench.models.splice import (SAEMismatchError, SAEMismatchWarning, SAESplice, SpliceError, add_sae,
                                     remove_saes, saes, spliced_saes)

from .presets import PRESETS, SHIPPED, SAEPreset, ShippedRecipe, get_preset, get_recipe
from .train import ARCHITECTURES, activation_store, matryoshka_widths, to_inference_sae, train_sae
from .io import SAELoadError, load_sae, read_sae_config, resolve_sae_path, save_sae, shipped_dir, shipped_saes
from .stats import LatentStats, latent_hook

__all__ = ["train_sae", "activation_store", "to_inference_sae", "matryoshka_widths", "ARCHITECTURES",
           "PRESETS", "SHIPPED", "SAEPreset", "ShippedRecipe", "get_preset", "get_recipe",
           "save_sae", "load_sae", "read_sae_config", "resolve_sae_path", "shipped_saes", "shipped_dir", "SAELoadError",
           "add_sae", "remove_saes", "saes", "spliced_saes", "SAESplice", "SpliceError", "SAEMismatchError",
           "SAEMismatchWarning", "LatentStats", "latent_hook"]
