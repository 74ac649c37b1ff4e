"""N-TIDE (neutral-text inversion for distillation-based equilibration): a trainable comparison baseline.

A frozen CLIP teaches an image-only student. Stage 1 trains, on top of the frozen CLIP, a neutral token v, a
fusion MLP and a classifier so that the features with the neutral text ψ(v) match those with the null text φ
(`ntide_teacher`); stage 2 trains the student with CE + λ_s · (1 − cos(f_student, f_neutral)) (`ntide_student`).
Training: `ntide_train.fit` (AdamW + cosine, per-epoch safetensors checkpoints, bit-exact resume); data and
pre-training checks: `ntide_data`. Every row is scored by `workbench.metrics.fairness_report` (accuracy, EOp / EO /
DP differences, RBD) on the test split, with bootstrap intervals over test images.

    result = run_ntide(model, train_split, test_split, NTIDEConfig(target="occupation", group="gender"),
                       folder="runs/ntide/checkpoints")
    result.table          # tidy: variant, metric, value, lo, hi (+ paired difference to the student baseline)

Rows (the paper's Table 2; docs/ntide.md):

| row | what |
| --- | --- |
| `student` | the student trained with CE only (the baseline) |
| `clip_probe` | CLIP image features + a linear probe (`workbench.probes.LinearProbes`), no text |
| `clip_text` | teacher with the text encoder, 'person' init, no inversion (λ_t = 0) |
| `clip_text_inversion_random` | teacher with inversion (λ_t), random init of v |
| `clip_text_inversion` | teacher with inversion (λ_t), 'person' init: the N-TIDE teacher |
| `ntide_no_inversion` | student distilled from `clip_text` |
| `ntide` | student distilled from `clip_text_inversion`: N-TIDE |
| `clip_text_inversion_lt{a}`, `ntide_lt{a}_ls{b}` | further λ_t / λ_s values (the sweep) |
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .ntide_data import Split, check_task
from .ntide_student import Student, student_loss
from .ntide_teacher import NeutralPrompt, NTIDETeacher, teacher_loss
from .ntide_train import fit
from .registry import register_method

__all__ = ["NTIDEConfig", "NTIDEResult", "run_ntide", "METRICS", "BASELINE"]

METRICS = ("accuracy", "eop_diff", "eo_diff", "dp_diff", "rbd")
BASELINE = "student"


@dataclass(frozen=True)
class NTIDEConfig:
    """Settings of an N-TIDE run (defaults: the SynthSocial configuration of `workbench ntide`, ≤ 5 min on 2 cores).

    lambda_t / lambda_s: the inversion and distillation weights; the first value of each makes the main rows,
    further values add sweep rows. Teacher: AdamW(lr, wd 1e-5), cosine to eta_min. Student: AdamW with the
    backbone and the proj/head at their own rates (wd 1e-2), cosine. `ablations=False` trains only what the
    baseline and N-TIDE need (clip_text_inversion, student, ntide). n_boot: bootstrap resamples of the test
    images for the intervals (each costs one `fairness_report` per row).
    """

    target: str = "occupation"
    group: str = "gender"
    lambda_t: tuple = (1.0,)
    lambda_s: tuple = (1.0,)
    label_smoothing: float = 0.1
    feature_dim: Optional[int] = None  # default: d_embed // 2
    template: str = "a photo of a {}"
    word: str = "person"
    teacher_epochs: int = 10
    teacher_batch_size: int = 64
    teacher_lr: float = 1e-3
    teacher_weight_decay: float = 1e-5
    teacher_eta_min: float = 1e-5
    backbone: str = "small_cnn"
    backbone_weights: Optional[str] = None
    image_size: int = 64
    student_epochs: int = 8
    student_batch_size: int = 64
    student_lr_backbone: float = 1e-3
    student_lr_head: float = 1e-3
    student_weight_decay: float = 1e-2
    student_eta_min: float = 1e-5
    ablations: bool = True
    undefined: str = "raise"
    n_boot: int = 20
    seed: int = 0

    def __post_init__(self):
        for name in ("lambda_t", "lambda_s"):
            values = getattr(self, name)
            values = (values,) if isinstance(values, (int, float)) else tuple(values)
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0
                                 for v in values):
                raise ValueError(f"{name} must be one or more non-negative numbers, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        for name in ("teacher_epochs", "teacher_batch_size", "student_epochs", "student_batch_size", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.n_boot, bool) or not isinstance(self.n_boot, int) or self.n_boot < 0:
            raise ValueError(f"n_boot must be a non-negative integer, got {self.n_boot!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing!r}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Row:
    """One trained or fitted model: its test logits [n, C] and features [n, f], training history, settings."""

    name: str
    kind: str  # "student", "teacher" or "probe"
    logits: Tensor
    features: Tensor
    history: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)


@dataclass
class NTIDEResult:
    """rows {name: Row}; table (tidy: variant, metric, value, lo, hi, diff, diff_lo, diff_hi, beyond_noise — the
    paired bootstrap difference to the student baseline); task; timings {phase: seconds}."""

    rows: dict
    table: object
    task: dict
    labels: dict
    timings: dict
    config: NTIDEConfig

    def metrics(self) -> dict:
        """{variant: {metric: value}}."""
        return {v: dict(zip(g["metric"], g["value"])) for v, g in self.table.groupby("variant", sort=False)}

    def intervals(self) -> dict:
        """{variant: {metric: [lo, hi]}}."""
        return {v: {m: [float(lo), float(hi)] for m, lo, hi in zip(g["metric"], g["lo"], g["hi"])}
                for v, g in self.table.groupby("variant", sort=False)}

    def wide(self):
        """One row per variant, one column per metric."""
        return self.table.pivot(index="variant", columns="metric", values="value").reindex(
            index=list(self.rows), columns=list(METRICS))

    def __repr__(self) -> str:
        return (f"NTIDEResult({len(self.rows)} rows: {', '.join(self.rows)}; target={self.config.target!r}, "
                f"group={self.config.group!r})")


def _number(v: float) -> str:
    return f"{v:g}"


def _device_of(model) -> torch.device:
    return torch.device(model.device)


# ---------------------------------------------------------------------------------------------- stage 1
def _train_teacher(model, train: Split, task: dict, cfg: NTIDEConfig, *, name: str, init: Optional[str],
                   lambda_t: float, base_run: dict, folder, resume, progress, keep, amp, on_epoch_end):
    device = _device_of(model)
    torch.manual_seed(cfg.seed)
    prompt = None if init is None else NeutralPrompt(model, init, template=cfg.template, word=cfg.word,
                                                     seed=cfg.seed)
    teacher = NTIDETeacher(model, task["n_classes"], prompt, cfg.feature_dim).to(device)
    x = train.clip.to(device)
    y = train.labels[cfg.target].to(device)

    def step(index):
        index = index.to(device)
        logits, f_neutral, f_null = teacher(x[index])
        loss = teacher_loss(logits, y[index], f_neutral, f_null, lambda_t, cfg.label_smoothing)
        return loss, (logits.argmax(-1) == y[index]).sum()

    run = {**base_run, "row": name, "kind": "teacher", "init": init, "lambda_t": lambda_t,
           "epochs": cfg.teacher_epochs, "batch_size": cfg.teacher_batch_size, "lr": cfg.teacher_lr,
           "weight_decay": cfg.teacher_weight_decay, "eta_min": cfg.teacher_eta_min, "template": cfg.template,
           "word": cfg.word, "feature_dim": teacher.feature_dim}
    history = fit(teacher, [{"params": [p for p in teacher.parameters() if p.requires_grad], "lr": cfg.teacher_lr}],
                  step, len(train), run=run, folder=None if folder is None else Path(folder) / name,
                  epochs=cfg.teacher_epochs, batch_size=cfg.teacher_batch_size,
                  weight_decay=cfg.teacher_weight_decay, eta_min=cfg.teacher_eta_min, seed=cfg.seed, resume=resume,
                  keep=keep, progress=progress, name=name, amp=amp,
                  on_epoch_end=None if on_epoch_end is None else lambda e, r: on_epoch_end(name, e, r))
    return teacher, history, run


@torch.no_grad()
def _teacher_outputs(teacher: NTIDETeacher, features: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """(logits [n, C], f_neutral [n, f]) of a trained teacher, float32 on the CPU."""
    teacher.eval()
    device = teacher.head.weight.device
    text = teacher.text()
    logits, feats = [], []
    for chunk in features.split(batch_size):
        lo, f, _ = teacher(chunk.to(device), text)
        logits.append(lo.float().cpu())
        feats.append(f.float().cpu())
    return torch.cat(logits), torch.cat(feats)


def _probe_row(train: Split, test: Split, task: dict, cfg: NTIDEConfig) -> Row:
    """CLIP image features + a multinomial linear probe (no text): `workbench.probes.LinearProbes`."""
    from workbench.probes import LinearProbes

    probes = LinearProbes(n_classes=task["n_classes"], max_iter=500, seed=cfg.seed)
    probes.fit(train.clip[:, None, :], train.labels[cfg.target])
    logits = torch.as_tensor(probes.decision_function(test.clip[:, None, :]))[:, 0]  # [n, C] (one unit)
    if logits.ndim == 1 or logits.shape[-1] == 1:  # binary: the logit of class 1
        z = logits.reshape(-1)
        logits = torch.stack([torch.zeros_like(z), z], dim=-1)
    return Row("clip_probe", "probe", logits.float(), test.clip.clone(), [], {"kind": "probe"})


# ---------------------------------------------------------------------------------------------- stage 2
def _train_student(train: Split, task: dict, cfg: NTIDEConfig, *, name: str, targets: Optional[Tensor],
                   lambda_s: float, teacher_run: Optional[dict], feature_dim: int, base_run: dict, device,
                   folder, resume, progress, keep, amp, on_epoch_end):
    torch.manual_seed(cfg.seed)  # every student starts from the same weights: rows differ only in their loss
    student = Student(cfg.backbone, task["n_classes"], feature_dim, cfg.backbone_weights).to(device)
    images = train.images
    y = train.labels[cfg.target]

    def step(index):
        xb, yb = images[index].to(device, non_blocking=True), y[index].to(device)
        logits, features = student(xb)
        tb = None if targets is None else targets[index].to(device)
        loss = student_loss(logits, yb, features, tb, lambda_s, cfg.label_smoothing)
        return loss, (logits.argmax(-1) == yb).sum()

    run = {**base_run, "row": name, "kind": "student", "lambda_s": lambda_s if targets is not None else 0.0,
           "teacher": teacher_run, "backbone": cfg.backbone, "backbone_weights": cfg.backbone_weights,
           "image_size": cfg.image_size, "epochs": cfg.student_epochs, "batch_size": cfg.student_batch_size,
           "lr_backbone": cfg.student_lr_backbone, "lr_head": cfg.student_lr_head,
           "weight_decay": cfg.student_weight_decay, "eta_min": cfg.student_eta_min, "feature_dim": feature_dim}
    history = fit(student, student.param_groups(cfg.student_lr_backbone, cfg.student_lr_head), step, len(train),
                  run=run, folder=None if folder is None else Path(folder) / name, epochs=cfg.student_epochs,
                  batch_size=cfg.student_batch_size, weight_decay=cfg.student_weight_decay,
                  eta_min=cfg.student_eta_min, seed=cfg.seed, resume=resume, keep=keep, progress=progress,
                  name=name, amp=amp,
                  on_epoch_end=None if on_epoch_end is None else lambda e, r: on_epoch_end(name, e, r))
    return student, history, run


@torch.no_grad()
def _student_outputs(student: Student, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    student.eval()
    device = student.head.weight.device
    logits, feats = [], []
    for chunk in images.split(batch_size):
        lo, f = student(chunk.to(device))
        logits.append(lo.float().cpu())
        feats.append(f.float().cpu())
    return torch.cat(logits), torch.cat(feats)


# ---------------------------------------------------------------------------------------------- evaluation
def _score(row: Row, y: np.ndarray, g: np.ndarray, task: dict, undefined: str, index=None) -> dict:
    from workbench.metrics import fairness_report

    logits, feats = row.logits.numpy(), row.features.numpy()
    if index is not None:
        y, g, logits, feats = y[index], g[index], logits[index], feats[index]
    classes = [c for c in task["classes"] if (y == c).any()]
    return fairness_report(y, logits, g, features=feats, classes=classes, n_classes=task["n_classes"],
                           undefined=undefined)


def evaluate_rows(rows: dict, labels: dict, task: dict, cfg: NTIDEConfig, progress: bool = False):
    """The tidy metric table of every row on the test split: value, 95 % interval (normal approximation from
    `n_boot` bootstrap resamples of the test images: value ± 1.96 · their standard deviation, truncated to the
    metric's range), and the paired
    bootstrap difference to the student baseline (same resamples) with its interval and whether it excludes 0.
    Resamples whose (class, group) cells come out empty are redrawn."""
    import pandas as pd
    from tqdm.auto import tqdm

    y, g = labels[cfg.target].numpy(), labels[cfg.group].numpy()
    point = {name: _score(row, y, g, task, cfg.undefined) for name, row in rows.items()}
    rng = np.random.default_rng(cfg.seed)
    boots = {name: [] for name in rows}
    n = len(y)
    cells = {(c, gg) for c in task["classes"] for gg in task["groups"] if ((y == c) & (g == gg)).any()}
    bar = tqdm(total=cfg.n_boot, desc="bootstrap", disable=not progress, leave=False)
    drawn = 0
    while drawn < cfg.n_boot:
        index = rng.integers(0, n, n)
        if cfg.undefined == "raise" and any(not ((y[index] == c) & (g[index] == gg)).any() for c, gg in cells):
            continue
        for name, row in rows.items():
            boots[name].append(_score(row, y, g, task, cfg.undefined, index))
        drawn += 1
        bar.update(1)
    bar.close()
    records = []
    base = boots.get(BASELINE)
    for name in rows:
        for metric in METRICS:
            value = float(point[name][metric])
            rec = {"variant": name, "metric": metric, "value": value, "lo": value, "hi": value}
            if cfg.n_boot >= 2:  # truncated to the metric's range [0, 1] (RBD: [0, 2])
                sd = float(np.std([b[metric] for b in boots[name]], ddof=1))
                top = 2.0 if metric == "rbd" else 1.0
                rec["lo"], rec["hi"] = max(0.0, value - 1.96 * sd), min(top, value + 1.96 * sd)
            if BASELINE in point:
                diff = value - float(point[BASELINE][metric])
                rec["diff"], rec["diff_lo"], rec["diff_hi"] = diff, diff, diff
                if cfg.n_boot >= 2 and name != BASELINE:
                    sd = float(np.std([b[metric] - bb[metric] for b, bb in zip(boots[name], base)], ddof=1))
                    rec["diff_lo"], rec["diff_hi"] = diff - 1.96 * sd, diff + 1.96 * sd
                rec["beyond_noise"] = bool(name != BASELINE and cfg.n_boot >= 2 and
                                           (rec["diff_lo"] > 0 or rec["diff_hi"] < 0))
            records.append(rec)
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------------------------- the runner
@register_method("ntide")
def run_ntide(model, train: Split, test: Split, config: Optional[NTIDEConfig] = None, *, folder=None,
              resume: bool = False, keep: str = "last", progress: bool = True, amp: bool = False,
              on_epoch_end: Optional[Callable[[str, int, dict], None]] = None) -> NTIDEResult:
    """Train every row (see the module docstring) on `train`, score them on `test` and return an NTIDEResult.

    model: the frozen teacher CLIP (HookedCLIP); its image tower already ran in `prepare_split` (train.clip,
    test.clip). folder: checkpoints go to folder/ROW/epoch_EEE.safetensors (None: none written); resume:
    continue each row from its last complete epoch. on_epoch_end(row, epoch, record) is called per epoch.
    """
    cfg = config or NTIDEConfig()
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(phase: str) -> None:
        timings[phase] = round(time.perf_counter() - start - sum(timings.values()), 2)

    for key in (cfg.target, cfg.group):
        for split_name, split in (("training", train), ("test", test)):
            if key not in split.labels:
                raise ValueError(f"the {split_name} split has no label {key!r}; it has {sorted(split.labels)}")
    task = check_task(train, test, cfg.target, cfg.group, cfg.undefined)
    device = _device_of(model)
    base_run = {"clip": model.fingerprint(), "n_train": len(train), "train": train.description,
                "target": cfg.target, "n_classes": task["n_classes"], "seed": cfg.seed,
                "label_smoothing": cfg.label_smoothing}
    kwargs = {"folder": folder, "resume": resume, "progress": progress, "keep": keep, "amp": amp,
              "on_epoch_end": on_epoch_end}
    rows: dict[str, Row] = {}
    teachers: dict[str, tuple] = {}  # name → (train f_neutral, run)
    lt0, ls0 = cfg.lambda_t[0], cfg.lambda_s[0]

    def teacher_row(name, init, lambda_t):
        teacher, history, run = _train_teacher(model, train, task, cfg, name=name, init=init, lambda_t=lambda_t,
                                               base_run=base_run, **kwargs)
        logits, feats = _teacher_outputs(teacher, test.clip)
        rows[name] = Row(name, "teacher", logits, feats, history, run)
        teachers[name] = (_teacher_outputs(teacher, train.clip)[1], run, teacher.feature_dim)

    if cfg.ablations:
        rows["clip_probe"] = _probe_row(train, test, task, cfg)
        teacher_row("clip_text", "person", 0.0)
        teacher_row("clip_text_inversion_random", "random", lt0)
    teacher_row("clip_text_inversion", "person", lt0)
    for lt in cfg.lambda_t[1:]:
        teacher_row(f"clip_text_inversion_lt{_number(lt)}", "person", lt)
    lap("teachers")

    feature_dim = teachers["clip_text_inversion"][2]

    def student_row(name, teacher_name, lambda_s):
        targets, trun = (None, None) if teacher_name is None else teachers[teacher_name][:2]
        student, history, run = _train_student(train, task, cfg, name=name, targets=targets, lambda_s=lambda_s,
                                               teacher_run=trun, feature_dim=feature_dim, base_run=base_run,
                                               device=device, **kwargs)
        logits, feats = _student_outputs(student, test.images)
        rows[name] = Row(name, "student", logits, feats, history, run)

    student_row(BASELINE, None, 0.0)
    if cfg.ablations:
        student_row("ntide_no_inversion", "clip_text", ls0)
    student_row("ntide", "clip_text_inversion", ls0)
    for lt in cfg.lambda_t:
        for ls in cfg.lambda_s:
            if (lt, ls) != (lt0, ls0):
                teacher_name = "clip_text_inversion" if lt == lt0 else f"clip_text_inversion_lt{_number(lt)}"
                student_row(f"ntide_lt{_number(lt)}_ls{_number(ls)}", teacher_name, ls)
    lap("students")
    order = [n for n in (BASELINE, "clip_probe", "clip_text", "clip_text_inversion_random", "clip_text_inversion",
                         "ntide_no_inversion", "ntide") if n in rows] + \
        [n for n in rows if n not in (BASELINE, "clip_probe", "clip_text", "clip_text_inversion_random",
                                      "clip_text_inversion", "ntide_no_inversion", "ntide")]
    rows = {n: rows[n] for n in order}
    labels = {cfg.target: test.labels[cfg.target], cfg.group: test.labels[cfg.group]}
    table = evaluate_rows(rows, labels, task, cfg, progress=progress)
    lap("evaluate")
    return NTIDEResult(rows, table, task, labels, timings, cfg)
