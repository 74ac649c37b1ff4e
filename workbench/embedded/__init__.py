"""The embedded default: a small CLIP trained on SynthSocial, shipped in the package (`load_clip("synthsocial")`).

`train_toy` reproduces the shipped checkpoint (`workbench train-toy`); `model_card` measures the properties
the README reports (zero-shot accuracy, attribute probes, planted retrieval bias).
"""
from .card import model_card
from .train import TrainConfig, train_toy

__all__ = ["TrainConfig", "train_toy", "model_card"]
