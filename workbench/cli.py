"""The `workbench` console script.

    workbench demo                 end-to-end tour on the embedded default (offline, ~1 min on 2 cores)
    workbench info [--model NAME]  model summary, hook names and a decomposition check
    workbench card [--model NAME]  measured properties of a model on SynthSocial test_balanced
    workbench train-toy            re-train the embedded SynthSocial CLIP (seeded, a few minutes)
    workbench sae list|train|info  the shipped SAEs: figures, re-training one (`--preset NAME`), top latents
    workbench experts --out DIR    expert heads: find, intervene, evaluate; report, figures and specs in DIR
    workbench ntide --out DIR      N-TIDE: train a CLIP-taught image-only student and its ablations; table, figures, checkpoints
    workbench sem --out DIR        SEM (SEMi/SEMb/SEMbi) vs projection baselines, disentanglement; report in DIR
    workbench extract --sites S --cache-dir DIR  activations into a store; under torchrun, one share per process
    workbench debiaslens --out DIR DebiasLens: social neurons on SAEs silenced at inference; α sweep, report in DIR
"""
from __future__ import annotations

import argparse
import json
import sys


def _model_args(p: argparse.ArgumentParser) -> None:
    from workbench.method_report import add_model_args

    add_model_args(p)


def _load(args):
    from workbench.models import load_clip

    return load_clip(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device)


def cmd_info(args) -> int:
    import torch

    model = _load(args)
    print(model.summary())
    images = torch.rand(4, 3, *model.visual.cfg.image_size, generator=torch.Generator().manual_seed(0))
    x = model.preprocess(images).to(model.device)
    decomposition = model.visual.decompose(x)
    err = (decomposition.sum() - model.encode_image(x)).abs().max().item()
    print(f"\n{decomposition}\nmax |Σ components − encode_image| = {err:.2e} (fp32 target ≤ 1e-5)")
    if args.hooks:
        print("\n".join(model.hook_dict))
    return 0


def cmd_card(args) -> int:
    from workbench.embedded import model_card

    print(json.dumps(model_card(_load(args)), indent=2))
    return 0


def cmd_train_toy(args) -> int:
    from pathlib import Path

    from workbench.embedded import TrainConfig, train_toy
    from workbench.files import check_writable_dir
    from workbench.models.loading import PRETRAINED_DIR

    out_dir = check_writable_dir(Path(args.out) if args.out else PRETRAINED_DIR, "train-toy output folder")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, n_train=args.n_train,
                      threads=args.threads)
    result = train_toy(cfg, out_dir=out_dir)  # the folder is checked before minutes of training
    print(json.dumps(result, indent=2))
    return 0


def cmd_demo(args) -> int:
    from workbench.demo import run_demo

    run_demo(out_dir=args.out, quick=args.quick, with_ntide=args.with_ntide, progress=not args.quiet,
             model_name=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device,
             data=args.data)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="end-to-end tour on the embedded default")
    p.add_argument("--out", default="runs/demo", help="folder for summary.json, the exported intervention spec and "
                   "a figure (checked to be writable before any work)")
    p.add_argument("--quick", action="store_true", help="fewer images (for smoke tests)")
    p.add_argument("--with-ntide", action="store_true", help="also train and score N-TIDE (a few minutes more)")
    _model_args(p)
    p.add_argument("--data", default="synthsocial", help="synthsocial | fairface:DIR | utkface:DIR | sispi:DIR | "
                   "celeba:DIR (a local folder, split in a reference and a gallery half)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("info", help="model summary and decomposition check")
    _model_args(p)
    p.add_argument("--hooks", action="store_true", help="list every hook name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("card", help="measure a model on SynthSocial test_balanced")
    _model_args(p)
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("train-toy", help="re-train the embedded SynthSocial CLIP")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 reproduces the shipped checkpoint)")
    p.add_argument("--out", default=None, help="output folder (default: the package's pretrained folder)")
    p.set_defaults(func=cmd_train_toy)

    from workbench.saes.command import add_parser as add_sae_parser

    add_sae_parser(sub)  # workbench sae list | train | info

    from workbench.experts_command import add_parser as add_experts_parser

    add_experts_parser(sub)  # workbench experts
    from workbench.ntide_command import add_parser as add_ntide_parser

    add_ntide_parser(sub)  # workbench ntide
    from workbench.sem_command import add_parser as add_sem_parser

    add_sem_parser(sub)  # workbench sem
    from workbench.extract_command import add_parser as add_extract_parser

    add_extract_parser(sub)  # workbench extract (torchrun: many processes)
    from workbench.debiaslens_command import add_parser as add_debiaslens_parser

    add_debiaslens_parser(sub)  # workbench debiaslens
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, NotImplementedError, TypeError) as e:
        # Bad input deserves one clear line, not a trace from deep inside torch.
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
