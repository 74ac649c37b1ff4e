"""Checkpoints of an SAE training run: one safetensors file, written atomically, no pickle.

sae_lens's own `SAETrainer.save_trainer_state` pickles the optimizer state with `torch.save`; this module
stores the same state (SAE weights and buffers, Adam moments, the LR and coefficient schedulers, the
dead-latent counters, the activation scaler) as tensors plus JSON in the file's metadata, so a checkpoint
is read without unpickling anything. The file also records the run's settings: resuming a different run
from it is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from workbench.files import CheckpointMismatch, check_same_run, read_state, write_state

__all__ = ["CHECKPOINT_FILE", "CheckpointMismatch", "save_checkpoint", "load_checkpoint", "read_run"]

CHECKPOINT_FILE = "checkpoint.safetensors"
SCHEMA = "workbench.sae_checkpoint/v1"
_SAE, _OPT, _TRAINER = "sae/", "optimizer/", "trainer/"
_TRAINER_TENSORS = ("act_freq_scores", "n_forward_passes_since_fired")


def save_checkpoint(folder, trainer, run: dict) -> Path:
    """Write the state of `trainer` (a sae_lens SAETrainer) after `trainer.n_training_steps` steps."""

    tensors = {_SAE + k: v.detach().cpu().contiguous() for k, v in trainer.sae.state_dict().items()}
    opt = trainer.optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT}{index}/{key}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(index), {})[key] = value
    for name in _TRAINER_TENSORS:
        tensors[_TRAINER + name] = getattr(trainer, name).detach().cpu().contiguous()
    state = {
        "n_training_samples": trainer.n_training_samples,
        "n_training_steps": trainer.n_training_steps,
        "n_frac_active_samples": trainer.n_frac_active_samples,
        "started_fine_tuning": trainer.started_fine_tuning,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": opt_scalars,
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "coefficient_schedulers": {k: s.state_dict() for k, s in trainer.coefficient_schedulers.items()},
        "scaling_factor": trainer.activation_scaler.scaling_factor,
    }
    return write_state(Path(folder) / CHECKPOINT_FILE, tensors, SCHEMA, run, state)


def _read(path: Path) -> tuple[dict, dict, dict]:
    return read_state(path, SCHEMA, kind="an SAE training checkpoint of this workbench",
                      what="the SAE training checkpoint",
                      remedy="delete it to start the run again, or pass resume=False", elsewhere="checkpoint_dir")


def read_run(folder) -> Optional[dict]:
    """The run settings stored in `folder`'s checkpoint, or None when there is none."""
    path = Path(folder) / CHECKPOINT_FILE
    return _read(path)[0] if path.exists() else None


def load_checkpoint(folder, trainer, run: dict) -> bool:
    """Restore `trainer` from `folder`'s checkpoint; False when there is none. Raises CheckpointMismatch
    naming the first setting that differs when the checkpoint belongs to another run."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.exists():
        return False
    stored_run, state, tensors = _read(path)
    check_same_run(stored_run, run, f"the checkpoint in {folder}",
                   "Use another checkpoint_dir for this run, or pass resume=False to start over (the old "
                   "checkpoint is then overwritten).")
    device = trainer.cfg.device
    sae_state = {k[len(_SAE):]: v for k, v in tensors.items() if k.startswith(_SAE)}
    trainer.sae.load_state_dict(sae_state)
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(_OPT):
            index, key = k[len(_OPT):].split("/", 1)
            opt_state.setdefault(int(index), {})[key] = v
    for index, scalars in state["optimizer_scalars"].items():
        opt_state.setdefault(int(index), {}).update(scalars)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in state["param_groups"]]
    trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    for name, sd in state["coefficient_schedulers"].items():
        trainer.coefficient_schedulers[name].load_state_dict(sd)
    for name in _TRAINER_TENSORS:
        setattr(trainer, name, tensors[_TRAINER + name].to(device))
    trainer.n_training_samples = state["n_training_samples"]
    trainer.n_training_steps = state["n_training_steps"]
    trainer.n_frac_active_samples = state["n_frac_active_samples"]
    trainer.started_fine_tuning = state["started_fine_tuning"]
    trainer.activation_scaler.scaling_factor = state["scaling_factor"]
    return True
