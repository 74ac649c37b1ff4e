"""`load_clip`: one factory for embedded and open_clip models, offline-friendly."""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch

from .clip import HookedCLIP

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def embedded_models() -> list[str]:
    """Names of the models shipped inside the package (weights, open_clip config and preprocessing in
    workbench/models/pretrained/{name}.safetensors, {name}.json, {name}.preprocess.json)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))


def embedded_config(name: str) -> tuple[Path, dict]:
    """(open_clip model-config path, preprocess config) of an embedded model; registers the config with open_clip."""
    import open_clip

    path = PRETRAINED_DIR / f"{name}.json"
    open_clip.add_model_config(path)
    return path, json.loads((PRETRAINED_DIR / f"{name}.preprocess.json").read_text())


def list_models() -> list[str]:
    """Embedded models first, then every open_clip architecture name."""
    import open_clip

    return embedded_models() + open_clip.list_models()


def _resolve_dtype(dtype) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use torch.float32, 'fp16' or 'bf16'") from None


def load_state_dict(path: Union[str, Path]) -> dict:
    """Read a checkpoint without pickle: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled objects: say so instead of a deep trace
            raise ValueError(f"could not read {path} as a weights-only checkpoint ({e}); "
                             "convert it to safetensors or a plain state_dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not contain a state_dict (got {type(state).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


class _DropRandomInitNotice(logging.Filter):
    """open_clip logs "No pretrained weights loaded … initialized randomly" even when we load a checkpoint
    right after; that line would mislead users, so it is dropped while we build the architecture."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    notice = _DropRandomInitNotice()
    if active:
        logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def _unknown_name_error(name: str) -> ValueError:
    import open_clip

    names = embedded_models() + open_clip.list_models()
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"unknown model name {name!r}.{hint} Use workbench.models.list_models() to see the embedded models "
        f"({', '.join(embedded_models()) or 'none'}) and open_clip architectures. For other weights, build the "
        "architecture with open_clip and pass checkpoint='path/to/weights.safetensors'."
    )


def load_clip(name: str = "synthsocial", pretrained: Optional[str] = None, checkpoint=None, device=None,
              dtype=None) -> HookedCLIP:
    """Create a CLIP with open_clip and convert it to a `HookedCLIP`.

    Args:
        name: an embedded model ("synthsocial", runs offline) or any open_clip architecture ("ViT-B-32").
        pretrained: an open_clip pretrained tag ("openai", "laion2b_s34b_b79k"); needs the weights in the
            local cache when offline. None → random weights (unless embedded or `checkpoint` is given).
        checkpoint: path to a local state_dict (.safetensors, or .pt/.bin read with weights_only=True).
        device, dtype: where and in which precision to put the model (default: CPU, float32).

    Returns a HookedCLIP with `.preprocess` (PIL images or [0,1] tensors) and `.tokenizer` attached.
    """
    import open_clip

    if pretrained is not None and checkpoint is not None:
        raise ValueError("pass either pretrained=<tag> or checkpoint=<path>, not both")
    force_preprocess = None
    if (PRETRAINED_DIR / f"{name}.json").is_file():
        _, force_preprocess = embedded_config(name)
        if checkpoint is None and pretrained is None:
            checkpoint = PRETRAINED_DIR / f"{name}.safetensors"
    elif name not in open_clip.list_models():
        raise _unknown_name_error(name)

    try:
        with _quiet_random_init(checkpoint is not None):
            model = open_clip.create_model(name, pretrained=pretrained, force_preprocess_cfg=force_preprocess)
    except Exception as e:  # network/offline/unknown-tag failures surface as many exception types
        tags = [t for n, t in open_clip.list_pretrained() if n == name]
        raise RuntimeError(
            f"could not load pretrained weights {name!r}/{pretrained!r}: {type(e).__name__}: {e}. "
            f"Known tags for {name}: {tags or 'none'}. Offline, download the weights elsewhere and pass "
            f"checkpoint='path/to/open_clip_model.safetensors' (with pretrained=None)."
        ) from None
    if checkpoint is not None:
        from .storage import load_into

        load_into(model, checkpoint)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    hooked = HookedCLIP.from_open_clip(model, tokenizer=tokenizer, name=name,
                                       pretrained=pretrained or (Path(checkpoint).name if checkpoint else None))
    hooked.eval()
    return hooked.to(device=device or "cpu", dtype=_resolve_dtype(dtype))
