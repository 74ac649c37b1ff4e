"""Checkpoint I/O without pickle, including the compact format used for shipped models.

Compact format: a safetensors file where a large embedding matrix `K` may be stored as its non-zero rows
`K.__rows` [k, d] plus their indices `K.__ids` [k] and full shape `K.__shape`; every other row is zero. The
shipped small CLIP only ever sees a few hundred of the 49,408 BPE tokens, so this keeps it a few MB.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from workbench.files import atomic_write

ROWS, IDS, SHAPE = ".__rows", ".__ids", ".__shape"


def expand_compact(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rebuild full tensors from `K.__rows` / `K.__ids` / `K.__shape` triples; other keys pass through."""
    out = {k: v for k, v in state.items() if not k.endswith((ROWS, IDS, SHAPE))}
    for key in [k[: -len(ROWS)] for k in state if k.endswith(ROWS)]:
        rows, ids, shape = state[key + ROWS], state[key + IDS], state[key + SHAPE]
        full = torch.zeros(tuple(shape.tolist()), dtype=rows.dtype)
        full[ids.long()] = rows
        out[key] = full
    return out


def save_compact(state: dict[str, Tensor], path, sparse_rows: Optional[dict[str, Iterable[int]]] = None,
                 dtype: torch.dtype = torch.float16, metadata: Optional[dict[str, str]] = None) -> Path:
    """Save a state_dict as safetensors in `dtype`, storing only the listed rows of `sparse_rows` keys."""
    from safetensors.torch import save_file

    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = v.to(dtype).contiguous() if v.is_floating_point() else v.contiguous()
    for key, ids in (sparse_rows or {}).items():
        full = out.pop(key)
        ids_t = torch.as_tensor(sorted(set(int(i) for i in ids)), dtype=torch.int64)
        out[key + ROWS], out[key + IDS] = full[ids_t].contiguous(), ids_t
        out[key + SHAPE] = torch.tensor(full.shape, dtype=torch.int64)
    # atomic: a crash never leaves a half-written checkpoint under the final name
    return atomic_write(path, lambda tmp: save_file(out, tmp, metadata={"format": "workbench-compact-v1",
                                                                      **(metadata or {})}))


def load_into(model: nn.Module, checkpoint) -> nn.Module:
    """Load a checkpoint (safetensors, compact, or weights-only torch file) into an open_clip model."""
    from .loading import load_state_dict

    state = expand_compact(load_state_dict(checkpoint))
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    missing = sorted(set(own) - set(state) - {"attn_mask"})
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {Path(checkpoint).name} does not match the architecture: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}. "
            "Check that `name` is the architecture the weights were trained with."
        )
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"checkpoint shapes differ from the architecture for {bad[:5]}: "
                         f"{[(tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}")
    model.load_state_dict(state, strict=False)
    return model
