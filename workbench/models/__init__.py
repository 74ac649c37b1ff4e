"""Loading and hooking: `load_clip`, `HookedCLIP`, `HookedViT`, `HookedTextTransformer`."""
from .clip import HookedCLIP
from .config import TowerConfig
from .convert import UnsupportedModelError
from .loading import embedded_models, list_models, load_clip
from .preprocess import Preprocess
from .text import HookedTextTransformer
from .tokenize import TruncatedPromptWarning, UnknownWordsWarning
from .vit import HookedViT

__all__ = [
    "HookedCLIP", "HookedViT", "HookedTextTransformer", "TowerConfig", "Preprocess", "UnsupportedModelError",
    "load_clip", "list_models", "embedded_models", "TruncatedPromptWarning", "UnknownWordsWarning",
]
