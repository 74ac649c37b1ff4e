"""Dashboard responsiveness: seconds from a toggle to updated metrics (median and p95 over many toggles).

- shipped model, SynthSocial `test_balanced` (2,048 images): toggling a head of the last block (exact update
  from the cached pass, `CLSTail`), goal < 200 ms; toggling a latent of the shipped image-embedding SAE (exact
  from the cached latents), goal < 200 ms; toggling a head of an earlier block (a forward pass over the
  gallery: reported, no goal). Baseline: one forward pass over the gallery under the same edit + the metrics.
- random-weight ViT-B-32 with a gallery of 10,000 cached activations (the last block's inputs at CLS, random,
  consistent with the model's own b_O; random labels): toggling a head of the last block, goal < 2 s; toggling
  a latent of a random 4,096-latent SAE on the image embedding, goal < 2 s. Baseline: what a forward pass of
  10,000 images would cost, extrapolated from timed batches of 16 (the images are not there to run).

Each toggle switches one head (latent) on or off in turn, so the set of edits changes every time; the latency
is `state.last_update_s` (embeddings + every metric), the same number the dashboard prints.

    python -m benchmarks --only dashboard [--quick] [--device cuda]
"""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.common import case, median, random_clip, sync, torch_dtype  # noqa: E402


def p95(xs) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), 95))


def toggle_latencies(state, keys, n: int, device: str) -> tuple[list[float], list[float]]:
    """(wall seconds per toggle = `state.last_update_s`, CPU seconds of this process per toggle): keys switched on
    one after another, then off, cycling; `n` toggles after one untimed on/off. The CPU time (all threads) moves
    less with other processes' load than the wall time."""
    flip = (lambda key: state.toggle(*key)) if isinstance(keys[0], tuple) else state.toggle
    order = list(keys) + list(keys)
    flip(order[0])
    flip(order[0])
    wall, cpu = [], []
    for i in range(n):
        sync(device)
        start = time.process_time()
        flip(order[i % len(order)])
        sync(device)
        cpu.append(time.process_time() - start)
        wall.append(state.last_update_s)
    return wall, cpu


def rows(name: str, times: tuple, baseline: float, baseline_name: str, goal_s, device: str, dtype: str, **details):
    """A median row and a p95 row (wall time) for one scenario; the CPU time per toggle in the details."""
    wall, cpu = times
    out = []
    for stat, value in (("median", median(wall)), ("p95", p95(wall))):
        goal = f"< {goal_s * 1000:.0f} ms" if goal_s is not None else "report"
        out.append(case(f"{name}, {stat} per toggle", figure=value * 1000, baseline=baseline * 1000, unit="ms",
                        baseline_name=baseline_name, ratio=baseline / value, ratio_means="baseline / figure (speed-up)",
                        goal=goal, met=None if goal_s is None else value < goal_s, device=device, dtype=dtype,
                        toggles=len(wall), cpu_ms_median=round(1000 * median(cpu), 1),
                        cpu_ms_p95=round(1000 * p95(cpu), 1), seconds=[round(t, 5) for t in wall], **details))
    return out


def shipped(device: str, dtype: str, quick: bool) -> list[dict]:
    import torch

    from workbench import load_clip
    from workbench.dashboards import Gallery, HeadState, LiveProtocol, NeuronState
    from workbench.data import SynthSocial
    from workbench.primitives import ablate_heads, intervene
    from workbench.saes import load_sae
    from workbench.saes.io import resolve_sae_path

    model = load_clip("synthsocial", device=device, dtype=torch_dtype(dtype))
    data = SynthSocial("test_balanced", n=512 if quick else None)
    gallery = Gallery.capture(model, data, progress=False)
    protocol = LiveProtocol(model, gallery, attribute="gender")
    state = HeadState(model, gallery, protocol)
    last = model.visual.cfg.n_layers - 1

    def forward_and_metrics():
        with intervene(model, ablate_heads([(last, 1)], op="zero")):
            emb = torch.nn.functional.normalize(gallery.forward(), dim=-1)
        protocol.metrics(emb)

    forward_and_metrics()
    base = median([_timed(forward_and_metrics, device) for _ in range(3)])
    n = 10 if quick else 40
    heads = [(last, h) for h in range(model.visual.cfg.n_heads)]
    out = rows(f"shipped model, {len(gallery):,} images: last-block head", toggle_latencies(state, heads, n, device),
               base, "forward pass + metrics", 0.2, device, dtype, path="cached")
    state.clear()
    early = [(1, h) for h in range(4)]
    out += rows(f"shipped model, {len(gallery):,} images: head of block 1 (forward pass)",
                toggle_latencies(state, early, 4 if quick else 8, device), base, "forward pass + metrics", None,
                device, dtype, path="forward")
    path = resolve_sae_path("synthsocial/image-embed")
    latents = NeuronState(model, gallery, protocol, load_sae(path, model=model), sae_path=path)
    top = [int(i) for i in latents.latent_ap()["latent"][:8]]
    out += rows(f"shipped model, {len(gallery):,} images: SAE latent at the image embedding",
                toggle_latencies(latents, top, n, device), base, "forward pass + metrics", 0.2, device, dtype,
                path="cached", mode=latents._mode)
    return out


def _timed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def vit_b32(device: str, dtype: str, quick: bool) -> list[dict]:
    import torch

    from workbench.dashboards import Gallery, HeadState, LiveProtocol, NeuronState
    from workbench.data.vocab import LABEL_NAMES
    from workbench.models.cls_tail import CLSTail

    n = 1_000 if quick else 10_000
    _, model = random_clip("ViT-B-32", device, dtype)
    model.name = "ViT-B-32"
    cfg = model.visual.cfg
    g = torch.Generator().manual_seed(0)
    dt = torch_dtype(dtype)
    cls = (0.05 * torch.randn(n, cfg.n_heads, cfg.d_model, generator=g)).to(device=device, dtype=dt)
    b_o = model.visual.blocks[cfg.n_layers - 1].attn.b_O.detach()
    attn_out = cls.sum(1) + b_o  # what the attention writes to CLS: Σ heads + b_O
    resid = torch.randn(n, cfg.d_model, generator=g).to(device=device, dtype=dt)
    tail = CLSTail(model, resid, attn_out, cls)
    embed = tail.encode().float().cpu()
    labels = {k: torch.randint(0, len(LABEL_NAMES[k]), (n,), generator=g) for k in ("occupation", "gender")}
    gallery = Gallery(model, labels, LABEL_NAMES, embed, tail=tail)
    protocol = LiveProtocol(model, gallery, attribute="gender")
    state = HeadState(model, gallery, protocol)

    x = torch.randn(16, 3, *cfg.image_size, generator=g).to(device=device, dtype=dt)

    def batch():
        with torch.no_grad():
            model.encode_image(x)

    batch()
    base = median([_timed(batch, device) for _ in range(3)]) * n / 16  # extrapolated: the images are not there
    toggles = 6 if quick else 20
    heads = [(cfg.n_layers - 1, h) for h in range(cfg.n_heads)]
    out = rows(f"ViT-B-32 (random), {n:,} cached images: last-block head", toggle_latencies(state, heads, toggles,
                                                                                            device),
               base, "forward pass of the gallery (extrapolated from batches of 16)", 2.0, device, dtype,
               path="cached")
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=embed.shape[1], d_sae=4096)).to(device=device, dtype=dt).eval()
    sae.cfg.metadata.hook_name = "hook_image_embed"
    latents = NeuronState(model, gallery, protocol, sae)
    out += rows(f"ViT-B-32 (random), {n:,} cached images: SAE latent (4,096) at the image embedding",
                toggle_latencies(latents, list(range(8)), toggles, device), base,
                "forward pass of the gallery (extrapolated from batches of 16)", 2.0, device, dtype, path="cached",
                mode=latents._mode)
    return out


def run(device: str = "cpu", dtype: str = "float32", quick: bool = False) -> list[dict]:
    return shipped(device, dtype, quick) + vit_b32(device, dtype, quick)


if __name__ == "__main__":
    import json

    for row in run(quick="--quick" in sys.argv):
        row["details"].pop("seconds")
        print(json.dumps(row))
