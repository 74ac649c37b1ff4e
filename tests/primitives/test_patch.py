"""Activation patching: effects checked against hand-computed head writes, exact restoration and batching."""
import math

import pytest
import torch

from tests.models.archs import images_for
from workbench.primitives.patch import (PatchResult, SitePatchResult, logit_metric, patch_heads, patch_sites,
                                        similarity_metric)


@pytest.fixture(scope="module")
def pair(model):
    return images_for(model, n=3, seed=0), images_for(model, n=3, seed=1)


def _embed_metric(model):
    """Cosine to a random unit direction: O(1) values, so float32 rounding stays far below the 1e-6 tolerance."""
    w = torch.randn(model.visual.cfg.d_embed, generator=torch.Generator().manual_seed(5))
    return logit_metric(w / w.norm(), normalize=True)


def _head_writes(model, images, layer):
    """Each head's write at every position, by hand from hook_z and W_O: [b, pos, head, d_model]."""
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=f"blocks.{layer}.attn.hook_z")
    return torch.einsum("bphe,hed->bphd", cache[f"blocks.{layer}.attn.hook_z"], model.visual.blocks[layer].attn.W_O)


def test_last_layer_cls_patch_moves_residual_by_the_write_difference(model, pair):
    """Patching head h at the last layer shifts the CLS residual (after attention, before the MLP, which reads
    the change) by exactly clean_write[h] − corrupted_write[h]; a linear metric turns that into a number."""
    clean, corrupted = pair
    L = model.visual.cfg.n_layers - 1
    w = torch.randn(model.visual.cfg.d_model, generator=torch.Generator().manual_seed(2))
    result = patch_heads(model, clean, corrupted, lambda r: r[:, 0] @ w, layers=[L],
                         metric_site=f"blocks.{L}.hook_resid_mid")
    diff = _head_writes(model, clean, L)[:, 0] - _head_writes(model, corrupted, L)[:, 0]  # [b, head, d_model]
    expected = (diff @ w).mean(0)
    assert torch.allclose(result.effects[0], expected, atol=1e-5)
    assert expected.abs().min() > 1e-3  # the check is not vacuous

    with torch.no_grad():
        _, c = model.run_with_cache(clean, names_filter=f"blocks.{L}.hook_resid_mid")
        _, k = model.run_with_cache(corrupted, names_filter=f"blocks.{L}.hook_resid_mid")
    clean_value = (c[f"blocks.{L}.hook_resid_mid"][:, 0] @ w).mean().item()
    corrupted_value = (k[f"blocks.{L}.hook_resid_mid"][:, 0] @ w).mean().item()
    assert result.clean == pytest.approx(clean_value, abs=1e-5)
    assert result.corrupted == pytest.approx(corrupted_value, abs=1e-5)
    assert torch.allclose(result.normalized[0], expected / (clean_value - corrupted_value), atol=1e-4)


def test_last_layer_all_position_patch_moves_every_token(model, pair):
    """position='all' replaces the head's write at every token: the residual moves by the write difference
    everywhere; reversing the direction flips the sign."""
    clean, corrupted = pair
    L = model.visual.cfg.n_layers - 1
    diff = _head_writes(model, clean, L) - _head_writes(model, corrupted, L)  # [b, pos, head, d_model]
    W = torch.randn(diff.shape[1], model.visual.cfg.d_model, generator=torch.Generator().manual_seed(3))
    metric = lambda r: (r * W).sum((1, 2))  # noqa: E731
    site = f"blocks.{L}.hook_resid_mid"
    forward = patch_heads(model, clean, corrupted, metric, layers=[L], position="all", metric_site=site)
    backward = patch_heads(model, clean, corrupted, metric, layers=[L], position="all", metric_site=site,
                           direction="corrupted_to_clean")
    expected = torch.einsum("bphd,pd->bh", diff, W).mean(0)
    assert torch.allclose(forward.effects[0], expected, atol=1e-4)
    assert torch.allclose(backward.effects[0], -expected, atol=1e-4)
    assert forward.clean == backward.clean and forward.corrupted == backward.corrupted


@pytest.mark.parametrize("position", ["cls", "all"])
def test_clean_into_clean_has_no_effect(model, pair, position):
    clean, _ = pair
    one = patch_heads(model, clean, clean, _embed_metric(model), position=position, batch_patches=1)
    assert torch.equal(one.effects, torch.zeros_like(one.effects))
    # A bigger repeated batch may pick other matmul kernels: zero up to float32 rounding.
    result = patch_heads(model, clean, clean, _embed_metric(model), position=position)
    assert torch.allclose(result.effects, torch.zeros_like(result.effects), atol=1e-6)
    assert result.clean == result.corrupted
    assert torch.isnan(result.normalized).all()  # 0 / 0 is reported as undefined, not inf


@pytest.mark.parametrize("position", ["cls", "all"])
@pytest.mark.parametrize("direction", ["clean_to_corrupted", "corrupted_to_clean"])
def test_batched_patches_equal_one_forward_per_patch(model, pair, position, direction):
    clean, corrupted = pair
    metric = _embed_metric(model)
    one = patch_heads(model, clean, corrupted, metric, position=position, direction=direction, batch_patches=1)
    for k in (5, None):  # 5 does not divide the 12 patches: the last chunk is smaller
        batched = patch_heads(model, clean, corrupted, metric, position=position, direction=direction,
                              batch_patches=k)
        assert torch.allclose(batched.effects, one.effects, atol=1e-6)
    assert one.effects.abs().max() > 1e-3


def test_subsets_of_layers_and_heads_match_the_full_sweep(model, pair):
    clean, corrupted = pair
    metric = _embed_metric(model)
    full = patch_heads(model, clean, corrupted, metric)
    part = patch_heads(model, clean, corrupted, metric, layers=[-1, 0], heads=[3, 1])
    assert part.layers == [2, 0] and part.heads == [3, 1]
    assert torch.allclose(part.effects, full.effects[[2, 0]][:, [3, 1]], atol=1e-6)


def test_resid_pre_at_layer_0_restores_the_clean_metric(model, pair):
    clean, corrupted = pair
    metric = _embed_metric(model)
    with torch.no_grad():
        clean_value = metric(model.encode_image(clean)).mean().item()
        corrupted_value = metric(model.encode_image(corrupted)).mean().item()
    sites = ["blocks.0.hook_resid_pre", "hook_image_embed"]
    result = patch_sites(model, clean, corrupted, metric, sites)
    assert result.clean == pytest.approx(clean_value, abs=1e-6)
    assert result.corrupted == pytest.approx(corrupted_value, abs=1e-6)
    assert torch.allclose(result.corrupted + result.effects, torch.tensor([clean_value] * 2), atol=1e-6)
    assert torch.allclose(result.normalized, torch.ones(2), atol=1e-4)
    noised = patch_sites(model, clean, corrupted, metric, sites, direction="corrupted_to_clean")
    assert torch.allclose(noised.clean + noised.effects, torch.tensor([corrupted_value] * 2), atol=1e-6)


def test_site_cls_position_patches_only_the_cls_token(model, pair):
    """Replacing only CLS at the last layer's resid_mid: the CLS readout becomes clean's (full restoration of a
    CLS-only metric), while a metric on a patch token sees nothing."""
    clean, corrupted = pair
    L = model.visual.cfg.n_layers - 1
    site = f"blocks.{L}.hook_resid_mid"
    w = torch.randn(model.visual.cfg.d_model, generator=torch.Generator().manual_seed(4))
    on_cls = patch_sites(model, clean, corrupted, lambda r: r[:, 0] @ w, [site], position="cls", metric_site=site)
    on_patch = patch_sites(model, clean, corrupted, lambda r: r[:, 1] @ w, [site], position="cls", metric_site=site)
    assert on_cls.effects[0].item() == pytest.approx(on_cls.clean - on_cls.corrupted, abs=1e-5)
    assert on_patch.effects[0].item() == 0.0
    assert abs(on_patch.clean - on_patch.corrupted) > 1e-3
    # Attention patterns [b, head, q, k]: "cls" is the CLS query row, so only the CLS residual moves.
    pattern = [f"blocks.{L}.attn.hook_pattern"]
    on_cls = patch_sites(model, clean, corrupted, lambda r: r[:, 0] @ w, pattern, position="cls", metric_site=site)
    on_patch = patch_sites(model, clean, corrupted, lambda r: r[:, 1] @ w, pattern, position="cls", metric_site=site)
    assert abs(on_cls.effects[0].item()) > 1e-3
    assert on_patch.effects[0].item() == pytest.approx(0.0, abs=1e-6)


def test_batched_sites_equal_one_forward_per_site(model, pair):
    clean, corrupted = pair
    metric = _embed_metric(model)
    sites = [f"blocks.{l}.{h}" for l in range(3) for h in ("hook_resid_pre", "hook_attn_out", "mlp.hook_post")]
    one = patch_sites(model, clean, corrupted, metric, sites, batch_patches=1)
    batched = patch_sites(model, clean, corrupted, metric, sites, batch_patches=4)
    assert torch.allclose(batched.effects, one.effects, atol=1e-6)


def test_patching_composes_with_hooks_the_user_added(model, pair):
    """Outer hooks (here: head 0 of layer 0 zero-ablated) stay on during patching and are not removed by it."""
    clean, corrupted = pair
    metric = _embed_metric(model)

    def zero_head(t, hook):
        t = t.clone()
        t[:, 0] = 0
        return t

    ablation = [("blocks.0.attn.hook_cls_result", zero_head)]
    with torch.no_grad():
        ablated_clean = metric(model.run_with_hooks(clean, fwd_hooks=ablation)).mean().item()
        with model.hooks(fwd_hooks=ablation):
            result = patch_heads(model, clean, corrupted, metric, layers=[1])
            still_ablated = metric(model.encode_image(clean)).mean().item()
    assert result.clean == pytest.approx(ablated_clean, abs=1e-6)
    assert still_ablated == pytest.approx(ablated_clean, abs=1e-6)
    with torch.no_grad():
        assert metric(model.encode_image(clean)).mean().item() != pytest.approx(ablated_clean, abs=1e-6)


# ---------------------------------------------------------------------------------------------- metrics
def test_similarity_metric_is_cosine_to_the_prompt(model, pair):
    clean, _ = pair
    with torch.no_grad():
        embed = model.encode_image(clean)
        text = model.encode_text(["a photo of a nurse"])[0]
        got = similarity_metric(model, "a photo of a nurse")(embed)
    expected = torch.stack([torch.dot(e, text) / (e.norm() * text.norm()) for e in embed])
    assert torch.allclose(got, expected, atol=1e-6)


def test_logit_metric_by_hand():
    x = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    assert torch.allclose(logit_metric(torch.tensor([1.0, 2.0]), 0.5)(x), torch.tensor([3.5, 6.5]))
    got = logit_metric(torch.tensor([1.0, 2.0]), 0.5, normalize=True)(x)
    assert torch.allclose(got, torch.tensor([3 / math.sqrt(2) + 0.5, 2.5]))
    with pytest.raises(ValueError, match="weight vector"):
        logit_metric(torch.ones(2, 2))
    with pytest.raises(ValueError, match="3 dims"):
        logit_metric(torch.ones(3))(x)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(model, pair):
    clean, corrupted = pair
    metric = _embed_metric(model)
    with pytest.raises(ValueError, match="equal batches"):
        patch_heads(model, clean, corrupted[:2], metric)
    with pytest.raises(ValueError, match=r"\[b, 3, H, W\]"):
        patch_heads(model, clean[0], corrupted[0], metric)
    with pytest.raises(ValueError, match="no image-tower hook point named 'blocks.7.hook_resid_pre'"):
        patch_sites(model, clean, corrupted, metric, ["blocks.7.hook_resid_pre"])
    with pytest.raises(ValueError, match="did you mean 'blocks.0.hook_resid_pre'"):
        patch_sites(model, clean, corrupted, metric, ["blocks.0.hook_resid_pree"])
    with pytest.raises(ValueError, match="text tower"):
        patch_sites(model, clean, corrupted, metric, ["text.blocks.0.hook_resid_pre"])
    with pytest.raises(ValueError, match="no CLS"):
        patch_sites(model, clean, corrupted, metric, ["hook_patch_embed"], position="cls")
    with pytest.raises(ValueError, match="non-empty list"):
        patch_sites(model, clean, corrupted, metric, "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match="out of range"):
        patch_heads(model, clean, corrupted, metric, layers=[3])
    with pytest.raises(ValueError, match="out of range"):
        patch_heads(model, clean, corrupted, metric, heads=[-5])
    with pytest.raises(ValueError, match=r"position: unknown position 'patch'; expected one of \['pooled', 'all'\]"):
        patch_heads(model, clean, corrupted, metric, position="patch")
    with pytest.raises(ValueError, match="direction"):
        patch_heads(model, clean, corrupted, metric, direction="both")
    with pytest.raises(ValueError, match="batch_patches"):
        patch_heads(model, clean, corrupted, metric, batch_patches=0)
    with pytest.raises(ValueError, match="one value per example"):
        patch_heads(model, clean, corrupted, lambda e: e)


# ---------------------------------------------------------------------------------------------- output
def test_tidy_tables_and_repr(model, pair):
    clean, corrupted = pair
    result = patch_heads(model, clean, corrupted, _embed_metric(model), layers=[1, 2])
    assert isinstance(result, PatchResult)
    df = result.to_dataframe()
    assert list(df.columns) == ["layer", "head", "effect", "normalized"] and len(df) == 2 * 4
    row = df[(df["layer"] == 2) & (df["head"] == 3)].iloc[0]
    assert row.effect == pytest.approx(result.effects[1, 3].item())
    assert row.normalized == pytest.approx(result.effects[1, 3].item() / (result.clean - result.corrupted), rel=1e-5)
    i = result.effects.abs().argmax().item()
    assert repr(result).split("top |effect|: ")[1].startswith(f"L{[1, 2][i // 4]}.H{i % 4} ")

    sites = patch_sites(model, clean, corrupted, _embed_metric(model), ["blocks.1.hook_resid_pre", "hook_embed"])
    assert isinstance(sites, SitePatchResult)
    assert sites.to_dataframe()["site"].tolist() == ["blocks.1.hook_resid_pre", "hook_embed"]
    assert sites.to_dataframe()["effect"].tolist() == pytest.approx(sites.effects.tolist())
    assert "SitePatchResult" in repr(sites)


def test_plot_is_a_heatmap_of_the_effects(model, pair):
    import plotly.graph_objects as go

    clean, corrupted = pair
    result = patch_heads(model, clean, corrupted, _embed_metric(model), layers=[0, 2], heads=[1, 2, 3])
    fig = result.plot()
    assert isinstance(fig, go.Figure) and isinstance(fig.data[0], go.Heatmap)
    assert torch.allclose(torch.tensor(fig.data[0].z), result.effects)
    assert list(fig.data[0].y) == ["L0", "L2"] and list(fig.data[0].x) == ["H1", "H2", "H3"]
    assert torch.allclose(torch.tensor(result.plot("normalized").data[0].z), result.normalized)
    with pytest.raises(ValueError, match="value"):
        result.plot("raw")

    sites = patch_sites(model, clean, corrupted, _embed_metric(model), ["blocks.1.hook_resid_pre", "hook_embed"])
    bar = sites.plot().data[0]
    assert isinstance(bar, go.Bar) and list(bar.x) == sites.sites
    assert torch.allclose(torch.tensor(bar.y), sites.effects)
