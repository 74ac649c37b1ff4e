"""load_clip, checkpoints without pickle, and clear errors for what is not supported."""
import fractions
import warnings

import pytest
import torch

from tests.models.archs import build_open_clip, images_for
from workbench.models import HookedCLIP, UnsupportedModelError, load_clip
from workbench.models.storage import expand_compact, save_compact


def test_unknown_name_suggests_close_names_and_checkpoint():
    with pytest.raises(ValueError, match=r"unknown model name 'ViT-B-33'.*Did you mean 'ViT-B-32'.*checkpoint="):
        load_clip("ViT-B-33")


def test_unavailable_pretrained_tag_offline_says_how_to_use_a_checkpoint():
    with pytest.raises(RuntimeError, match=r"could not load pretrained weights 'wb-tiny'/'openai'.*checkpoint="):
        load_clip("wb-tiny", pretrained="openai")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    oc = build_open_clip("wb-tiny", seed=7)
    path = tmp_path / f"weights{suffix}"
    state = oc.state_dict()
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items() if k != "attn_mask"}, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = load_clip("wb-tiny", checkpoint=path)
    x = images_for(model)
    with torch.no_grad():
        assert (model.encode_image(x) - oc.encode_image(x)).abs().max() <= 1e-5
    assert model.pretrained == path.name


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": fractions.Fraction(1, 2)}}, path)  # an arbitrary pickled object
    with pytest.raises(ValueError, match="weights-only"):
        load_clip("wb-tiny", checkpoint=path)


def test_checkpoint_for_another_architecture_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    oc = build_open_clip("wb-tiny-avg")
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="does not match the architecture"):
        load_clip("wb-tiny", checkpoint=path)


def test_compact_storage_round_trip(tmp_path):
    emb = torch.zeros(10, 4)
    emb[[1, 7]] = torch.randn(2, 4)
    state = {"emb": emb, "w": torch.randn(3, 3)}
    path = save_compact(state, tmp_path / "c.safetensors", sparse_rows={"emb": [1, 7]}, dtype=torch.float32)
    from safetensors.torch import load_file

    raw = load_file(str(path))
    assert raw["emb.__rows"].shape == (2, 4)
    back = expand_compact(raw)
    assert torch.equal(back["emb"], emb) and torch.equal(back["w"], state["w"])


def test_resnet_towers_are_refused_with_the_tower_type():
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rn = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(UnsupportedModelError, match=r"image tower ModifiedResNet is not supported\. Supported: .*VisionTransformer"):
        HookedCLIP.from_open_clip(rn)


def test_attentional_pooler_is_refused():
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coca = open_clip.create_model("coca_ViT-B-32", pretrained=None)
    with pytest.raises(UnsupportedModelError, match="attentional pooler"):
        HookedCLIP.from_open_clip(coca)


def test_dtype_and_fingerprint():
    oc = build_open_clip("wb-tiny")
    model = HookedCLIP.from_open_clip(oc)
    fp = model.fingerprint()
    assert len(fp) == 64 and fp == HookedCLIP.from_open_clip(oc).fingerprint()
    x = images_for(model)
    ref = model.encode_image(x)
    bf16 = model.to(torch.bfloat16)
    assert bf16.fingerprint() != fp  # different bytes, different fingerprint
    model = HookedCLIP.from_open_clip(oc)
    with torch.no_grad():
        model.visual.blocks[0].attn.out_proj_bias.add_(1e-3)  # an in-place edit invalidates the cached value
    assert model.fingerprint() != fp
    out = bf16.encode_image(x.to(torch.bfloat16)).float()
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_summary_names_the_towers(tiny):
    _, model = tiny
    text = repr(model)
    assert "HookedViT(layers=3" in text and "HookedTextTransformer(layers=2" in text and "hook points" in text
