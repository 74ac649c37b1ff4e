"""workbench — mechanistic interpretability for CLIP-style vision-language models (open_clip).

Heavy submodules (torch models, plotting, widgets) are imported lazily on first attribute access, so
`import workbench` stays fast.
"""
from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load_clip": "workbench.models",
    "list_models": "workbench.models",
    "HookedCLIP": "workbench.models",
    "HookedViT": "workbench.models",
    "HookedTextTransformer": "workbench.models",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
