"""The CLS decomposition sums to encode_image and its head terms match an independent computation."""
import pytest
import torch

from tests.models.archs import images_for
from tests.tolerance import assert_fp32_close


def test_decomposition_sums_to_encode_image(pair):
    oc, hooked = pair
    x = images_for(hooked)
    d = hooked.visual.decompose(x)
    c = hooked.visual.cfg
    assert d.components.shape == (3, 1 + c.n_layers * (c.n_heads + 2) + 1, c.d_embed)
    with torch.no_grad():
        assert_fp32_close(d.sum(), oc.encode_image(x))
    assert d.labels[0] == "embed" and d.labels[-1] == "ln_post.bias" and "L0.H1" in d.labels


def test_head_contributions_match_manual_projection(tiny):
    """Resid-space heads equal pattern[CLS]·v·W_O; embed space equals the linearised ln_post + proj of those."""
    _, model = tiny
    vit = model.visual
    x = images_for(model)
    resid = vit.head_contributions(x, space="resid")
    embed = vit.head_contributions(x, layers=[0, -1], space="embed")
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_pattern", "hook_v", "ln_post.hook_scale")))
    for l in range(vit.cfg.n_layers):
        manual = torch.einsum("bhk,bkhd,hde->bhe", cache[f"blocks.{l}.attn.hook_pattern"][:, :, 0],
                              cache[f"blocks.{l}.attn.hook_v"], vit.blocks[l].attn.W_O)
        assert_fp32_close(resid[:, l], manual)
    sigma = cache["ln_post.hook_scale"]  # [b, 1]
    for i, l in enumerate([0, vit.cfg.n_layers - 1]):
        c = resid[:, l]
        manual = ((c - c.mean(-1, keepdim=True)) / sigma[:, :, None] * vit.ln_post.w) @ vit.proj
        assert_fp32_close(embed[:, i], manual)


def test_decomposition_heads_agree_with_head_contributions(tiny):
    _, model = tiny
    x = images_for(model)
    assert_fp32_close(model.visual.decompose(x).heads(), model.visual.head_contributions(x))


def test_decomposition_table_and_lookup(tiny):
    _, model = tiny
    d = model.visual.decompose(images_for(model))
    table = d.norms()
    assert list(table.columns) == ["component", "mean_norm"] and len(table) == len(d.labels)
    torch.testing.assert_close(d["L0.H1"], d.heads()[:, 0, 1])
    with pytest.raises(KeyError, match="no component"):
        d["L9.H9"]


def test_decomposition_errors(tiny, tiny_avg):
    _, model = tiny
    x = images_for(model)
    with pytest.raises(ValueError, match="space must be one of"):
        model.visual.head_contributions(x, space="joint")
    with pytest.raises(ValueError, match="out of range"):
        model.visual.head_contributions(x, layers=[7])
    _, avg = tiny_avg
    with pytest.raises(NotImplementedError, match="token pooling"):
        avg.visual.decompose(images_for(avg))
