import contextlib

import pytest
import torch
from torch.utils.data import Dataset

from tests.models.archs import build_pair


@pytest.fixture
def tiny():
    """The random-weight 'wb-tiny' HookedCLIP (32×32 images, 3 layers, 4 heads, d_model 64, d_embed 32)."""
    return build_pair("wb-tiny")[1]


class RandomImages(Dataset):
    """n random 32×32 images with labels gender = i % 2 and group = i % 3.

    Item i is a pure function of (seed, i), so two instances with the same seed hold the same data;
    `fail_at=k` raises on item k (a simulated crash in the middle of an extraction).
    """

    label_names = {"gender": ("female", "male"), "group": ("a", "b", "c")}

    def __init__(self, n, seed=0, size=32, fail_at=None):
        self.n, self.seed, self.size, self.fail_at = n, seed, size, fail_at

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash at item {i}")
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        return torch.randn(3, self.size, self.size, generator=g), {"gender": i % 2, "group": i % 3}

    def images(self):
        return torch.stack([self[i][0] for i in range(self.n)])


@pytest.fixture
def random_images():
    return RandomImages


@pytest.fixture
def count_forwards():
    """count_forwards(model) → context manager yielding a list that collects the batch size of every
    image-tower forward pass (a plain torch pre-hook, independent of the hooks extraction uses)."""

    @contextlib.contextmanager
    def counting(model, tower="visual"):
        sizes = []
        handle = getattr(model, tower).register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
        try:
            yield sizes
        finally:
            handle.remove()

    return counting
