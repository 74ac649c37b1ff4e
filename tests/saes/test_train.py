"""train_sae: sae_lens's trainer fed from the activation store; presets, resuming, seeding, errors."""
import pytest
import torch

from workbench import load_clip
from workbench.activations import extract, extract_text
from workbench.data import SynthSocial
from workbench.saes import get_preset, matryoshka_widths, train_sae
from workbench.saes.batches import ActivationBatches
from workbench.saes.checkpoint import CHECKPOINT_FILE, CheckpointMismatch

RESID = "blocks.5.hook_resid_post"
SMALL = dict(expansion=2, steps=12, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def store(model):
    return extract(model, SynthSocial("train", n=96), [RESID, "hook_image_embed"], position="all", progress=False)


def _state(sae):
    return {k: v.clone() for k, v in sae.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Kill(Exception):
    pass


def _kill_at(step):
    def callback(info):
        if info["step"] == step:
            raise Kill
    return callback


def test_matryoshka_widths_are_cumulative_prefixes():
    assert matryoshka_widths(1024, (1 / 16, 1 / 8, 1 / 4, 9 / 16)) == [64, 192, 448, 1024]
    assert matryoshka_widths(100, (0.25, 0.25)) == [25, 50, 100]  # the last prefix is always d_sae
    with pytest.raises(ValueError, match="sum to at most 1"):
        matryoshka_widths(64, (0.5, 0.75))


def test_debiaslens_preset_settings(model, store):
    sae = train_sae(model, store, RESID, preset="debiaslens", position="all", steps=3, batch_size=64, progress=False)
    details = sae.cfg.metadata.training_architecture_details
    assert sae.cfg.metadata.training_architecture == "matryoshka_batchtopk"
    assert type(sae).__name__ == "JumpReLUSAE"  # sae_lens's inference form of (Matryoshka) BatchTopK
    assert sae.cfg.d_sae == 8 * 128 and details["k"] == 20 and details["aux_loss_coefficient"] == 0.03
    assert details["matryoshka_widths"] == [64, 192, 448, 1024]
    assert sae.cfg.metadata.workbench_training["lr"] == pytest.approx(2e-4 / (1024 / 2**14) ** 0.5)
    assert sae.cfg.metadata.hook_name == RESID and sae.cfg.metadata.workbench_tower == "image"
    assert sae.cfg.metadata.workbench_model_fingerprint == model.fingerprint()
    assert sae.cfg.metadata.training_tokens == 3 * 64


def test_sem_preset_is_topk_half_width_x32():
    p = get_preset("sem")
    assert (p.architecture, p.expansion, p.resolve_k(128), p.resolve_k(512)) == ("topk", 32, 64, 256)


@pytest.mark.parametrize("architecture", ["standard", "matryoshka_batchtopk"])
def test_killed_run_resumes_to_the_uninterrupted_result(model, store, tmp_path, architecture):
    args = dict(SMALL, k=None if architecture == "standard" else 8, checkpoint_every=4, dead_feature_window=2)
    whole = _state(train_sae(model, store, RESID, architecture, position="all", **args))
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Kill):
        train_sae(model, store, RESID, architecture, position="all", checkpoint_dir=ckpt, callback=_kill_at(7), **args)
    assert (ckpt / CHECKPOINT_FILE).exists()
    seen = []
    resumed = train_sae(model, store, RESID, architecture, position="all", checkpoint_dir=ckpt,
                        callback=lambda info: seen.append(info["step"]), **args)
    assert seen == list(range(5, 13))  # continued after the step-4 checkpoint
    _assert_same(_state(resumed), whole)
    # a finished run returns at once, with the same SAE
    seen.clear()
    again = train_sae(model, store, RESID, architecture, position="all", checkpoint_dir=ckpt,
                      callback=lambda info: seen.append(info["step"]), **args)
    assert seen == []
    _assert_same(_state(again), whole)


def test_checkpoint_of_another_run_is_refused(model, store, tmp_path):
    train_sae(model, store, RESID, "topk", k=8, position="all", checkpoint_dir=tmp_path, **SMALL)
    with pytest.raises(CheckpointMismatch, match="different lr"):
        train_sae(model, store, RESID, "topk", k=8, position="all", checkpoint_dir=tmp_path, lr=1e-3, **SMALL)
    # resume=False starts over and overwrites it
    sae = train_sae(model, store, RESID, "topk", k=8, position="all", checkpoint_dir=tmp_path, lr=1e-3,
                    resume=False, **SMALL)
    assert sae.cfg.metadata.workbench_training["lr"] == 1e-3


def test_seeded_and_reproducible(model, store):
    a = _state(train_sae(model, store, RESID, "batchtopk", k=8, position="all", seed=1, **SMALL))
    b = _state(train_sae(model, store, RESID, "batchtopk", k=8, position="all", seed=1, **SMALL))
    c = _state(train_sae(model, store, RESID, "batchtopk", k=8, position="all", seed=2, **SMALL))
    _assert_same(a, b)
    assert not torch.equal(a["W_enc"], c["W_enc"])


def test_disk_store_streams_the_same_batches_as_memory(model, store, tmp_path):
    on_disk = extract(model, SynthSocial("train", n=96), [RESID, "hook_image_embed"], position="all",
                      progress=False, cache_dir=tmp_path / "acts")
    assert on_disk.root is not None
    a = _state(train_sae(model, on_disk, "hook_image_embed", "topk", k=4, **SMALL))
    b = _state(train_sae(model, store, "hook_image_embed", "topk", k=4, **SMALL))
    _assert_same(a, b)


def test_batches_flatten_tokens_and_cover_every_row_once_per_epoch(store):
    rows = store[RESID].reshape(-1, 128)  # 96 images × 17 tokens
    batches = ActivationBatches(store, RESID, batch_size=96 * 17 // 4, seed=0)
    epoch = torch.cat([next(batches) for _ in range(4)])
    assert epoch.shape == rows.shape and epoch.dtype == torch.float32
    torch.testing.assert_close(epoch[epoch[:, 0].argsort()], rows[rows[:, 0].argsort()], rtol=0, atol=0)
    skipped = ActivationBatches(store, RESID, batch_size=96 * 17 // 4, seed=0, skip=3)
    assert torch.equal(next(skipped), epoch[-(96 * 17 // 4):])


def test_pooled_position_trains_on_one_row_per_item(model):
    data = SynthSocial("train", n=64)
    sae = train_sae(model, data, RESID, "topk", k=4, position="cls", expansion=1, training_tokens=70, batch_size=32,
                    progress=False)
    assert sae.cfg.metadata.workbench_position == "pooled"
    assert sae.cfg.metadata.workbench_training["steps"] == 2 and sae.cfg.metadata.training_tokens == 64
    assert sae.cfg.metadata.workbench_training["n_items"] == 64


def test_text_sites_train_from_prompts(model):
    prompts = SynthSocial("train", n=64).sample_captions(range(64), 0)
    sae = train_sae(model, prompts, "text.hook_text_embed", "topk", k=4, expansion=1, steps=3, batch_size=16,
                    progress=False)
    assert sae.cfg.metadata.workbench_tower == "text" and sae.cfg.d_in == 128
    store = extract_text(model, prompts, "text.blocks.2.hook_resid_post", position="all", progress=False)
    assert ActivationBatches(store, "text.blocks.2.hook_resid_post", 16).n_rows == 64 * 16


@pytest.mark.parametrize("kwargs, match", [
    (dict(architecture="gated"), "unknown architecture 'gated'"),
    (dict(preset="debias"), "unknown SAE preset 'debias'.*did you mean 'debiaslens'"),
    (dict(steps=10, training_tokens=1000), "pass steps or training_tokens, not both"),
    (dict(d_sae=64, expansion=2), "pass d_sae or expansion, not both"),
    (dict(architecture="standard", k=4), "k applies to topk"),
    (dict(architecture="topk", k=2.5), "k must be an int for topk"),
    (dict(architecture="topk", k=10_000), "larger than d_sae"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(seed=-1), "seed must be a non-negative int"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(lr_warm_up_steps=12), r"lr_warm_up_steps must be an int in \[0, steps=12\)"),
    (dict(batch_size=4096), "fewer than one batch of 4096"),
])
def test_bad_settings_are_named(model, store, kwargs, match):
    args = dict(SMALL, architecture="topk", k=4)
    args.update(kwargs)
    if args["architecture"] == "standard" and "k" not in kwargs:
        args.pop("k")
    with pytest.raises((ValueError, TypeError), match=match):
        train_sae(model, store, "hook_image_embed", **args)


def test_bad_sites_and_data_are_named(model, store):
    with pytest.raises(ValueError, match="no hook point named 'blocks.5.hook_resid'.*did you mean"):
        train_sae(model, store, "blocks.5.hook_resid", **SMALL)
    with pytest.raises(KeyError, match="'blocks.4.hook_resid_post' is not in this activation store"):
        train_sae(model, store, "blocks.4.hook_resid_post", **SMALL)
    with pytest.raises(TypeError, match="text-tower site: pass a list of prompts"):
        train_sae(model, SynthSocial("train", n=8), "text.hook_text_embed", **SMALL)
    with pytest.raises(TypeError, match="image-tower site but the data is a list of prompts"):
        train_sae(model, ["a photo of a nurse"], "hook_image_embed", **SMALL)
    with pytest.raises(ValueError, match="holds position 'all' but position='pooled'"):
        train_sae(model, store, RESID, position="pooled", **SMALL)
    patterns = extract(model, SynthSocial("train", n=8), "blocks.0.attn.hook_pattern", position="all", progress=False)
    with pytest.raises(ValueError, match=r"holds items of shape \[8, 17, 17\]; an SAE reads vectors"):
        train_sae(model, patterns, "blocks.0.attn.hook_pattern", **SMALL)


def test_progress_bar_shows_loss_explained_variance_and_l0(model, store, capsys):
    train_sae(model, store, RESID, "topk", k=8, position="all", expansion=2, steps=4, batch_size=64, log_every=2)
    err = capsys.readouterr().err
    assert "train SAE" in err and "4/4" in err
    for key in ("loss=", "ev=", "l0=8.0", "dead="):
        assert key in err, key


def test_damaged_checkpoint_is_named_and_resume_false_replaces_it(model, store, tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / CHECKPOINT_FILE} cannot be read.*resume=False"):
        train_sae(model, store, RESID, "topk", k=8, position="all", checkpoint_dir=tmp_path, **SMALL)
    train_sae(model, store, RESID, "topk", k=8, position="all", checkpoint_dir=tmp_path, resume=False, **SMALL)
    from safetensors import safe_open

    with safe_open(str(tmp_path / CHECKPOINT_FILE), framework="pt") as f:  # a plain safetensors file, no pickle
        assert f.metadata()["schema"] == "workbench.sae_checkpoint/v1"
        moments = sorted(tuple(f.get_tensor(k).shape) for k in f.keys() if k.endswith("/exp_avg"))
        params = sorted(tuple(f.get_tensor(k).shape) for k in f.keys() if k.startswith("sae/"))
        assert moments == params == sorted([(128,), (128, 256), (256,), (256, 128)])  # b_dec, W_enc, b_enc, W_dec
