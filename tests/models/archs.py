"""Random-weight open_clip architectures, built offline, with LayerNorms perturbed away from 1/0 so that
equivalence checks are meaningful (an identity LayerNorm would hide a missing γ or β)."""
import json
import tempfile
import warnings
from pathlib import Path

import torch

# Two small custom configs that exercise branches the big ones do not: LayerScale, no ln_pre,
# average pooling, QuickGELU via config, bidirectional text, a Linear text projection with bias, 'last' pooling.
TINY_CONFIGS = {
    "wb-tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8,
                       "ls_init_value": 0.5, "no_ln_pre": True},
        "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
    },
    "wb-tiny-avg": {
        "embed_dim": 24,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 48, "layers": 2, "width": 48, "head_width": 12, "patch_size": 16,
                       "pool_type": "avg"},
        "text_cfg": {"context_length": 10, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_type": "linear", "proj_bias": True, "pool_type": "last"},
    },
}
BIG = ["ViT-B-32", "ViT-B-16", "ViT-B-32-quickgelu"]
ALL_ARCHS = BIG + ["wb-tiny"]  # the equivalence matrix: all token-pooled, so decomposition applies too
TEXTS = ["a photo of a nurse", "a doctor", "", "an old firefighter standing in the street at night"]


_REGISTERED = []


def register_tiny_configs():
    """Make the tiny configs known to open_clip (once per process; the JSON files live in a temp folder)."""
    if _REGISTERED:
        return
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="wb-model-configs-"))
    for name, cfg in TINY_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    _REGISTERED.append(folder)


def perturb_layernorms(model, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.add_(scale * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(scale * torch.randn(m.bias.shape, generator=g))
    return model


def build_open_clip(name, seed=1234):
    import open_clip

    register_tiny_configs()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oc = open_clip.create_model(name, pretrained=None).eval()
    return perturb_layernorms(oc)


_CACHE = {}


def build_pair(name):
    """(open_clip model, HookedCLIP) with random, perturbed weights; cached for the test session."""
    if name not in _CACHE:
        import open_clip
        from workbench.models import HookedCLIP

        oc = build_open_clip(name)
        _CACHE[name] = (oc, HookedCLIP.from_open_clip(oc, tokenizer=open_clip.get_tokenizer(name), name=name).eval())
    return _CACHE[name]


def images_for(model, n=3, seed=0):
    size = model.visual.cfg.image_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))
