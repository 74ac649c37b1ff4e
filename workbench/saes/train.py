"""Train a sparse autoencoder on one site of a model with sae_lens's `SAETrainer`.

    sae = train_sae(model, SynthSocial("train", n=20_000), "blocks.5.hook_resid_post", preset="debiaslens",
                    position="all", steps=1500, batch_size=2048, checkpoint_dir="runs/sae")

The activations come from the workbench extractor (`workbench.activations.extract` / `extract_text`, or an
`ActivationStore` you already have) and reach the trainer as an endless, seeded stream of batches
(`ActivationBatches`), read shard by shard when the store is on disk. The run is driven through the
trainer's public per-step methods (`step`, `maybe_reset_sparsity`, `set_final_sae_metadata`), the way
sae_lens's own `MultiSAETrainer` drives it: the loss, optimiser, schedules and dead-latent bookkeeping are
sae_lens's; this module adds the data, a progress bar, pickle-free checkpoints and resuming.
Presets, sites and what differs from the papers' code: docs/saes.md.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch

from workbench.models.hook_names import canonical_position, check_hook_name, position_axis
from workbench.models.splice import META_FINGERPRINT, META_TOWER

from .batches import ActivationBatches, site_rows
from .checkpoint import load_checkpoint, save_checkpoint
from .presets import get_preset

__all__ = ["train_sae", "ARCHITECTURES", "activation_store", "to_inference_sae", "matryoshka_widths"]

ARCHITECTURES = ("standard", "topk", "batchtopk", "matryoshka_batchtopk")
_DEFAULTS = {"expansion": 8, "k": 32, "l1_coefficient": 5.0, "lr": 3e-4}


# ---------------------------------------------------------------------------------------------- data
def activation_store(model, data, site: str, position="pooled", cache_dir=None, batch_size: int = 256,
                     progress: bool = True):
    """The ActivationStore that `train_sae` reads: `data` itself when it is a store (checked against the model
    and site), else an extraction of `site` over `data` (a dataset for image sites, a list of prompts for
    "text." sites), on disk in `cache_dir` (resumed when it already holds it) or in memory."""
    from workbench.activations import ActivationStore, extract, extract_text

    if not isinstance(site, str):
        raise TypeError(f"site must be a hook name (str), got {site!r} of type {type(site).__name__}")
    check_hook_name(model, site)
    if isinstance(data, ActivationStore):
        data.check_model(model)
        site_rows(data, site)
        has_tokens = position_axis(site) is not None
        if has_tokens and position is not None and data.position != canonical_position(position):
            raise ValueError(f"the activation store holds position {data.position!r} but position="
                             f"{position!r} was requested; pass position={data.position!r} or extract again")
        return data
    text_site = site.startswith("text.")
    is_prompts = isinstance(data, (list, tuple)) and all(isinstance(p, str) for p in data)
    if text_site and not is_prompts:
        raise TypeError(f"{site!r} is a text-tower site: pass a list of prompts (str), or an ActivationStore from "
                        f"extract_text, not {type(data).__name__}")
    if not text_site and is_prompts:
        raise TypeError(f"{site!r} is an image-tower site but the data is a list of prompts; pass an image "
                        "dataset, or a 'text.' site to train on the text tower")
    if text_site:
        return extract_text(model, list(data), site, batch_size=batch_size, cache_dir=cache_dir, position=position,
                            progress=progress)
    return extract(model, data, site, batch_size=batch_size, cache_dir=cache_dir, position=position,
                   progress=progress)


# ---------------------------------------------------------------------------------------------- configs
def matryoshka_widths(d_sae: int, fractions: Sequence[float]) -> list[int]:
    """Cumulative prefix widths from group fractions: (1/16, 1/8, 1/4, 9/16) of 1024 → [64, 192, 448, 1024].
    The last prefix is always d_sae."""
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"matryoshka_fractions must be group sizes in (0, 1] that sum to at most 1, got {fractions}")
    widths, total = [], 0.0
    for f in fractions:
        total += f
        widths.append(min(d_sae, int(round(total * d_sae))))
    widths[-1] = d_sae if abs(total - 1) < 1e-9 else widths[-1]
    if widths[-1] != d_sae:
        widths.append(d_sae)
    if any(b <= a for a, b in zip([0] + widths, widths)):
        raise ValueError(f"matryoshka_fractions {fractions} give empty groups at d_sae={d_sae} (prefixes {widths}); "
                         "use a larger d_sae or larger fractions")
    return widths


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _sae_config(architecture: str, d_in: int, d_sae: int, k, l1_coefficient, fractions, aux_coefficient, metadata):
    import sae_lens

    common = dict(d_in=d_in, d_sae=d_sae, dtype="float32", device="cpu", apply_b_dec_to_input=True,
                  normalize_activations="none", metadata=sae_lens.saes.sae.SAEMetadata(**metadata))
    if architecture == "standard":
        return sae_lens.StandardTrainingSAEConfig(l1_coefficient=l1_coefficient, **common)
    aux = {} if aux_coefficient is None else {"aux_loss_coefficient": aux_coefficient}
    if architecture == "topk":
        return sae_lens.TopKTrainingSAEConfig(k=int(k), **aux, **common)
    if architecture == "batchtopk":
        return sae_lens.BatchTopKTrainingSAEConfig(k=float(k), **aux, **common)
    widths = matryoshka_widths(d_sae, fractions)
    return sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(k=float(k), matryoshka_widths=widths, **aux, **common)


def _training_sae(cfg):
    import sae_lens

    cls = {"standard": sae_lens.StandardTrainingSAE, "topk": sae_lens.TopKTrainingSAE,
           "batchtopk": sae_lens.BatchTopKTrainingSAE,
           "matryoshka_batchtopk": sae_lens.MatryoshkaBatchTopKTrainingSAE}[cfg.architecture()]
    return cls(cfg)


def to_inference_sae(training_sae):
    """The inference SAE of a sae_lens training SAE, as `save_inference_model` + `SAE.load_from_disk` would
    give (TopK decoder norms folded; BatchTopK / Matryoshka become JumpReLU with the learnt threshold)."""
    from sae_lens import SAE

    state = {k: v.detach().clone() for k, v in training_sae.state_dict().items()}
    training_sae.process_state_dict_for_saving_inference(state)
    sae = SAE.from_dict(training_sae.cfg.get_inference_sae_cfg_dict())
    sae.load_state_dict(state)
    return sae.to(training_sae.device)


# ---------------------------------------------------------------------------------------------- training
def train_sae(model, data, site: str, architecture: Optional[str] = None, *, preset: Optional[str] = None,
              position="pooled", d_sae: Optional[int] = None, expansion: Optional[int] = None, k=None,
              l1_coefficient: Optional[float] = None, matryoshka_fractions: Optional[Sequence[float]] = None,
              aux_coefficient: Optional[float] = None, steps: Optional[int] = None,
              training_tokens: Optional[int] = None, batch_size: int = 1024, lr: Optional[float] = None,
              lr_warm_up_steps: Optional[int] = None, dead_feature_window: Optional[int] = None, seed: int = 0,
              checkpoint_dir=None, checkpoint_every: Optional[int] = None, resume: bool = True, cache_dir=None,
              extract_batch_size: int = 256, device=None, progress: bool = True,
              callback: Optional[Callable[[dict], None]] = None, log_every: int = 50):
    """Train an SAE on `site` of `model` and return it as a sae_lens inference SAE (on `device`).

    Args:
        data: an image dataset (image sites), a list of prompts ("text." sites), or an ActivationStore that
            holds `site` (from `extract` / `extract_text`; on disk, it is streamed shard by shard).
        site: a hook name: "hook_image_embed", "text.hook_text_embed" (the unnormalised embeddings),
            "blocks.{L}.hook_resid_post", "text.blocks.{L}.hook_resid_post", or any hook whose items are
            [d] or [pos, d].
        position: "pooled" (CLS / EOT token; alias "cls") or "all" (every token is a training row) for
            hooks with a token axis; ignored for the embeddings.
        architecture: "standard" (ReLU + L1), "topk", "batchtopk" or "matryoshka_batchtopk".
        preset: "debiaslens" or "sem" (see `workbench.saes.presets`): fills in every setting left as None.
        d_sae / expansion: the width, directly or as a multiple of d_in (one of them; default ×8).
        k: active latents per row (topk) or on average over the batch (batchtopk, matryoshka_batchtopk).
        l1_coefficient: sparsity penalty of "standard" SAEs. matryoshka_fractions: group sizes as fractions
            of d_sae (prefixes are their cumulative sums). aux_coefficient: sae_lens's aux-K loss weight.
        steps / training_tokens: the length of the run (one of them; tokens = steps × batch_size rows).
        lr: Adam learning rate (constant after `lr_warm_up_steps` of linear warm-up).
        dead_feature_window: steps without firing after which a latent counts as dead (for the aux-K loss);
            default min(1000, max(10, steps // 10)).
        seed: seeds the initialisation and the data order; the same call gives the same SAE, bit for bit,
            on the same machine and thread count.
        checkpoint_dir: where checkpoints go (`checkpoint.safetensors`, no pickle), every `checkpoint_every`
            steps (default: steps // 10) and at the end. With `resume=True` a run continues from the
            checkpoint there (a finished run returns at once); the result equals an uninterrupted run bit for
            bit. A checkpoint of a run with other settings is refused (CheckpointMismatch).
        cache_dir: extraction cache for `data` (ignored when `data` is already a store).
        callback: called after every step (and after a due checkpoint) with {"step", "steps", "loss",
            "losses"}; an exception raised there stops the run (the last checkpoint stays).
        progress: tqdm bar with loss, explained variance and L0 (refreshed every `log_every` steps).

    The SAE's `cfg.metadata` records the model (name, fingerprint), `hook_name` (the site), tower, position,
    training tokens and the run's settings, as `workbench.saes.save_sae` expects.
    """
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if not isinstance(site, str):
        raise TypeError(f"site must be a hook name (str), got {site!r} of type {type(site).__name__}")
    spec = preset if preset is None else get_preset(preset)
    architecture = architecture or (spec.architecture if spec else "standard")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {list(ARCHITECTURES)}")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if steps is not None and training_tokens is not None:
        raise ValueError("pass steps or training_tokens, not both (training_tokens = steps × batch_size)")
    if training_tokens is not None:
        steps = max(1, _positive_int(training_tokens, "training_tokens") // batch_size)
    steps = _positive_int(steps if steps is not None else 1000, "steps")
    position = canonical_position(position) if position_axis(site) is not None else "pooled"  # embeddings: one token

    store = activation_store(model, data, site, position, cache_dir, extract_batch_size, progress)
    _, d_in = site_rows(store, site)
    if d_sae is not None and expansion is not None:
        raise ValueError(f"pass d_sae or expansion, not both (d_sae = expansion × d_in = expansion × {d_in})")
    if d_sae is None:
        expansion = expansion if expansion is not None else (spec.expansion if spec else _DEFAULTS["expansion"])
        d_sae = _positive_int(expansion, "expansion") * d_in
    d_sae = _positive_int(d_sae, "d_sae")
    if architecture != "standard":
        k = k if k is not None else (spec.resolve_k(d_in) if spec and spec.resolve_k(d_in) else _DEFAULTS["k"])
        k = _positive_number(k, "k")
        if k > d_sae:
            raise ValueError(f"k={k:g} is larger than d_sae={d_sae}")
        if architecture == "topk" and k != int(k):
            raise ValueError(f"k must be an int for topk SAEs (batchtopk takes an average k), got {k!r}")
    elif k is not None:
        raise ValueError("k applies to topk / batchtopk / matryoshka_batchtopk SAEs; a standard SAE uses "
                         "l1_coefficient")
    if architecture == "standard":
        l1_coefficient = _positive_number(l1_coefficient if l1_coefficient is not None else
                                          (spec.l1_coefficient if spec and spec.l1_coefficient else
                                           _DEFAULTS["l1_coefficient"]), "l1_coefficient")
    if architecture == "matryoshka_batchtopk":
        matryoshka_fractions = tuple(matryoshka_fractions or (spec.matryoshka_fractions if spec else None)
                                     or (1 / 16, 1 / 8, 1 / 4, 9 / 16))
    if aux_coefficient is None and spec is not None:
        aux_coefficient = spec.aux_coefficient
    lr = _positive_number(lr if lr is not None else (spec.resolve_lr(d_sae) if spec else _DEFAULTS["lr"]), "lr")
    warm_up = lr_warm_up_steps if lr_warm_up_steps is not None else min(1000, steps // 20)
    if isinstance(warm_up, bool) or not isinstance(warm_up, int) or not 0 <= warm_up < steps:
        raise ValueError(f"lr_warm_up_steps must be an int in [0, steps={steps}), got {warm_up!r}")
    dead_window = _positive_int(dead_feature_window if dead_feature_window is not None
                                else min(1000, max(10, steps // 10)), "dead_feature_window")
    checkpoint_every = _positive_int(checkpoint_every if checkpoint_every is not None else max(1, steps // 10),
                                     "checkpoint_every")
    device = str(torch.device(device) if device is not None else model.device)

    tower = "text" if site.startswith("text.") else "image"
    run = {
        "site": site, "tower": tower, "position": position,
        "model_fingerprint": model.fingerprint(), "data": store.manifest.get("dataset"), "n_items": len(store),
        "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "k": k, "l1_coefficient": l1_coefficient,
        "matryoshka_fractions": list(matryoshka_fractions) if matryoshka_fractions else None,
        "aux_coefficient": aux_coefficient, "steps": steps, "batch_size": batch_size, "lr": lr,
        "lr_warm_up_steps": warm_up, "dead_feature_window": dead_window, "seed": seed, "preset": preset,
    }
    metadata = {"model_name": model.name, "hook_name": site, META_TOWER: tower,
                META_FINGERPRINT: run["model_fingerprint"], "workbench_position": position,
                "training_tokens": steps * batch_size, "workbench_training": run}
    torch.manual_seed(seed)  # the initialisation
    sae = _training_sae(_sae_config(architecture, d_in, d_sae, k, l1_coefficient, matryoshka_fractions,
                                    aux_coefficient, metadata))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr, lr_end=lr,
        lr_scheduler_name="constant", lr_warm_up_steps=warm_up, device=device, dead_feature_window=dead_window,
        feature_sampling_window=steps, n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    trainer.sae.to(device)
    if checkpoint_dir is not None and resume:
        load_checkpoint(checkpoint_dir, trainer, run)
    batches = ActivationBatches(store, site, batch_size, seed=seed, skip=trainer.n_training_steps, device=device)
    seconds = _fit(trainer, batches, steps, checkpoint_dir, checkpoint_every, run, callback, progress, log_every)
    trainer.set_final_sae_metadata()
    trainer.sae.cfg.metadata.training_seconds = round(seconds, 2)
    return to_inference_sae(trainer.sae)


def _fit(trainer, batches, steps: int, checkpoint_dir, checkpoint_every: int, run: dict, callback,
         progress: bool, log_every: int) -> float:
    """The per-step loop of `SAETrainer.fit` (one sparsity window, no wandb) with our bar, checkpoints and
    callback. Returns the seconds spent in this call."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    done_before = trainer.n_training_steps
    with tqdm(total=steps, initial=done_before, disable=not progress, unit="step", desc="train SAE") as bar:
        while trainer.n_training_steps < steps:
            trainer.maybe_reset_sparsity()
            output = trainer.step(next(batches))
            trainer.n_training_steps += 1
            step = trainer.n_training_steps
            if progress and (step % log_every == 0 or step == steps):
                log = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
                bar.set_postfix(loss=f"{log['losses/overall_loss']:.4g}",
                                ev=f"{log['metrics/explained_variance']:.3f}", l0=f"{log['metrics/l0']:.1f}",
                                dead=int(log["sparsity/dead_features"]))
            bar.update(1)
            if checkpoint_dir is not None and (step % checkpoint_every == 0 or step == steps):
                save_checkpoint(checkpoint_dir, trainer, run)
            if callback is not None:
                callback({"step": step, "steps": steps, "loss": float(output.loss.detach()),
                          "losses": {k: float(v.detach()) for k, v in output.losses.items()}})
    return time.perf_counter() - start
