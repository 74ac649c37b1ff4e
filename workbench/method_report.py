"""What every method command (`workbench experts | sem | debiaslens | ntide`) shares: reading `--data`,
splitting a local folder in two seeded halves, and writing the report (table.csv, table.md, figures).

    kind, folder = parse_data("fairface:/data/fairface")      # ("fairface", Path(...))
    reference, gallery = halves(load_real(kind, folder), n_images=None, seed=0)
    metrics, intervals = write_tables(out, result, "expert heads: gender on synthsocial")

The report layout (docs/methods.md, "Method commands"): DIR/summary.json, table.csv (one row per variant: each
metric and its `_lo` / `_hi` interval bounds), table.md (value [95 % interval], * where the paired difference to
the baseline is beyond noise), figures/NAME.html (plotly.js written once, as figures/plotly.min.js).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch

__all__ = ["DATA_KINDS", "add_model_args", "parse_data", "load_real", "halves", "thumbnail", "markdown_table",
           "write_figure", "write_tables", "model_ref", "lowest_within_budget", "UTILITY_BUDGET"]

DATA_KINDS = ("synthsocial", "fairface", "utkface", "sispi", "celeba", "waterbirds")


def add_model_args(p, model_help: str = "embedded name or open_clip architecture (default: synthsocial)",
                   device_help: str = "cpu or cuda") -> None:
    """--model, --pretrained, --checkpoint, --device: how every command names the CLIP it loads (`load_clip`)."""
    p.add_argument("--model", default="synthsocial", help=model_help)
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (needs cached weights offline)")
    p.add_argument("--checkpoint", default=None, help="local weights (.safetensors, or .pt read weights-only)")
    p.add_argument("--device", default="cpu", help=device_help)


def parse_data(spec: str, kinds: tuple[str, ...] = DATA_KINDS) -> tuple[str, Optional[Path]]:
    """"synthsocial" or "<kind>:DIR" → (kind, folder); checks the kind (one of `kinds`) and that the folder exists."""
    real = [k for k in kinds if k != "synthsocial"]
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--data must be 'synthsocial' or one of {tuple(real)} as 'KIND:DIR', got {spec!r}")
    if spec == "synthsocial" and "synthsocial" in kinds:
        return "synthsocial", None
    kind, sep, folder = spec.partition(":")
    if not sep or kind not in real or not folder:
        raise ValueError(f"--data {spec!r}: expected 'synthsocial' or KIND:DIR with KIND one of "
                         f"{', '.join(real)} (e.g. {real[0]}:/data/{real[0]})")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"--data {spec!r}: no folder {str(path)!r}")
    return kind, path


def load_real(kind: str, folder: Path, split: Optional[str] = None):
    """The local-folder dataset of a `parse_data` kind (FairFace "val", CelebA "test", Waterbirds "test" unless
    `split` says otherwise; UTKFace and SISPI have no splits)."""
    from workbench.data.real import SISPI, CelebA, FairFace, UTKFace, Waterbirds

    if kind == "fairface":
        return FairFace(folder, split=split or "val")
    if kind == "utkface":
        return UTKFace(folder)
    if kind == "sispi":
        return SISPI(folder)
    if kind == "celeba":
        return CelebA(folder, split=split or "test")
    if kind == "waterbirds":
        return Waterbirds(folder, split=split or "test")
    raise ValueError(f"unknown data kind {kind!r}; expected one of {DATA_KINDS[1:]}")


def halves(dataset, n_images: Optional[int], seed: int, what: str = "the command"):
    """Two disjoint seeded halves (reference, gallery) of a dataset, each at most `n_images` and carrying the
    dataset's label_names."""
    from torch.utils.data import Subset

    n = len(dataset)
    if n < 4:
        raise ValueError(f"the dataset has {n} images; {what} needs at least 4 (a reference half and a gallery half)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    half = n // 2
    parts = []
    for part in (order[:half], order[half:]):
        if n_images is not None:
            part = part[:n_images]
        subset = Subset(dataset, sorted(part))
        subset.label_names = dict(dataset.label_names)
        parts.append(subset)
    return parts


def thumbnail(dataset, i: int, size: int = 96) -> torch.Tensor:
    """Item i of a dataset as its raw image (the dataset's transform bypassed, through any `Subset`s), a
    [3, ≤size, ≤size] float tensor in [0, 1] for figures and reports."""
    from torch.utils.data import Subset

    from workbench.data.base import pil_to_tensor

    base, index = dataset, i
    while isinstance(base, Subset):
        base, index = base.dataset, base.indices[index]
    saved = getattr(base, "transform", None)
    try:
        if saved is not None:
            base.transform = None
        image = base[index][0]
    finally:
        if saved is not None:
            base.transform = saved
    x = image if isinstance(image, torch.Tensor) else pil_to_tensor(image)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    if max(x.shape[-2:]) > size:
        shape = [max(1, round(s * size / max(x.shape[-2:]))) for s in x.shape[-2:]]
        x = torch.nn.functional.interpolate(x[None], size=shape, mode="bilinear", antialias=True)[0]
    return x.clamp(0, 1)


UTILITY_BUDGET = 0.02  # a "best" variant may cost at most this much zero-shot accuracy (2 points) or mAP


def lowest_within_budget(baseline: dict, variants: dict, key: Union[str, Callable[[dict], Optional[float]]],
                         budgets: dict) -> Optional[str]:
    """The variant with the lowest `key` (a metric name, or a function of a variant's metrics; None = no score)
    among those whose metrics drop by at most `budgets[metric]` against `baseline` ({"zero_shot_accuracy": 0.02}:
    a metric a variant or the baseline lacks is not checked); ties go to the first. None if none qualifies.
    `variants`: {name: {metric: value}}."""
    score = (lambda m: m.get(key)) if isinstance(key, str) else key
    best, best_value = None, None
    for name, metrics in variants.items():
        value = score(metrics)
        if value is None:
            continue
        if any(m in metrics and m in baseline and baseline[m] - metrics[m] > drop + 1e-12
               for m, drop in budgets.items()):
            continue
        if best_value is None or value < best_value:
            best, best_value = name, value
    return best


def markdown_table(frame, index_name: str = "variant") -> str:
    """A DataFrame as a GitHub markdown table, its index as the first column."""
    cols = [str(c) for c in frame.columns]
    lines = [f"| {index_name} | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for name, row in frame.iterrows():
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row.tolist()) + " |")
    return "\n".join(lines)


def write_figure(folder: Path, name: str, figure) -> None:
    """figures/NAME.html reading plotly.js from figures/plotly.min.js (written once: ~4.5 MB, not once per figure)."""
    from workbench.files import write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "plotly.min.js"
    if not script.exists():
        from plotly.offline import get_plotlyjs

        write_text_atomic(script, get_plotlyjs())
    write_text_atomic(folder / f"{name}.html", figure.to_html(include_plotlyjs="directory"))


def write_tables(out: Path, result, title: str, note: str = "") -> tuple[dict, dict]:
    """Write table.csv and table.md for an `EvaluationResult`; returns ({variant: {metric: value}},
    {variant: {metric: [lo, hi]}}) for summary.json.

    table.md starts with `# {title}`, says what the brackets and stars mean, then `note`.
    """
    from workbench.files import write_text_atomic

    out = Path(out)
    table = result.table
    metrics = {v: dict(zip(g["metric"], g["value"])) for v, g in table.groupby("variant", sort=False)}
    intervals = {v: {m: [lo, hi] for m, lo, hi in zip(g["metric"], g["lo"], g["hi"])}
                 for v, g in table.groupby("variant", sort=False)}
    wide = result.wide()
    for m in list(wide.columns):
        lo_hi = table[table["metric"] == m].set_index("variant").reindex(wide.index)
        wide[f"{m}_lo"], wide[f"{m}_hi"] = lo_hi["lo"].values, lo_hi["hi"].values
    wide.index.name = "variant"
    write_text_atomic(out / "table.csv", wide.to_csv(float_format="%.6g"))
    md = result.wide(intervals=True)
    noisy = result.comparisons
    for m in md.columns:
        beyond = set(noisy[(noisy["metric"] == m) & noisy["beyond_noise"]]["variant"])
        md[m] = [f"{v} *" if name in beyond else v for name, v in zip(md.index, md[m])]
    chance = getattr(result, "chance", {}) or {}
    if chance:  # NDKL is not 0 for a fair ranker: say where a random ranking lands on this gallery
        note = (f"Chance level (a random ranking's expected NDKL on this gallery): "
                f"{', '.join(f'{m} {v:.4f}' for m, v in chance.items())}. {note}").strip()
    header = (f"# {title}\n\nvalue [95 % bootstrap interval]; * = the paired difference to the baseline is beyond "
              f"noise (its 95 % interval excludes 0).{(' ' + note) if note else ''}\n\n")
    write_text_atomic(out / "table.md", header + markdown_table(md) + "\n")
    return metrics, intervals


def model_ref(model) -> dict:
    """{"name", "pretrained", "fingerprint"} of a HookedCLIP, for summary.json."""
    from workbench.primitives import ModelRef

    ref = ModelRef.of(model)
    return {"name": ref.name, "pretrained": ref.pretrained, "fingerprint": ref.fingerprint}
