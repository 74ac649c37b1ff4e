"""Every hook point is live, caching is side-effect free, and the fast path is taken when it can be."""
import pytest
import torch

from tests.models.archs import TEXTS, images_for
from tests.tolerance import assert_fp32_close


def _perturb(t, hook):
    # Random per-coordinate noise: a rescale or constant shift would be undone by the next LayerNorm.
    g = torch.Generator().manual_seed(0)
    return t + 0.3 * torch.randn(t.shape, generator=g)


def test_every_hook_changes_the_output(tiny):
    _, model = tiny
    x, tokens = images_for(model, n=2), model.tokenize(TEXTS[:2])
    with torch.no_grad():
        clean_img, clean_txt = model.encode_image(x), model.encode_text(tokens)
        dead = []
        for name in model.hook_dict:
            text = name.startswith("text.")
            out = model.run_with_hooks(text=tokens, fwd_hooks=[(name, _perturb)]) if text else \
                model.run_with_hooks(x, fwd_hooks=[(name, _perturb)])
            if torch.allclose(out, clean_txt if text else clean_img, atol=1e-6):
                dead.append(name)
    assert not dead, f"hooks whose edit does not change the output: {dead}"
    assert len(model.hook_dict) > 100


def test_hook_names_follow_the_design(tiny):
    _, model = tiny
    names = set(model.hook_dict)
    expected = {"hook_patch_embed", "hook_embed", "hook_image_embed", "ln_post.hook_scale", "ln_post.hook_normalized",
                "text.hook_embed", "text.hook_text_embed"}
    for l in range(3):
        expected |= {f"blocks.{l}.{h}" for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                                  "hook_mlp_out", "ln1.hook_scale", "ln1.hook_normalized",
                                                  "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post")}
        expected |= {f"blocks.{l}.attn.hook_{h}" for h in ("q", "k", "v", "z", "attn_scores", "pattern", "result", "cls_result")}
    assert expected <= names, sorted(expected - names)
    # names are the same whether a tower is run alone or inside HookedCLIP
    assert set(model.visual.hook_dict) | set(model.text.hook_dict) == names
    _, cache = model.text.run_with_cache(model.tokenize(TEXTS[:1]), names_filter="text.hook_embed")
    assert list(cache) == ["text.hook_embed"]


def test_cache_shapes(tiny):
    _, model = tiny
    x = images_for(model, n=2)
    c = model.visual.cfg
    _, cache = model.run_with_cache(x)
    pos = 1 + (c.image_size[0] // c.patch_size[0]) ** 2
    assert cache["hook_patch_embed"].shape == (2, pos - 1, c.d_model)
    assert cache["blocks.1.attn.hook_q"].shape == (2, pos, c.n_heads, c.d_head)
    assert cache["blocks.1.attn.hook_pattern"].shape == (2, c.n_heads, pos, pos)
    assert cache["blocks.1.attn.hook_result"].shape == (2, pos, c.n_heads, c.d_model)
    assert cache["blocks.1.attn.hook_cls_result"].shape == (2, c.n_heads, c.d_model)
    assert cache["blocks.1.mlp.hook_post"].shape == (2, pos, c.d_mlp)
    assert cache["hook_image_embed"].shape == (2, c.d_embed)


def test_caching_does_not_change_the_output(tiny):
    _, model = tiny
    x = images_for(model)
    with torch.no_grad():
        clean = model.encode_image(x)
        everything, cache = model.run_with_cache(x)  # forces the explicit attention path: rounding only
        fast, _ = model.run_with_cache(x, names_filter=lambda n: n.endswith(("resid_post", "cls_result", "mlp_out")))
    assert (clean - everything).abs().max() < 1e-5
    assert torch.equal(cache["hook_image_embed"], everything)
    assert torch.equal(clean, fast)  # hooks that return their input unchanged leave the output bit-identical


def test_per_head_writes_are_consistent(tiny):
    """cls_result is the CLS row of result; heads + b_O sum to attn_out; both agree with pattern·v·W_O."""
    _, model = tiny
    x = images_for(model)
    _, cache = model.run_with_cache(x)
    attn = model.visual.blocks[1].attn
    result, cls = cache["blocks.1.attn.hook_result"], cache["blocks.1.attn.hook_cls_result"]
    assert_fp32_close(result[:, 0], cls)
    assert_fp32_close(result.sum(2) + attn.b_O, cache["blocks.1.hook_attn_out"])
    manual = torch.einsum("bhk,bkhd,hde->bhe", cache["blocks.1.attn.hook_pattern"][:, :, 0],
                          cache["blocks.1.attn.hook_v"], attn.W_O)
    assert_fp32_close(manual, cls)


def test_fused_attention_is_used_without_attention_hooks(tiny, monkeypatch):
    _, model = tiny
    from workbench.models.components import Attention

    def boom(*a, **k):
        raise AssertionError("explicit attention path taken")

    monkeypatch.setattr(Attention, "_explicit_attention", boom)
    x = images_for(model)
    model.encode_image(x)
    model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_cls_result", "hook_resid_post", "hook_result")))
    with pytest.raises(AssertionError, match="explicit"):
        model.run_with_cache(x, names_filter="blocks.0.attn.hook_z")


def test_zeroing_a_head_at_cls_removes_exactly_its_write(tiny):
    _, model = tiny
    x = images_for(model)
    L = model.visual.cfg.n_layers - 1
    _, clean = model.run_with_cache(x, names_filter=[f"blocks.{L}.attn.hook_cls_result", f"blocks.{L}.hook_resid_mid"])

    def zero_head_2(t, hook):
        t = t.clone()
        t[:, 2] = 0
        return t

    with model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_cls_result", zero_head_2)]):
        _, edited = model.run_with_cache(x, names_filter=f"blocks.{L}.hook_resid_mid")
    delta = edited[f"blocks.{L}.hook_resid_mid"] - clean[f"blocks.{L}.hook_resid_mid"]
    assert_fp32_close(delta[:, 0], -clean[f"blocks.{L}.attn.hook_cls_result"][:, 2])
    assert delta[:, 1:].abs().max() == 0  # only the CLS position is touched


def test_text_cls_result_is_the_pooled_token(tiny):
    _, model = tiny
    tokens = model.tokenize(TEXTS)
    _, cache = model.run_with_cache(text=tokens, names_filter=lambda n: n.startswith("text.blocks.0.attn.hook_"))
    eot = tokens.argmax(-1)
    rows = torch.arange(len(TEXTS))
    assert_fp32_close(cache["text.blocks.0.attn.hook_result"][rows, eot], cache["text.blocks.0.attn.hook_cls_result"])


def test_bad_inputs_give_clear_errors(tiny):
    _, model = tiny
    with pytest.raises(ValueError, match=r"expected preprocessed images of shape \[batch, 3, 32, 32\]"):
        model.encode_image(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="context length 12"):
        model.encode_text(torch.zeros(2, 77, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model.encode_text(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="pass images, text, or both"):
        model()
