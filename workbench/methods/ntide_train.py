"""The N-TIDE training loop: AdamW + cosine schedule, seeded, a tqdm bar, one safetensors checkpoint per epoch,
and `resume` that continues from the last complete epoch and reproduces an uninterrupted run bit for bit.

    history = fit(module, param_groups, step, n_items, run=settings, folder=ckpt_dir, epochs=10, batch_size=64,
                  weight_decay=1e-5, eta_min=1e-5, seed=0, resume=True)

`step(index: LongTensor [b]) -> (loss, n_correct)` computes one batch (the caller owns the data). The item order
of epoch e is a permutation drawn from a generator seeded by (seed, e), so it does not depend on whether the run
was interrupted. A checkpoint (`epoch_EEE.safetensors`) holds the module's state dict, AdamW's moments, the
scheduler, the torch RNG state(s) and the history as tensors plus JSON metadata: nothing is pickled. It also
records the run's settings (`run`); resuming a run with other settings is refused, naming the first difference.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from workbench.files import CheckpointMismatch, check_same_run, read_state, write_state

__all__ = ["fit", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "CheckpointMismatch", "SCHEMA"]

SCHEMA = "workbench.ntide_checkpoint/v1"
_MODEL, _OPT, _RNG = "model/", "optimizer/", "rng/"


def _epoch_file(folder: Path, epoch: int) -> Path:
    return folder / f"epoch_{epoch:03d}.safetensors"


def save_checkpoint(folder: Path, epoch: int, module: nn.Module, optimizer, scheduler, history: list,
                    run: dict) -> Path:
    """Write the state after `epoch` (1-based) complete epochs to folder/epoch_EEE.safetensors, atomically."""

    tensors = {_MODEL + k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"{_OPT}{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors[_RNG + "torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{_RNG}cuda/{i}"] = s
    state = {"epoch": epoch, "param_groups": opt["param_groups"], "optimizer_scalars": scalars,
             "scheduler": scheduler.state_dict(), "history": history}
    return write_state(_epoch_file(folder, epoch), tensors, SCHEMA, run, state)


def _read(path: Path) -> tuple[dict, dict, dict]:
    return read_state(path, SCHEMA, kind="an N-TIDE training checkpoint", what="the N-TIDE checkpoint",
                      remedy="delete it to retrain from the epoch before, or run without --resume")


def latest_checkpoint(folder: Optional[Path]) -> Optional[Path]:
    """The checkpoint of the most epochs in `folder`, or None."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = sorted(Path(folder).glob("epoch_[0-9][0-9][0-9].safetensors"))
    return files[-1] if files else None


def load_checkpoint(path: Path, module: nn.Module, optimizer=None, scheduler=None, run: Optional[dict] = None) -> dict:
    """Restore `module` (and optimizer, scheduler, torch RNG when given) from a checkpoint; returns its state
    (epoch, history). Raises CheckpointMismatch naming the first setting that differs from `run`."""
    stored_run, state, tensors = _read(path)
    if run is not None:
        check_same_run(stored_run, run, f"the checkpoint {path}",
                       "Use another output folder for this run, or run without --resume to start over (the old "
                       "checkpoints are then replaced).")
    module.load_state_dict({k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)})
    if optimizer is not None:
        device = next(module.parameters()).device
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith(_OPT):
                index, key = k[len(_OPT):].split("/", 1)
                opt_state.setdefault(int(index), {})[key] = v if key == "step" else v.to(device)
        for index, values in state["optimizer_scalars"].items():
            opt_state.setdefault(int(index), {}).update(values)
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if _RNG + "torch" in tensors:
        torch.set_rng_state(tensors[_RNG + "torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith(_RNG + "cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return state


def _order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def fit(module: nn.Module, param_groups: list, step: Callable[[Tensor], tuple[Tensor, int]], n_items: int, *,
        run: dict, folder: Optional[Path], epochs: int, batch_size: int, weight_decay: float, eta_min: float,
        seed: int, resume: bool = False, keep: str = "last", progress: bool = True, name: str = "train",
        amp: bool = False, on_epoch_end: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Train `module` with AdamW(param_groups, weight_decay) and a per-epoch cosine schedule (T_max = epochs,
    eta_min); returns the history, one dict per epoch: epoch, loss, accuracy (training batches), lr, seconds.

    folder: where epoch_EEE.safetensors go (None: no checkpoints). resume: continue from the latest checkpoint
    there (its `run` must equal this one); without resume, existing checkpoints are replaced. keep: "last"
    (delete the previous epoch's file once the next is written) or "all". amp: bf16 autocast on CUDA.
    on_epoch_end(epoch, record): called after each epoch's checkpoint is written.
    """
    if keep not in ("last", "all"):
        raise ValueError(f"keep must be 'last' or 'all', got {keep!r}")
    if n_items < 1:
        raise ValueError(f"{name}: no training items")
    optimizer = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)
    history: list[dict] = []
    start_epoch = 0
    folder = Path(folder) if folder is not None else None
    last = latest_checkpoint(folder)
    if last is not None and resume:
        state = load_checkpoint(last, module, optimizer, scheduler, run)
        start_epoch, history = int(state["epoch"]), list(state["history"])
    elif last is not None:
        for old in folder.glob("epoch_[0-9][0-9][0-9].safetensors"):
            old.unlink()
    steps = (n_items + batch_size - 1) // batch_size
    device_type = next(module.parameters()).device.type
    bar = None
    if progress and start_epoch < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps, initial=start_epoch * steps, desc=name, unit="step", leave=False)
    try:
        for epoch in range(start_epoch, epochs):
            module.train()
            t0, total_loss, correct, seen = time.perf_counter(), 0.0, 0, 0
            lr = [g["lr"] for g in optimizer.param_groups]
            for index in _order(n_items, seed, epoch).split(batch_size):
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp and device_type == "cuda"):
                    loss, n_correct = step(index)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(index)
                correct, seen = correct + int(n_correct), seen + len(index)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
            scheduler.step()
            record = {"epoch": epoch + 1, "loss": total_loss / seen, "accuracy": correct / seen,
                      "lr": lr[-1], "seconds": round(time.perf_counter() - t0, 3)}
            history.append(record)
            if folder is not None:
                save_checkpoint(folder, epoch + 1, module, optimizer, scheduler, history, run)
                if keep == "last" and epoch > 0:
                    _epoch_file(folder, epoch).unlink(missing_ok=True)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record)
    finally:
        if bar is not None:
            bar.close()
    module.eval()
    return history
