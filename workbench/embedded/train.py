"""Contrastive training of the embedded small CLIP on SynthSocial `train` (seeded, a few minutes on 2 cores)."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from workbench.models.loading import PRETRAINED_DIR

NAME = "synthsocial"


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    n_train: int = 20_000
    seed: int = 0
    threads: Optional[int] = 1  # torch threads while training (the shipped model used 1; None keeps the default)


def _param_groups(model, weight_decay: float):
    """Weight decay on matrices only; never on gains, biases, embeddings or the temperature (open_clip practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    logits = logit_scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    target = torch.arange(len(img))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def build_untrained(seed: int):
    """The open_clip architecture of the embedded model with fresh random weights, plus its preprocess."""
    import open_clip

    from workbench.models.loading import embedded_config
    from workbench.models.preprocess import Preprocess

    _, pp = embedded_config(NAME)
    torch.manual_seed(seed)
    model = open_clip.create_model(NAME, pretrained=None, force_preprocess_cfg=pp)
    return model, Preprocess(model.visual.image_size, pp["mean"], pp["std"]), open_clip.get_tokenizer(NAME)


def train_toy(cfg: TrainConfig = TrainConfig(), out_dir: Path = PRETRAINED_DIR, progress: bool = True,
              measure: bool = True) -> dict:
    """Train the embedded CLIP and write `{out_dir}/synthsocial.safetensors` (+ `.card.json` when `measure`).

    Only the token-embedding rows of tokens seen in training are stored (every other row is zero), in fp16,
    which keeps the checkpoint a few MB. Returns the model card (or the training log without `measure`).
    """
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, Path(out_dir), progress, measure)
    finally:
        torch.set_num_threads(previous_threads)  # do not leave the caller's process changed


def _train(cfg: TrainConfig, out_dir: Path, progress: bool, measure: bool) -> dict:
    from tqdm.auto import tqdm

    from workbench.data import SynthSocial
    from workbench.models.storage import save_compact

    out_dir.mkdir(parents=True, exist_ok=True)
    model, preprocess, tokenizer = build_untrained(cfg.seed)
    model.train()
    t0 = time.perf_counter()
    data = SynthSocial("train", n=cfg.n_train, seed=cfg.seed)
    images, _ = data.tensors()
    images = (images * 255).round().to(torch.uint8)  # 4× less memory than float; exact for the renderer's grid
    render_s = time.perf_counter() - t0

    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(cfg.seed)
    seen_tokens: set[int] = set()
    order, cursor, log = rng.permutation(len(data)), 0, []
    bar = tqdm(range(cfg.steps), desc="train-toy", disable=not progress)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(data)), 0
        idx = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        tokens = tokenizer(data.sample_captions(idx, rng))
        seen_tokens.update(torch.unique(tokens).tolist())
        x = preprocess(images[idx].float() / 255)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        img, txt, logit_scale = model(x, tokens)[:3]
        loss = _clip_loss(img, txt, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        log.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - t0 - render_s

    state = {k: v for k, v in model.state_dict().items() if k != "attn_mask"}
    meta = {"train_config": json.dumps(asdict(cfg)), "final_loss": f"{np.mean(log[-20:]):.4f}"}
    path = save_compact(state, out_dir / f"{NAME}.safetensors", sparse_rows={"token_embedding.weight": seen_tokens},
                        metadata=meta)
    result = {"checkpoint": str(path), "size_mb": round(path.stat().st_size / 2**20, 2),
              "render_seconds": round(render_s, 1), "train_seconds": round(train_s, 1),
              "final_loss": round(float(np.mean(log[-20:])), 4), "train_config": asdict(cfg),
              "tokens_kept": len(seen_tokens)}
    if measure:
        from workbench.models import load_clip

        from .card import model_card

        card = model_card(load_clip(NAME, checkpoint=path))
        result["card"] = card
        (out_dir / f"{NAME}.card.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
