"""`workbench extract`: activations of some sites over a dataset into an on-disk store, in one process or many.

    workbench extract --data synthsocial:train --n 20000 --sites head_contributions --cache-dir acts/
    torchrun --nproc-per-node 4 -m workbench.cli extract --model ViT-B-16 --pretrained openai \\
        --data fairface:/data/fairface --sites blocks.11.hook_resid_post,head_contributions --cache-dir acts/ \\
        --device cuda --dtype bfloat16

The store opens with `ActivationStore.open(DIR)`. Under torchrun every process takes a share of the shards
(`workbench.activations.extract_distributed`; docs/activations.md, "Distributed extraction"); run the same
command again to resume an interrupted one.

Data: "synthsocial:SPLIT" (train, test_balanced, test_spurious; "synthsocial" alone is train) or "KIND:DIR"
for a local folder (fairface, utkface, sispi, celeba, waterbirds; `workbench.method_report.parse_data`). `--n N`
takes the first N items.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

__all__ = ["run_extract", "load_data", "parse_sites"]

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def load_data(spec: str, n: Optional[int] = None):
    """The dataset of a `--data` spec, cut to its first `n` items (a Subset that keeps `label_names`)."""
    from workbench.method_report import load_real, parse_data

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--data must be synthsocial:SPLIT or KIND:DIR, got {spec!r}")
    kind, _, rest = spec.partition(":")
    if kind == "synthsocial":
        from workbench.data import SynthSocial
        from workbench.data.synthsocial import SPLITS

        split = rest or "train"
        if split not in SPLITS:
            raise ValueError(f"--data {spec!r}: unknown SynthSocial split {split!r}; choose one of "
                             + ", ".join(f"synthsocial:{s}" for s in SPLITS))
        if split == "train":  # its first n images do not depend on its size: as SynthSocial("train", n=n)
            return SynthSocial(split, n=n)
        dataset = SynthSocial(split)  # the test splits are sampled per size: the whole split, then its first n
    else:
        dataset = load_real(*parse_data(spec))
    if n is not None and n < len(dataset):
        from torch.utils.data import Subset

        names = dict(getattr(dataset, "label_names", {}) or {})
        dataset = Subset(dataset, range(n))
        dataset.label_names = names
    return dataset


def parse_sites(text: str) -> list[str]:
    """"a,b, c" → ["a", "b", "c"] (names are checked against the model by extraction)."""
    sites = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not sites:
        raise ValueError(f"--sites {text!r} names no site; pass comma-separated hook names, e.g. "
                         "blocks.11.hook_resid_post,head_contributions")
    return sites


def run_extract(cache_dir, model_name: str = "synthsocial", data: str = "synthsocial:train", sites="head_contributions",
                n: Optional[int] = None, pretrained: Optional[str] = None, checkpoint: Optional[str] = None,
                device: str = "cpu", dtype: str = "float32", position: str = "pooled", batch_size: int = 64,
                shard_size: Optional[int] = None, num_workers: int = 0, overwrite: bool = False,
                progress: bool = True):
    """Extract `sites` of `model_name` over `data` into `cache_dir` (every torchrun rank calls this); returns
    the store. Arguments are checked before the model is loaded."""
    import torch

    from workbench.activations import extract_distributed
    from workbench.files import check_writable_dir
    from workbench.models import load_clip

    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    if n is not None and n < 1:
        raise ValueError(f"--n must be a positive number of items, got {n}")
    sites = parse_sites(sites) if isinstance(sites, str) else list(sites)
    if position not in ("pooled", "cls", "all"):
        try:
            position = int(position)
        except ValueError:
            raise ValueError(f"--position {position!r}: pooled, all, or a token index") from None
    check_writable_dir(Path(cache_dir), "activation cache folder")
    dataset = load_data(data, n)
    model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device="cpu")
    return extract_distributed(model, dataset, sites, cache_dir, batch_size=batch_size, device=device,
                               dtype=getattr(torch, dtype), position=position, num_workers=num_workers,
                               progress=progress, shard_size=shard_size, overwrite=overwrite)


def cmd_extract(args) -> int:
    import torch.distributed as dist

    try:
        store = run_extract(args.cache_dir, model_name=args.model, data=args.data, sites=args.sites, n=args.n,
                            pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device,
                            dtype=args.dtype, position=args.position, batch_size=args.batch_size,
                            shard_size=args.shard_size, num_workers=args.num_workers, overwrite=args.overwrite,
                            progress=not args.quiet)
        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            print(store)
            print(json.dumps({"cache_dir": str(args.cache_dir), "n": len(store), "shards": store.n_shards,
                              "sites": store.shapes}))
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def add_parser(sub) -> None:
    """Register `workbench extract` on the console script's subparsers."""
    from workbench.method_report import add_model_args

    p = sub.add_parser("extract", help="activations of hook sites over a dataset into a store (torchrun: many "
                       "processes)")
    add_model_args(p, device_help="cpu, cuda (under torchrun: cuda:LOCAL_RANK per process), cuda:N")
    p.add_argument("--data", default="synthsocial:train",
                   help="synthsocial:SPLIT | fairface:DIR | utkface:DIR | sispi:DIR | celeba:DIR | waterbirds:DIR")
    # under torchrun write --n-items: torchrun's own parser takes a bare --n for an abbreviation of its options
    p.add_argument("--n", "--n-items", dest="n", type=int, default=None, help="take the first N items of the data")
    p.add_argument("--sites", required=True, help="comma-separated hook names, e.g. blocks.11.hook_resid_post,"
                   "head_contributions (`workbench info --hooks` lists them)")
    p.add_argument("--cache-dir", required=True, help="the store's folder (resumed if it holds the same extraction)")
    p.add_argument("--dtype", default="float32", help="storage dtype: float32 | float16 | bfloat16")
    p.add_argument("--position", default="pooled", help="pooled (CLS) | all | a token index")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=None, help="items per shard (default: about 128 MiB)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--overwrite", action="store_true", help="discard a different extraction in --cache-dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)
