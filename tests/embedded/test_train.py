"""`train_toy` is reproducible and writes a compact checkpoint that `load_clip` reads."""
import torch
from safetensors.torch import load_file

from workbench.embedded import TrainConfig, train_toy
from workbench.models import load_clip

TINY = TrainConfig(steps=2, batch_size=16, n_train=64, warmup=1, threads=1)


def test_training_is_seeded_and_the_checkpoint_is_compact(tmp_path):
    a = train_toy(TINY, out_dir=tmp_path / "a", progress=False, measure=False)
    b = train_toy(TINY, out_dir=tmp_path / "b", progress=False, measure=False)
    sa, sb = load_file(a["checkpoint"]), load_file(b["checkpoint"])
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = sa["token_embedding.weight.__ids"]
    assert 0 < len(ids) == a["tokens_kept"] < 1000  # only tokens seen in training are stored
    assert sa["visual.proj"].dtype == torch.float16


def test_trained_checkpoint_loads_and_differs_from_initialisation(tmp_path):
    from workbench.embedded.train import build_untrained

    result = train_toy(TINY, out_dir=tmp_path, progress=False, measure=False)
    model = load_clip("synthsocial", checkpoint=result["checkpoint"])
    init, _, _ = build_untrained(TINY.seed)
    trained_proj = model.visual.proj.detach()
    assert not torch.allclose(trained_proj, init.visual.proj.detach().half().float())
