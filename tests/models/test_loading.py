"""load_clip, checkpoints without pickle, and clear errors for what is not supported."""
import fractions
import random
import re
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


def test_garbage_safetensors_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(random.Random(0).randbytes(2000))  # 2 kB of noise
    with pytest.raises(ValueError, match=r"'.*weights\.safetensors' is not a valid safetensors file .*corrupted"):
        load_clip("wb-tiny", checkpoint=path)
    path.write_bytes(b"")  # an empty (e.g. interrupted) download
    with pytest.raises(ValueError, match=r"weights\.safetensors' is not a valid safetensors file"):
        load_clip("wb-tiny", checkpoint=path)


def test_checkpoint_format_is_read_from_the_bytes_not_the_suffix(tmp_path):
    from safetensors.torch import save_file

    oc = build_open_clip("wb-tiny", seed=3)
    state = {k: v.contiguous() for k, v in oc.state_dict().items() if k != "attn_mask"}
    as_bin = tmp_path / "open_clip_pytorch_model.bin"
    save_file(state, str(as_bin))  # safetensors content under a torch suffix loads
    x = images_for(load_clip("wb-tiny", checkpoint=as_bin))
    with torch.no_grad():
        torch.testing.assert_close(load_clip("wb-tiny", checkpoint=as_bin).encode_image(x), oc.encode_image(x),
                                   rtol=1e-5, atol=1e-5)
    misnamed = tmp_path / "weights.safetensors"
    torch.save(state, misnamed)  # a torch zip under the safetensors suffix: say so
    with pytest.raises(ValueError, match=r"not a valid safetensors file .*looks like a torch\.save file: rename it to \.pt"):
        load_clip("wb-tiny", checkpoint=misnamed)


def test_garbage_torch_checkpoint_is_not_blamed_on_pickle(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match=r"'.*weights\.pt' is not a readable torch checkpoint .*corrupted"):
        load_clip("wb-tiny", checkpoint=path)


def test_checkpoint_folder_says_which_file_to_pass(tmp_path):
    (tmp_path / "open_clip_model.safetensors").write_bytes(b"x")
    (tmp_path / "README.md").write_text("model card")
    with pytest.raises(ValueError, match=r"is a folder, not a weights file; pass the file itself, "
                       r"e\.g\. checkpoint='.*open_clip_model\.safetensors' \(weights files in it: "
                       r"open_clip_model\.safetensors\)"):
        load_clip("wb-tiny", checkpoint=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"'.*empty' is a folder.*holds no \.safetensors/\.pt/\.pth/\.bin file"):
        load_clip("wb-tiny", checkpoint=str(empty))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.safetensors"):
        load_clip("wb-tiny", checkpoint=tmp_path / "missing.safetensors")


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64, "int8", "half-ish"])
def test_non_float_dtype_lists_the_accepted_ones(dtype):
    with pytest.raises(ValueError, match=r"dtype.*int8|dtype.*bool|dtype.*complex64|dtype 'half-ish'") as err:
        load_clip("synthsocial", dtype=dtype)
    assert "torch.float32 (default), torch.float16, torch.bfloat16 or torch.float64" in str(err.value)
    assert "'fp16', 'bf16'" in str(err.value)


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), (torch.float64, torch.float64)])
def test_float_dtypes_are_applied(dtype, expected):
    model = load_clip("synthsocial", dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


@pytest.mark.parametrize("name", [None, 3, "", ["synthsocial"]])
def test_missing_model_name_lists_the_models(name):
    with pytest.raises(ValueError, match=rf"load_clip needs a model name \(a string\), got {re.escape(repr(name))}\. "
                       r"Embedded models \(run offline\): 'synthsocial'; workbench\.models\.list_models\(\)"):
        load_clip(name)


def test_model_name_given_as_a_path_points_to_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"looks like a path: pass the architecture's name and checkpoint="):
        load_clip(name=tmp_path / "weights.safetensors")


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
