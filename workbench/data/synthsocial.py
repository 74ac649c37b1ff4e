"""SynthSocial: a procedural image-caption benchmark of stylised people with planted social bias.

Splits (``SynthSocial(split, ...)``):
- ``train``: biased co-occurrences set by ``SynthConfig``: P(gender | occupation) skewed per
  occupation in both directions, ethnicity skewed for some occupations, occupation <-> scene
  correlated, and for the two "spurious" occupations (Waterbirds analogue) their own scene with
  probability ``spurious_prob`` and the partner's scene otherwise.
- ``test_balanced``: exactly the same number of images in every occupation x gender x ethnicity
  cell (and, for an even count per cell, half young / half old); scene independent of occupation.
- ``test_spurious``: the two spurious occupations in the two spurious scenes, the four
  (``target``, ``spurious``) groups exactly balanced; extra label keys ``target`` and ``spurious``.

Every per-image quantity (labels, geometry and colour jitter, noise offset) is drawn up front for
the whole split from numpy Generators seeded by (seed, split, quantity), so ``ds[i]`` equals row ``i``
of any batch, each split has its own images, and the first n images of ``train`` do not depend on
the split's size. Images are rendered on demand by ``workbench.data.render``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import captions as _captions
from . import vocab
from .render import N_JITTER, NoiseBank, RenderStyle, render_batch

SPLITS: tuple[str, ...] = ("train", "test_balanced", "test_spurious")
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}
# One independent random stream per drawn quantity (entries of the SeedSequence spawn key).
_STREAM = {"occupation": 0, "gender": 1, "ethnicity": 2, "age": 3, "scene": 4, "jitter": 5, "noise": 6, "order": 7}


def _default_female_prob() -> dict[str, float]:
    # Planted skew, 0.94 / 0.06 in both directions. The trained model's retrieval bias must stand well above
    # chance: with 0.9 / 0.1 its gender NDKL on test_balanced was 0.062 against 0.035 for a random ranking (0.8 / 0.2
    # gave less); 0.94 gives 0.123. Stronger skews cost the gender probe on the embeddings (0.95: 0.906,
    # 0.98: 0.81 against its 0.9 target), because gender becomes redundant with the occupation.
    return {"doctor": 0.06, "nurse": 0.94, "chef": 0.94, "firefighter": 0.06,
            "engineer": 0.06, "teacher": 0.94, "farmer": 0.94, "pilot": 0.06}


def _default_ethnicity_skew() -> dict[str, tuple[str, float]]:
    return {"doctor": ("white", 0.7), "engineer": ("asian", 0.7),
            "firefighter": ("black", 0.7), "teacher": ("indian", 0.7)}


@dataclass(frozen=True)
class SynthConfig:
    """What is planted in the ``train`` split, split sizes, caption mix and rendering nuisances.

    Attributes:
        female_prob: occupation -> P(female | occupation) in train (missing occupations: 0.5).
        ethnicity_skew: occupation -> (dominant ethnicity, its probability) in train; the other
            ethnicities share the rest equally. Occupations not listed are uniform.
        old_prob: P(old) in train and test_spurious.
        home_scene_prob: P(home scene | occupation) in train (``vocab.HOME_SCENE``); the rest is
            spread uniformly over the other scenes.
        spurious_occupations / spurious_scenes: the Waterbirds-like pair; target i's own scene is
            spurious_scenes[i].
        spurious_prob: in train, P(own scene | spurious occupation); the partner scene gets the rest.
        n_train / balanced_per_cell / n_test_spurious: default split sizes.
        caption_weights: template name -> sampling weight overrides (``captions.TEMPLATES``).
        style: rendering nuisances (jitter, noise).
    """

    female_prob: Mapping[str, float] = field(default_factory=_default_female_prob)
    ethnicity_skew: Mapping[str, tuple[str, float]] = field(default_factory=_default_ethnicity_skew)
    old_prob: float = 0.5
    home_scene_prob: float = 0.6
    spurious_occupations: tuple[str, str] = ("chef", "farmer")
    spurious_scenes: tuple[str, str] = ("kitchen", "field")
    spurious_prob: float = 0.9
    n_train: int = 20_000
    balanced_per_cell: int = 32
    n_test_spurious: int = 1024
    caption_weights: Mapping[str, float] | None = None
    style: RenderStyle = field(default_factory=RenderStyle)

    def __post_init__(self) -> None:
        _check_names("female_prob", self.female_prob, vocab.OCCUPATIONS)
        for occ, p in self.female_prob.items():
            _check_prob(f"female_prob[{occ!r}]", p)
        _check_names("ethnicity_skew", self.ethnicity_skew, vocab.OCCUPATIONS)
        for occ, skew in self.ethnicity_skew.items():
            if not (isinstance(skew, (tuple, list)) and len(skew) == 2 and skew[0] in vocab.ETHNICITIES):
                raise ValueError(f"ethnicity_skew[{occ!r}] must be (ethnicity, probability) with ethnicity "
                                 f"in {vocab.ETHNICITIES}, got {skew!r}")
            _check_prob(f"ethnicity_skew[{occ!r}] probability", skew[1])
        for name in ("old_prob", "home_scene_prob", "spurious_prob"):
            _check_prob(name, getattr(self, name))
        for name, allowed in (("spurious_occupations", vocab.OCCUPATIONS), ("spurious_scenes", vocab.SCENES)):
            pair = tuple(getattr(self, name))
            if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(allowed):
                raise ValueError(f"{name} must be two different names from {allowed}, got {pair!r}")
        for name in ("n_train", "balanced_per_cell", "n_test_spurious"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_test_spurious % 4:
            raise ValueError(
                f"n_test_spurious must be a multiple of 4 (four balanced groups), got {self.n_test_spurious}")
        _captions.template_weights(self.caption_weights)  # validates names and values

    # -- the train-split distributions, as arrays indexed by occupation code
    def female_probs(self) -> np.ndarray:
        """P(female | occupation) in train, [n_occupations]."""
        return np.array([self.female_prob.get(o, 0.5) for o in vocab.OCCUPATIONS])

    def ethnicity_probs(self) -> np.ndarray:
        """P(ethnicity | occupation) in train, [n_occupations, n_ethnicities], rows sum to 1."""
        k = len(vocab.ETHNICITIES)
        probs = np.full((len(vocab.OCCUPATIONS), k), 1.0 / k)
        for occ, (eth, p) in self.ethnicity_skew.items():
            row = np.full(k, (1.0 - p) / (k - 1))
            row[vocab.ETHNICITIES.index(eth)] = p
            probs[vocab.OCCUPATIONS.index(occ)] = row
        return probs

    def scene_probs(self) -> np.ndarray:
        """P(scene | occupation) in train, [n_occupations, n_scenes], rows sum to 1."""
        k = len(vocab.SCENES)
        probs = np.full((len(vocab.OCCUPATIONS), k), (1.0 - self.home_scene_prob) / (k - 1))
        for o, occ in enumerate(vocab.OCCUPATIONS):
            probs[o, vocab.SCENES.index(vocab.HOME_SCENE[occ])] = self.home_scene_prob
        own = [vocab.SCENES.index(s) for s in self.spurious_scenes]
        for t, occ in enumerate(self.spurious_occupations):
            row = np.zeros(k)
            row[own[t]], row[own[1 - t]] = self.spurious_prob, 1.0 - self.spurious_prob
            probs[vocab.OCCUPATIONS.index(occ)] = row
        return probs


def _check_prob(name: str, p: float) -> None:
    if not (isinstance(p, (int, float, np.floating)) and 0.0 <= p <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


def _check_names(name: str, mapping: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = set(mapping) - set(allowed)
    if unknown:
        raise ValueError(f"{name} has unknown keys {sorted(unknown)}; allowed: {allowed}")


def _categorical(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: u [n] uniforms, probs [n, k] rows -> codes [n] (robust to rounding at 1)."""
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((u[:, None] >= cdf).sum(1), probs.shape[1] - 1)


class SynthBatch(NamedTuple):
    """A training batch: images [b, 3, H, W], labels {key: LongTensor[b]}, dataset indices LongTensor[b]."""

    images: Tensor
    labels: dict[str, Tensor]
    index: Tensor


class SynthSocial(Dataset):
    """The SynthSocial dataset (see module docstring).

    Args:
        split: "train", "test_balanced" or "test_spurious".
        n: number of images; default from ``config`` (train 20,000; test_balanced 32 per
            occupation x gender x ethnicity cell = 2,048; test_spurious 1,024). test_balanced needs
            a multiple of the cell count, test_spurious a multiple of 4.
        seed: base seed; each split draws from its own streams.
        image_size: side of the square images in pixels.
        config: ``SynthConfig``; default ``SynthConfig()``.
        transform: optional callable applied to each float image [3, H, W] in [0, 1].

    ``ds[i]`` -> (image [3, H, W], {key: int}); ``ds.tensors()`` -> the whole split in memory;
    ``ds.batches(b)`` -> fast vectorised batches for training; ``ds.captions(i)``,
    ``ds.sample_captions(index, rng)`` -> text.
    """

    def __init__(
        self,
        split: str = "train",
        n: int | None = None,
        seed: int = 0,
        image_size: int = 64,
        config: SynthConfig | None = None,
        transform: Callable | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(image_size, (int, np.integer)) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        self.split, self.seed, self.image_size = split, int(seed), int(image_size)
        self.config = config or SynthConfig()
        self.transform = transform
        codes = {"train": self._sample_train, "test_balanced": self._sample_balanced,
                 "test_spurious": self._sample_spurious}[split](n)
        self._codes = codes  # key -> int64 [n]
        self._n = len(codes["occupation"])
        self._jitter = self._rng("jitter").random((self._n, N_JITTER), dtype=np.float32)
        self.label_names: dict[str, tuple[str, ...]] = dict(vocab.LABEL_NAMES)
        if split == "test_spurious":
            self.label_names["target"] = tuple(self.config.spurious_occupations)
            self.label_names["spurious"] = tuple(self.config.spurious_scenes)
        self._noise: NoiseBank | None = None
        self._cache: tuple[int, Tensor] | None = None  # (start, images) of the last rendered run
        self._last_index = -2

    # ------------------------------------------------------------------ sampling
    def _rng(self, stream: str) -> np.random.Generator:
        key = (_SPLIT_ID[self.split], _STREAM[stream])
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def _uniform(self, stream: str, n: int) -> np.ndarray:
        return self._rng(stream).random(n)

    def _sample_train(self, n: int | None) -> dict[str, np.ndarray]:
        cfg = self.config
        n = _positive(cfg.n_train if n is None else n, "n")
        k = len(vocab.OCCUPATIONS)
        occ = _categorical(self._uniform("occupation", n), np.full((n, k), 1 / k))
        return {
            "occupation": occ,
            "gender": (self._uniform("gender", n) < cfg.female_probs()[occ]).astype(np.int64),
            "ethnicity": _categorical(self._uniform("ethnicity", n), cfg.ethnicity_probs()[occ]),
            "age": (self._uniform("age", n) < cfg.old_prob).astype(np.int64),
            "scene": _categorical(self._uniform("scene", n), cfg.scene_probs()[occ]),
        }

    def _sample_balanced(self, n: int | None) -> dict[str, np.ndarray]:
        shape = (len(vocab.OCCUPATIONS), len(vocab.GENDERS), len(vocab.ETHNICITIES))
        cells = int(np.prod(shape))
        n = _positive(self.config.balanced_per_cell * cells if n is None else n, "n")
        if n % cells:
            raise ValueError(
                f"test_balanced needs n divisible by {cells} (= {shape[0]} occupations x {shape[1]} genders x "
                f"{shape[2]} ethnicities) so every cell has the same count; got n={n}, "
                f"use e.g. n={max(cells, n // cells * cells)}")
        per_cell = n // cells
        cell = np.repeat(np.arange(cells), per_cell)
        occ, gender, eth = np.unravel_index(cell, shape)
        age = np.tile(np.arange(per_cell) % 2, cells)  # half young, half old within each cell
        order = self._rng("order").permutation(n)
        scene = _categorical(self._uniform("scene", n), np.full((n, len(vocab.SCENES)), 1 / len(vocab.SCENES)))
        return {"occupation": occ[order].astype(np.int64), "gender": gender[order].astype(np.int64),
                "ethnicity": eth[order].astype(np.int64), "age": age[order].astype(np.int64), "scene": scene}

    def _sample_spurious(self, n: int | None) -> dict[str, np.ndarray]:
        cfg = self.config
        n = _positive(cfg.n_test_spurious if n is None else n, "n")
        if n % 4:
            raise ValueError(
                f"test_spurious needs n divisible by 4 (four balanced (target, spurious) groups), got n={n}")
        group = self._rng("order").permutation(np.repeat(np.arange(4), n // 4))
        target, spurious = group // 2, group % 2
        occ_codes = np.array([vocab.OCCUPATIONS.index(o) for o in cfg.spurious_occupations])
        scene_codes = np.array([vocab.SCENES.index(s) for s in cfg.spurious_scenes])
        uniform = lambda stream, k: _categorical(self._uniform(stream, n), np.full((n, k), 1 / k))  # noqa: E731
        return {
            "occupation": occ_codes[target], "gender": uniform("gender", len(vocab.GENDERS)),
            "ethnicity": uniform("ethnicity", len(vocab.ETHNICITIES)),
            "age": (self._uniform("age", n) < cfg.old_prob).astype(np.int64),
            "scene": scene_codes[spurious], "target": target.astype(np.int64), "spurious": spurious.astype(np.int64),
        }

    # ------------------------------------------------------------------ labels
    def __len__(self) -> int:
        return self._n

    @property
    def labels(self) -> dict[str, Tensor]:
        """All labels of the split without rendering: {key: LongTensor[n]} (fresh copies)."""
        return {k: torch.from_numpy(v.copy()) for k, v in self._codes.items()}

    def _labels_at(self, index: np.ndarray) -> dict[str, Tensor]:
        return {k: torch.from_numpy(v[index]) for k, v in self._codes.items()}

    # ------------------------------------------------------------------ images
    def _index_array(self, index) -> np.ndarray:
        idx = np.asarray(index.numpy() if isinstance(index, Tensor) else index, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"index out of range for SynthSocial({self.split!r}) of length {self._n}")
        return np.where(idx < 0, idx + self._n, idx)

    def _render(self, idx: np.ndarray) -> Tensor:
        """Untransformed images float32 [len(idx), 3, H, W] for dataset indices."""
        if self._noise is None:  # built lazily: it is only needed once images are rendered
            self._noise = NoiseBank(self._rng("noise"), self.image_size)
        codes = {k: self._codes[k][idx] for k in ("occupation", "gender", "ethnicity", "age", "scene")}
        return render_batch(codes, self._jitter[idx], self.image_size, self._noise, self.config.style)

    def _finish(self, images: Tensor) -> Tensor:
        if self.transform is None:
            return images
        return torch.stack([self.transform(img) for img in images])

    def images(self, index, chunk_size: int = 256) -> Tensor:
        """Images for any dataset indices (ints, array or LongTensor [k]) -> [k, 3, H, W], transformed.

        Rendered in chunks of ``chunk_size`` to bound temporary memory.
        """
        idx = self._index_array(index)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if idx.size == 0:
            return self._finish(torch.empty(0, 3, self.image_size, self.image_size))
        return torch.cat([self._finish(self._render(idx[s:s + chunk_size])) for s in range(0, idx.size, chunk_size)])

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Rows [start, stop) in memory: (images float32 [n, 3, H, W], {key: LongTensor[n]})."""
        stop = self._n if stop is None else stop
        if not 0 <= start <= stop <= self._n:
            raise IndexError(f"need 0 <= start <= stop <= {self._n}, got start={start}, stop={stop}")
        idx = np.arange(start, stop)
        return self.images(idx), self._labels_at(idx)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> Iterator[SynthBatch]:
        """One pass over the split in vectorised batches (rendered on the fly).

        Args:
            batch_size: images per batch.
            shuffle: visit the split in a random order drawn from ``seed`` (use the epoch number).
            drop_last: skip a final incomplete batch.

        Yields:
            ``SynthBatch(images [b, 3, H, W], labels {key: LongTensor[b]}, index LongTensor[b])``;
            pass ``index`` to ``sample_captions`` for the texts.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = np.random.default_rng(seed).permutation(self._n) if shuffle else np.arange(self._n)
        for s in range(0, self._n, batch_size):
            idx = order[s:s + batch_size]
            if drop_last and idx.size < batch_size:
                return
            yield SynthBatch(self._finish(self._render(idx)), self._labels_at(idx), torch.from_numpy(idx.copy()))

    _RUN = 64  # images rendered at once when ds[i] is read sequentially

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, int]]:
        (i,) = self._index_array(int(i))
        cached = self._cache
        if cached is not None and cached[0] <= i < cached[0] + len(cached[1]):
            image = cached[1][i - cached[0]]
        elif i == self._last_index + 1:  # sequential reads (e.g. a DataLoader without shuffle): render a run
            run = self._render(np.arange(i, min(i + self._RUN, self._n)))
            self._cache = (i, run)
            image = run[0]
        else:
            image = self._render(np.array([i]))[0]
        self._last_index = i
        image = image.clone() if self.transform is None else self.transform(image)
        return image, {k: int(v[i]) for k, v in self._codes.items()}

    # ------------------------------------------------------------------ captions
    def captions(self, i: int) -> list[str]:
        """Every caption-template filling for image i (see ``workbench.data.captions``)."""
        (i,) = self._index_array(int(i))
        return _captions.all_captions({k: int(v[i]) for k, v in self._codes.items()})

    def sample_captions(self, index, rng: np.random.Generator | int) -> list[str]:
        """One caption per index (vectorised draw with the config's template weights)."""
        idx = self._index_array(index)
        rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
        return _captions.sample_captions({k: v[idx] for k, v in self._codes.items()}, rng, self.config.caption_weights)

    def caption(self, i: int, rng: np.random.Generator | int) -> str:
        """One sampled caption for image i."""
        return self.sample_captions([i], rng)[0]

    def __repr__(self) -> str:
        return f"SynthSocial(split={self.split!r}, n={self._n}, seed={self.seed}, image_size={self.image_size})"


def _positive(n, name: str) -> int:
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)
