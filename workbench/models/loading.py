"""`load_clip`: one factory for embedded and open_clip models, offline-friendly."""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
from os import PathLike
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


_FLOAT_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64}
_ACCEPTED_DTYPES = ("torch.float32 (default), torch.float16, torch.bfloat16 or torch.float64 "
                    "(or 'fp32', 'fp16', 'bf16', 'fp64')")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _resolve_dtype(dtype) -> Optional[torch.dtype]:
    """`dtype` as a float torch dtype (None stays None: the weights' own, float32)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype in _FLOAT_DTYPES.values():
            return dtype
        raise ValueError(f"dtype={dtype} is not supported: the model's weights and activations are floating "
                         f"point; pass {_ACCEPTED_DTYPES}")
    if isinstance(dtype, str) and dtype in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}; pass {_ACCEPTED_DTYPES}")


def _check_checkpoint_path(path: Path) -> None:
    """A checkpoint must be an existing file; a folder gets a hint at the weights file inside it."""
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        inside = (f"weights files in it: {', '.join(found[:5])}{' …' if len(found) > 5 else ''}" if found else
                  f"it holds no {'/'.join(CHECKPOINT_SUFFIXES)} file")
        raise ValueError(f"checkpoint {str(path)!r} is a folder, not a weights file; pass the file itself, "
                         f"e.g. checkpoint='{path / (found[0] if found else 'open_clip_model.safetensors')}' "
                         f"({inside})")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")


def load_state_dict(path: Union[str, Path]) -> dict:
    """Read a checkpoint without pickle: safetensors, or torch.load(weights_only=True).

    The format is read from the file's first bytes (a safetensors file saved as .bin still loads); errors
    name the file and say whether it is damaged or holds pickled objects."""
    path = Path(path)
    _check_checkpoint_path(path)
    with path.open("rb") as f:
        head = f.read(9)
    torch_zip = head.startswith(b"PK\x03\x04")  # torch.save's format since torch 1.6
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):  # u64 header size, then JSON
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error type with a bare header message
            hint = ("it looks like a torch.save file: rename it to .pt" if torch_zip else
                    "it may be truncated or corrupted, or not a checkpoint: download or export it again")
            raise ValueError(f"{str(path)!r} is not a valid safetensors file ({type(e).__name__}: {e}); {hint}"
                             ) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            pickled = (torch_zip or head[:1] == b"\x80") and "weights only load failed" in str(e).lower()
            if pickled:  # a well-formed file with objects weights_only refuses
                raise ValueError(f"could not read {path} as a weights-only checkpoint: it holds pickled objects, "
                                 "which are never loaded (they can run code); convert it to safetensors or a "
                                 "plain state_dict of tensors") from None
            raise ValueError(f"{str(path)!r} is not a readable torch checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); it may be truncated or corrupted: download or "
                             "export it again, or pass a .safetensors file") from None
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


def _missing_name_error(name) -> ValueError:
    """The error for a model name that is not a string (None, a path, a number)."""
    as_path = (f" {str(name)!r} looks like a path: pass the architecture's name and checkpoint={str(name)!r}."
               if isinstance(name, PathLike) else "")
    return ValueError(
        f"load_clip needs a model name (a string), got {name!r}.{as_path} Embedded models (run offline): "
        f"{', '.join(map(repr, embedded_models())) or 'none'}; workbench.models.list_models() lists them and "
        "every open_clip architecture (e.g. 'ViT-B-32')."
    )


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
        device, dtype: where and in which precision to put the model (default: CPU, float32); dtype is
            torch.float32 / float16 / bfloat16 / float64 or 'fp32' / 'fp16' / 'bf16' / 'fp64'.

    Returns a HookedCLIP with `.preprocess` (PIL images or [0,1] tensors) and `.tokenizer` attached.
    """
    if not isinstance(name, str) or not name:
        raise _missing_name_error(name)
    dtype = _resolve_dtype(dtype)  # checked before any work
    if pretrained is not None and checkpoint is not None:
        raise ValueError("pass either pretrained=<tag> or checkpoint=<path>, not both")
    if checkpoint is not None:
        _check_checkpoint_path(Path(checkpoint))

    import open_clip

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
    return hooked.to(device=device or "cpu", dtype=dtype)
