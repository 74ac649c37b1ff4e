"""`workbench ntide`: train N-TIDE's teacher and student (and the ablations) on a frozen CLIP, score every model
with the fairness metrics, write a report.

    run_ntide_command("runs/ntide")                                         # embedded CLIP, SynthSocial
    run_ntide_command("runs/ff", model_name="ViT-B-32", pretrained="openai", data="fairface:/data/fairface")

Data (docs/ntide.md):
- "synthsocial": train on SynthSocial `train` (the first `n_train` images, default 2,000), score on
  `test_balanced` (2,048 images, every occupation × gender × ethnicity cell equal). Default task: target
  occupation, group gender — `train` ties gender to occupation (P(female | occupation) 0.94 or 0.06), so a model
  that leans on gender to recognise an occupation shows gaps on the balanced test split. Students train 2 epochs
  there: a from-scratch CNN reaches 100 % training accuracy by epoch 3 and, trained longer, shows no gap left to
  close; after 2 epochs the gap is measurable (docs/ntide.md, "Result on SynthSocial").
- "fairface:DIR": train on FairFace `train`, score on `val`; "utkface:DIR": two seeded halves. Default task:
  target gender, group ethnicity (the reference's default).

Writes DIR/summary.json (the keys of every method command, plus target, task, config, finding), table.csv,
table.md, figures/*.html, checkpoints/ROW/epoch_EEE.safetensors. The output folder is checked before any work;
`resume=True` continues each model from its last complete epoch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

__all__ = ["run_ntide_command", "pick_best", "add_parser", "DATA_KINDS", "N_TRAIN_SYNTH"]

DATA_KINDS = ("synthsocial", "fairface", "utkface")
N_TRAIN_SYNTH = 2000
STUDENT_EPOCHS_SYNTH = 2  # later, the from-scratch student has no occupation/gender gap left (docs/ntide.md)
DEFAULT_TASK = {"synthsocial": ("occupation", "gender"), "fairface": ("gender", "ethnicity"),
                "utkface": ("gender", "ethnicity")}
BEST_ACCURACY_DROP = 0.02


def _subset(dataset, n: Optional[int], seed: int):
    """A seeded subset of at most n items that keeps label_names (all of it when n is None or ≥ len)."""
    import torch
    from torch.utils.data import Subset

    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    subset = Subset(dataset, sorted(order.tolist()))
    subset.label_names = dict(dataset.label_names)
    return subset


def _datasets(kind: str, folder: Optional[Path], seed: int, n_train: Optional[int], n_test: Optional[int]):
    """(train, test, description) of a data kind."""
    from workbench.data import SynthSocial
    from workbench.method_report import halves, load_real

    if kind == "synthsocial":
        train = SynthSocial("train", n=n_train or N_TRAIN_SYNTH, seed=seed)
        test = SynthSocial("test_balanced", n=n_test, seed=seed)
        return train, test, f"SynthSocial train ({len(train)}) → test_balanced ({len(test)})"
    if kind == "fairface":
        train = _subset(load_real(kind, folder, split="train"), n_train, seed)
        test = _subset(load_real(kind, folder, split="val"), n_test, seed)
        return train, test, f"FairFace train ({len(train)}) → val ({len(test)})"
    train, test = halves(load_real(kind, folder), None, seed, what="N-TIDE")
    train, test = _subset(train, n_train, seed), _subset(test, n_test, seed)
    return train, test, f"UTKFace seeded halves: train ({len(train)}) → test ({len(test)})"


def pick_best(baseline: dict, variants: dict, students: set) -> Optional[str]:
    """The image-only student (a name in `students`) with the lowest EO diff that is below the baseline's and
    whose accuracy drops at most 0.02 against it; None if none qualifies."""
    best, best_eo = None, baseline["eo_diff"]
    for name, metrics in variants.items():
        if name not in students or baseline["accuracy"] - metrics["accuracy"] > BEST_ACCURACY_DROP + 1e-12:
            continue
        if metrics["eo_diff"] < best_eo:
            best, best_eo = name, metrics["eo_diff"]
    return best


def _finding(metrics: dict, table) -> str:
    """One sentence: does N-TIDE lower RBD and EO against the student baseline, at what accuracy cost."""
    from workbench.methods.ntide import BASELINE

    if "ntide" not in metrics:
        return "no N-TIDE row"
    base, ours = metrics[BASELINE], metrics["ntide"]
    rows = table[table["variant"] == "ntide"].set_index("metric")

    def change(metric: str) -> str:
        if rows.loc[metric, "diff_lo"] == rows.loc[metric, "diff_hi"]:  # n_boot < 2: no interval to judge by
            return f"{metric} {base[metric]:.4f} → {ours[metric]:.4f}"
        noise = "beyond noise" if bool(rows.loc[metric, "beyond_noise"]) else "within noise"
        return f"{metric} {base[metric]:.4f} → {ours[metric]:.4f} ({noise})"

    return (f"N-TIDE vs the student-only baseline: {change('rbd')}, {change('eo_diff')}, {change('eop_diff')}, "
            f"{change('dp_diff')}; {change('accuracy')}.")


def _write_tables(out: Path, result, title: str, note: str) -> None:
    from workbench.files import write_text_atomic
    from workbench.method_report import markdown_table
    from workbench.methods.ntide import METRICS

    table = result.table
    wide = result.wide()
    for m in METRICS:
        sub = table[table["metric"] == m].set_index("variant").reindex(wide.index)
        wide[f"{m}_lo"], wide[f"{m}_hi"] = sub["lo"].values, sub["hi"].values
    wide.insert(0, "kind", [result.rows[v].kind for v in wide.index])
    wide.index.name = "variant"
    write_text_atomic(out / "table.csv", wide.to_csv(float_format="%.6g"))
    md = result.wide().astype(object)
    for m in METRICS:
        sub = table[table["metric"] == m].set_index("variant")
        md[m] = [f"{sub.loc[v, 'value']:.4f} [{sub.loc[v, 'lo']:.4f}, {sub.loc[v, 'hi']:.4f}]"
                 + (" *" if bool(sub.loc[v].get("beyond_noise", False)) else "") for v in md.index]
    md.insert(0, "kind", [result.rows[v].kind for v in md.index])
    header = (f"# {title}\n\nvalue [95 % interval: ± 1.96 × the standard deviation over {result.config.n_boot} "
              "bootstrap resamples of the test images]; * = the paired difference to the student baseline is beyond "
              f"noise (its interval excludes 0). {note}\n\n")
    write_text_atomic(out / "table.md", header + markdown_table(md) + "\n")


def _figures(out: Path, result, group_names, seed: int) -> None:
    from workbench.method_report import write_figure
    from workbench.viz import plot_metric_bars
    from workbench.viz.ntide import plot_feature_maps, plot_training_curves
    from workbench.methods.ntide import BASELINE, METRICS

    figures = out / "figures"
    group = result.labels[result.config.group].numpy()
    shown = {n: result.rows[n].features for n in (BASELINE, "ntide", "clip_text_inversion", "clip_probe")
             if n in result.rows}
    write_figure(figures, "features_pca", plot_feature_maps(shown, group, group_names, method="pca", seed=seed))
    write_figure(figures, "features_tsne", plot_feature_maps(shown, group, group_names, method="tsne",
                                                             max_points=500, seed=seed))
    write_figure(figures, "training_curves", plot_training_curves({n: r.history for n, r in result.rows.items()}))
    title = "N-TIDE rows vs the student-only baseline (95 % intervals)"
    write_figure(figures, "metrics", plot_metric_bars(result.table, list(METRICS), baseline=BASELINE, title=title))


def run_ntide_command(out_dir, *, model=None, model_name: str = "synthsocial", pretrained: Optional[str] = None,
                      checkpoint: Optional[str] = None, device: str = "cpu", data: str = "synthsocial",
                      target: Optional[str] = None, group: Optional[str] = None, n_train: Optional[int] = None,
                      n_test: Optional[int] = None, resume: bool = False, keep: str = "last", amp: bool = False,
                      progress: bool = True, batch_size: int = 128, **config) -> dict:
    """Run N-TIDE end to end and write the report into `out_dir` (module docstring); returns the summary dict.

    config: any `NTIDEConfig` field (lambda_t, lambda_s, teacher_epochs, student_epochs, backbone,
    backbone_weights, image_size, ablations, n_boot, seed, ...). target / group default by data kind."""
    import torch

    from workbench.files import check_writable_dir, write_json_atomic
    from workbench.method_report import model_ref, parse_data
    from workbench.methods.ntide import BASELINE, NTIDEConfig, run_ntide
    from workbench.methods.ntide_data import prepare_split

    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:
        timings[phase] = round(time.perf_counter() - start - sum(timings.values()), 2)

    out = check_writable_dir(out_dir, "ntide output folder")  # before any work, so no result is lost
    kind, folder = parse_data(data, kinds=DATA_KINDS)
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2):
            raise ValueError(f"{name} must be an integer ≥ 2, got {value!r}")
    target = target or DEFAULT_TASK[kind][0]
    group = group or DEFAULT_TASK[kind][1]
    seed = config.get("seed", 0)
    if config.get("student_epochs") is None:
        config["student_epochs"] = STUDENT_EPOCHS_SYNTH if kind == "synthsocial" else NTIDEConfig.student_epochs
    cfg = NTIDEConfig(target=target, group=group, **config)  # checks the settings before any loading
    if cfg.backbone_weights is not None and not Path(cfg.backbone_weights).is_file():
        raise FileNotFoundError(f"--backbone-weights: no file {cfg.backbone_weights!r}")
    if model is None:
        from workbench.models import load_clip

        model = load_clip(model_name, pretrained=pretrained, checkpoint=checkpoint, device=device)
    train_ds, test_ds, split = _datasets(kind, folder, seed, n_train, n_test)
    keys = set(train_ds[0][1])
    for flag, key in (("--target", target), ("--group", group)):
        if key not in keys:
            raise ValueError(f"the {kind} data has no label {key!r}; choose {flag} from {sorted(keys)}")
    lap("load")
    train_name, test_name = ("train", "test_balanced") if kind == "synthsocial" else \
        (("train", "val") if kind == "fairface" else ("first half", "second half"))
    train = prepare_split(model, train_ds, (target, group), image_size=cfg.image_size, batch_size=batch_size,
                          progress=progress, description=f"{data} {train_name} ({len(train_ds)} images)")
    test = prepare_split(model, test_ds, (target, group), image_size=cfg.image_size, batch_size=batch_size,
                         progress=progress, description=f"{data} {test_name} ({len(test_ds)} images)")
    lap("features")
    result = run_ntide(model, train, test, cfg, folder=out / "checkpoints", resume=resume, keep=keep,
                       progress=progress, amp=amp)
    timings.update(result.timings)  # teachers, students, evaluate

    metrics, intervals = result.metrics(), result.intervals()
    students = {n for n, r in result.rows.items() if r.kind == "student" and n != BASELINE}
    names = [n for n in result.rows if n != BASELINE]
    best = pick_best(metrics[BASELINE], {n: metrics[n] for n in names}, students)
    title = f"N-TIDE: {target} classifiers, {group} as the protected group, on {data}"
    note = (f"Trained on {train.description}, scored on {test.description}. Rows: student = image-only student "
            "(CE only, the baseline); clip_* = heads on the frozen CLIP (need CLIP at inference); ntide* = "
            "students distilled from a teacher (docs/ntide.md).")
    _write_tables(out, result, title, note)
    _figures(out, result, result.task["group_names"], seed)
    lap("write")

    def checkpoint_of(name: str) -> Optional[str]:
        files = sorted((out / "checkpoints" / name).glob("epoch_*.safetensors"))
        return str(files[-1].relative_to(out)) if files else None

    diffs = result.table.set_index(["variant", "metric"])
    summary = {
        "method": "ntide",
        "model": model_ref(model),
        "data": data, "attribute": group, "target": target,
        "seconds": round(time.perf_counter() - start, 2), "timings": timings,
        "baseline": metrics[BASELINE],
        "variants": [{"name": n, "kind": result.rows[n].kind, "metrics": metrics[n], "intervals": intervals[n],
                      "spec": None, "checkpoint": checkpoint_of(n),
                      "difference_to_baseline": {m: {"value": float(diffs.loc[(n, m), "diff"]),
                                                     "interval": [float(diffs.loc[(n, m), "diff_lo"]),
                                                                  float(diffs.loc[(n, m), "diff_hi"])],
                                                     "beyond_noise": bool(diffs.loc[(n, m), "beyond_noise"])}
                                                 for m in metrics[n]}}
                     for n in names],
        "best": best,
        "finding": _finding(metrics, result.table),
        "baseline_checkpoint": checkpoint_of(BASELINE),
        "task": result.task, "config": cfg.to_dict(),
        "split": split, "train": train.description, "test": test.description, "device": str(model.device),
        "history": {n: r.history for n, r in result.rows.items() if r.history},
        "torch_threads": torch.get_num_threads(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------- command line
def _floats(text: str) -> tuple:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers (e.g. 1 or 0.25,1,2), got {text!r}") from None
    return values


def cmd_ntide(args) -> int:
    """`workbench ntide`: run_ntide_command with the parsed arguments; prints the finding."""
    summary = run_ntide_command(
        args.out, model_name=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint, device=args.device,
        data=args.data, target=args.target, group=args.group, n_train=args.n_train, n_test=args.n_test,
        resume=args.resume, keep=args.keep_checkpoints, amp=args.amp, progress=not args.quiet,
        lambda_t=_floats(args.lambda_t), lambda_s=_floats(args.lambda_s), teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs, backbone=args.backbone, backbone_weights=args.backbone_weights,
        image_size=args.image_size, ablations=not args.no_ablations, n_boot=args.n_boot, seed=args.seed,
        undefined=args.undefined)
    print(f"wrote {Path(args.out) / 'summary.json'} ({len(summary['variants']) + 1} rows, "
          f"{summary['seconds']:.0f} s); {summary['finding']} best: {summary['best']}")
    return 0


def add_parser(sub) -> None:
    """Register `workbench ntide` on the console script's subparsers."""
    from workbench.method_report import add_model_args

    from workbench.methods.ntide_student import BACKBONES

    p = sub.add_parser("ntide", help="N-TIDE: train a CLIP-taught image-only student and its ablations, score them "
                       "(docs/ntide.md)")
    add_model_args(p, model_help="teacher CLIP: embedded name or open_clip architecture")
    p.add_argument("--data", default="synthsocial", help="synthsocial | fairface:DIR | utkface:DIR")
    p.add_argument("--target", default=None, help="label to classify (default: occupation on synthsocial, else gender)")
    p.add_argument("--group", default=None, help="protected label the fairness gaps compare (default: gender on "
                   "synthsocial, else ethnicity)")
    p.add_argument("--n-train", type=int, default=None, help=f"training images (default: synthsocial {N_TRAIN_SYNTH}, "
                   "real data all)")
    p.add_argument("--n-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--lambda-t", default="1", help="inversion weight(s) λ_t, comma-separated to sweep (default 1)")
    p.add_argument("--lambda-s", default="1", help="distillation weight(s) λ_s, comma-separated to sweep (default 1)")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--student-epochs", type=int, default=None,
                   help=f"default: {STUDENT_EPOCHS_SYNTH} on synthsocial (docs/ntide.md), 8 on real data")
    p.add_argument("--backbone", choices=BACKBONES, default="small_cnn", help="student backbone (trained from "
                   "scratch unless --backbone-weights)")
    p.add_argument("--backbone-weights", default=None, help="local backbone weights (.safetensors or a torch "
                   "state dict read weights-only)")
    p.add_argument("--image-size", type=int, default=64, help="student input size in pixels (default 64)")
    p.add_argument("--no-ablations", action="store_true", help="train only the baseline, the N-TIDE teacher and "
                   "N-TIDE")
    p.add_argument("--n-boot", type=int, default=20, help="bootstrap resamples of the test images for the intervals")
    p.add_argument("--undefined", choices=("raise", "skip", "zero"), default="raise",
                   help="a (class, group) cell without images: refuse (default), skip it, or count its rate as 0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue each model from its last complete epoch in DIR")
    p.add_argument("--keep-checkpoints", choices=("last", "all"), default="last",
                   help="keep every epoch's checkpoint or only the last (default)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--out", required=True, help="report folder (checked to be writable before any work)")
    p.set_defaults(func=cmd_ntide)
