"""`workbench sae list | train | info`: the SAEs shipped in `saes/`, how each is re-trained, and its table row.

`workbench sae train --preset NAME` re-trains one shipped SAE from its recipe (`workbench.saes.presets.SHIPPED`),
measures it on SynthSocial `test_balanced` (explained variance, L0, dead-latent fraction), saves it in sae_lens's
format and rewrites its row of `saes/README.md`. docs/saes.md.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

__all__ = ["reconstruction_stats", "recipe_data", "train_shipped", "read_rows", "write_row", "write_rows", "add_parser",
           "COLUMNS", "README"]

README = "README.md"
COLUMNS = ("name", "site", "position", "architecture", "d_sae", "k / L1", "training tokens",
           "explained variance", "L0", "dead latents", "file size", "train time")
_BEGIN, _END = "<!-- table: begin -->", "<!-- table: end -->"
_INTRO = """# Shipped SAEs

Sparse autoencoders trained on the embedded model (`load_clip("synthsocial")`), in sae_lens's own format
(`cfg.json` + `sae_weights.safetensors`; `sae_lens.SAE.load_from_disk(folder)` opens them). Load one by name with
`workbench.saes.load_sae("synthsocial/image-resid-last", model)`.

Each row is written by `workbench sae train --preset NAME` (one command per SAE; it re-trains the SAE from its
recipe in `workbench/saes/presets.py`, seeded, with one torch thread, and rewrites its row). Figures are measured
on SynthSocial `test_balanced` (2,048 images, or one sampled caption per image for text sites): explained
variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (target ≥ 0.9), L0 = mean active latents per row, dead latents = fraction
that never fire there (target ≤ 10 %). Training tokens = steps × batch size (rows: tokens of the site). Train
time = extracting the training activations + training, one torch thread: its CPU time (about what it takes on
an idle core) and the wall time it took on the shared, loaded 2-core development machine.
`tests/saes/test_shipped.py` checks the files against their rows. `workbench sae info NAME` prints a row and the
latents with the highest gender / ethnicity AP.

Not shipped: an SAE on the last text block (`text.blocks.2.hook_resid_post`). Trained like `image-resid-last` on
the train captions (only 955 distinct strings), 14–27 % of its latents never fire on the `test_balanced`
captions in every setting tried, above the 10 % target. Train one with `workbench.saes.train_sae` if needed.
"""


# ---------------------------------------------------------------------------------------------- data
def recipe_data(recipe, split: str, n: Optional[int] = None):
    """The recipe's data on `split`: SynthSocial images, or one sampled caption per image (seeded)."""
    from workbench.data import SynthSocial

    ds = SynthSocial(split, n=n)
    return ds if recipe.data == "images" else ds.sample_captions(range(len(ds)), recipe.seed)


def evaluation_acts(model, recipe) -> tuple[Tensor, dict[str, Tensor], int]:
    """(rows [n · tokens, d_in], labels {key: [n]}, tokens per item) of the recipe's site on test_balanced."""
    from workbench.activations import extract, extract_text
    from workbench.data import SynthSocial

    data = recipe_data(recipe, "test_balanced")
    if recipe.data == "images":
        store = extract(model, data, recipe.site, position=recipe.position, progress=False)
        labels = store.labels
    else:
        store = extract_text(model, data, recipe.site, position=recipe.position, progress=False)
        labels = SynthSocial("test_balanced").labels
        labels = {k: torch.as_tensor(v) for k, v in labels.items()}
    acts = store[recipe.site]
    tokens = acts.shape[1] if acts.ndim == 3 else 1
    return acts.reshape(-1, acts.shape[-1]).float(), labels, tokens


@torch.no_grad()
def encode_rows(sae, x: Tensor, batch_size: int = 4096) -> tuple[Tensor, Tensor]:
    """(latents [n, d_sae], reconstructions [n, d_in]) of rows x [n, d_in], in batches."""
    z, rec = [], []
    for chunk in x.split(batch_size):
        latents = sae.encode(chunk.to(sae.W_dec.device))
        z.append(latents.cpu())
        rec.append(sae.decode(latents).cpu())
    return torch.cat(z), torch.cat(rec)


@torch.no_grad()
def reconstruction_stats(sae, x: Tensor) -> dict:
    """Explained variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², L0 (mean active latents per row) and the
    fraction of latents that never fire, of `sae` on rows x [n, d_in]."""
    z, rec = encode_rows(sae, x)
    x = x.double()
    ev = 1 - (x - rec.double()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    active = z != 0
    return {"explained_variance": float(ev), "l0": float(active.sum(1).double().mean()),
            "dead_fraction": float((~active.any(0)).double().mean())}


# ---------------------------------------------------------------------------------------------- README rows
def _fmt_size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def read_rows(root: Path) -> dict[str, dict[str, str]]:
    """{name: {column: cell}} from the table in root/README.md ({} when there is none)."""
    path = Path(root) / README
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if _BEGIN not in text or _END not in text:
        return {}
    rows = {}
    for line in text.split(_BEGIN, 1)[1].split(_END, 1)[0].strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == len(COLUMNS):
            rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


def write_row(root: Path, row: dict[str, str]) -> Path:
    """Insert or replace `row` (keyed by name) in root/README.md's table (rows sorted by name); the README is
    generated: its text above the table is rewritten too."""
    rows = read_rows(root)
    rows[row["name"]] = {c: str(row[c]) for c in COLUMNS}
    return write_rows(root, rows)


def write_rows(root: Path, rows: dict[str, dict[str, str]]) -> Path:
    """Write root/README.md: the intro and one table row per entry of `rows` (sorted by name)."""
    from workbench.files import write_text_atomic

    head = "| " + " | ".join(COLUMNS) + " |\n|" + "|".join(" --- " for _ in COLUMNS) + "|\n"
    body = "".join("| " + " | ".join(f"`{r[c]}`" if c in ("name", "site") else r[c] for c in COLUMNS) + " |\n"
                   for _, r in sorted(rows.items()))
    return write_text_atomic(Path(root) / README, f"{_INTRO}\n{_BEGIN}\n{head}{body}{_END}\n")


# ---------------------------------------------------------------------------------------------- train one
def train_shipped(name: str, root: Optional[Path] = None, threads: int = 1, progress: bool = True,
                  checkpoint_dir=None) -> dict[str, str]:
    """Re-train the shipped SAE `name` from its recipe, save it under root/name, rewrite its README row."""
    from workbench.models import load_clip

    from .io import save_sae, shipped_dir
    from .presets import get_preset, get_recipe
    from .train import train_sae

    recipe = get_recipe(name)
    root = Path(root) if root is not None else shipped_dir()
    torch.set_num_threads(threads)
    model = load_clip(recipe.model)
    start, cpu_start = time.perf_counter(), time.process_time()
    data = recipe_data(recipe, "train", recipe.n_items)
    sae = train_sae(model, data, recipe.site, preset=recipe.preset, position=recipe.position, steps=recipe.steps,
                    batch_size=recipe.batch_size, seed=recipe.seed, progress=progress, checkpoint_dir=checkpoint_dir,
                    **recipe.overrides)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    x, _, _ = evaluation_acts(model, recipe)
    stats = reconstruction_stats(sae, x)
    training = sae.cfg.metadata.workbench_training
    folder = save_sae(sae, root / recipe.name, model=model, site=recipe.site,  # the name is the folder under saes/
                      evaluation={"data": "SynthSocial test_balanced", **stats}, train_seconds=round(seconds, 1),
                      train_cpu_seconds=round(cpu_seconds, 1), threads=threads)
    arch = training["architecture"]
    sparsity = f"L1 {training['l1_coefficient']:g}" if arch == "standard" else f"k {training['k']:g}"
    row = {"name": name, "site": recipe.site, "position": recipe.position,
           "architecture": f"{arch} ({get_preset(recipe.preset).name})", "d_sae": str(sae.cfg.d_sae),
           "k / L1": sparsity, "training tokens": f"{recipe.steps * recipe.batch_size:,}",
           "explained variance": f"{stats['explained_variance']:.3f}", "L0": f"{stats['l0']:.1f}",
           "dead latents": f"{100 * stats['dead_fraction']:.1f} %", "file size": _fmt_size(folder_bytes(folder)),
           "train time": f"{cpu_seconds:.0f} s CPU ({seconds:.0f} s wall)"}
    write_row(root, row)
    return row


# ---------------------------------------------------------------------------------------------- info
def top_latents(sae, model, recipe, k: int = 5):
    """DataFrame (attribute, class, latent, ap, auroc): the k latents with the highest AP for gender (positive
    class: the larger label, "female") and for each ethnicity (one-vs-rest), on test_balanced; token sites take
    each item's max over tokens."""
    import pandas as pd

    from workbench.data import SynthSocial
    from workbench.metrics import unit_scores

    x, labels, tokens = evaluation_acts(model, recipe)
    z, _ = encode_rows(sae, x)
    z = z.reshape(-1, tokens, z.shape[-1]).amax(1)
    names = SynthSocial("test_balanced").label_names
    frames = []
    for attribute in ("gender", "ethnicity"):
        table = unit_scores(z, labels[attribute], unit_index=["latent"])
        if "class" not in table:
            table["class"] = int(labels[attribute].max())
        table["class"] = [names[attribute][int(c)] for c in table["class"]]
        table.insert(0, "attribute", attribute)
        top = table.sort_values("ap", ascending=False).groupby("class", sort=False).head(k)
        frames.append(top.sort_values(["class", "ap"], ascending=[True, False]))
    return pd.concat(frames, ignore_index=True)[["attribute", "class", "latent", "ap", "auroc"]]


# ---------------------------------------------------------------------------------------------- CLI
def cmd_list(args) -> int:
    from .io import shipped_dir
    from .presets import SHIPPED

    rows = read_rows(Path(args.root) if args.root else shipped_dir())
    for name, recipe in SHIPPED.items():
        row = rows.get(name)
        figures = (f"EV {row['explained variance']}, L0 {row['L0']}, dead {row['dead latents']}, {row['file size']}"
                   if row else "not trained yet")
        print(f"{name:30s} {recipe.site:32s} {recipe.preset:11s} {figures}")
    return 0


def cmd_train(args) -> int:
    from workbench.files import check_writable_dir

    from .io import shipped_dir
    from .presets import get_recipe

    get_recipe(args.preset)  # an unknown name fails before any work
    root = check_writable_dir(Path(args.root) if args.root else shipped_dir(), "shipped SAE folder")
    row = train_shipped(args.preset, root, threads=args.threads, progress=not args.quiet,
                        checkpoint_dir=args.checkpoint_dir)
    print(" | ".join(f"{c}: {row[c]}" for c in COLUMNS))
    return 0


def cmd_info(args) -> int:
    from workbench.models import load_clip

    from .io import load_sae, shipped_dir
    from .presets import get_recipe

    recipe = get_recipe(args.name)
    row = read_rows(Path(args.root) if args.root else shipped_dir()).get(args.name)
    if row is None:
        raise FileNotFoundError(f"{args.name!r} has no row in saes/{README}; train it with "
                                f"`workbench sae train --preset {args.name}`")
    print("\n".join(f"{c:20s} {row[c]}" for c in COLUMNS))
    model = load_clip(recipe.model)
    path = (Path(args.root) / args.name) if args.root else args.name
    sae = load_sae(path, model)
    print(f"\ntop latents by AP on SynthSocial test_balanced ({args.top} per attribute / class):")
    print(top_latents(sae, model, recipe, args.top).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def add_parser(sub) -> None:
    """Register `workbench sae list | train | info` on the console script's subparsers."""
    p = sub.add_parser("sae", help="shipped SAEs: list, re-train one (rewrites its README row), info")
    sae_sub = p.add_subparsers(dest="sae_command", required=True)
    q = sae_sub.add_parser("list", help="the shipped SAEs and their measured figures")
    q.add_argument("--root", default=None, help="folder of the shipped SAEs (default: the package's saes/)")
    q.set_defaults(func=cmd_list)
    q = sae_sub.add_parser("train", help="re-train one shipped SAE from its recipe and rewrite its row")
    q.add_argument("--preset", required=True, help="shipped SAE name, e.g. synthsocial/image-resid-last")
    q.add_argument("--root", default=None, help="output folder (default: the package's saes/)")
    q.add_argument("--threads", type=int, default=1, help="torch threads (1, as the shipped rows were measured)")
    q.add_argument("--checkpoint-dir", default=None, help="checkpoint folder: a killed run resumes from it")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_train)
    q = sae_sub.add_parser("info", help="a shipped SAE's row and its top latents by gender / ethnicity AP")
    q.add_argument("name", help="shipped SAE name, e.g. synthsocial/image-embed")
    q.add_argument("--root", default=None, help="folder of the shipped SAEs (default: the package's saes/)")
    q.add_argument("--top", type=int, default=5, help="latents per attribute (and class)")
    q.set_defaults(func=cmd_info)
