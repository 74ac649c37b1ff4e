"""Steering: directions added / projected out at a site, and SAE steering checked against a hand-written SAE pass."""
import pytest
import torch

from workbench.primitives import (EditError, EditTargetError, ablate_latents, add_direction, intervene, project_out,
                                  sae_blend_hook, sae_modulation_hook, sae_transform, steer)

SITE = "blocks.2.hook_resid_post"  # last block's output: the DebiasLens site


def by_hand(sae, h, edit_latents=lambda z: z):
    """decode(f(encode(h))) of a StandardSAE written out from its weights (ReLU encoder, b_dec subtracted)."""
    z = torch.relu((h - sae.b_dec) @ sae.W_enc + sae.b_enc)
    return edit_latents(z) @ sae.W_dec + sae.b_dec


def cached(model, images, names, ctx=None):
    with torch.no_grad():
        if ctx is None:
            return model.run_with_cache(images, names_filter=names)
        with ctx:
            return model.run_with_cache(images, names_filter=names)


def _direction(d, seed=0):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- directions
def test_add_direction_shifts_every_position_by_value_times_scale(model, images):
    v = _direction(64)
    _, clean = cached(model, images, ["blocks.1.hook_resid_post"])
    _, edited = cached(model, images, ["blocks.1.hook_resid_post"], intervene(model, add_direction(1, v, scale=2.5)))
    assert torch.equal(edited["blocks.1.hook_resid_post"], clean["blocks.1.hook_resid_post"] + 2.5 * v)


def test_add_direction_at_cls_leaves_the_patches_alone(model, images):
    v = _direction(64, 1)
    _, clean = cached(model, images, ["blocks.0.hook_resid_post"])
    _, edited = cached(model, images, ["blocks.0.hook_resid_post"], intervene(model, add_direction(0, v, position="cls")))
    r, r0 = edited["blocks.0.hook_resid_post"], clean["blocks.0.hook_resid_post"]
    assert torch.equal(r[:, 0], r0[:, 0] + v) and torch.equal(r[:, 1:], r0[:, 1:])


def test_add_direction_at_the_embedding_shifts_the_output_exactly(model, images):
    v = _direction(32, 2)
    with torch.no_grad():
        clean = model.encode_image(images)
        with intervene(model, add_direction(None, v, scale=-0.5, hook="hook_image_embed")):
            steered = model.encode_image(images)
    assert torch.equal(steered, clean + -0.5 * v)


def test_text_steering_at_the_text_embedding(model):
    v = _direction(32, 3)
    tokens = model.tokenize(["a photo of a nurse", "a doctor"])
    edit = add_direction(None, v, hook="text.hook_text_embed")
    assert edit.tower == "text"  # inferred from the hook name
    with torch.no_grad():
        clean = model.encode_text(tokens)
        with intervene(model, edit):
            steered = model.encode_text(tokens)
        image_after = model.encode_image(torch.zeros(1, 3, 32, 32))
    assert torch.equal(steered, clean + v)
    with torch.no_grad():
        assert torch.equal(model.encode_image(torch.zeros(1, 3, 32, 32)), image_after)


def test_project_out_leaves_no_component_along_the_direction(model, images):
    u = _direction(64, 4)
    u_hat = u / u.norm()
    _, clean = cached(model, images, [SITE])
    _, edited = cached(model, images, [SITE], intervene(model, project_out(2, u)))
    r, r0 = edited[SITE], clean[SITE]
    assert (r @ u_hat).abs().max() < 1e-5
    assert (r0 @ u_hat).abs().max() > 0.1  # there was something to remove
    assert torch.allclose(r, r0 - (r0 @ u_hat)[..., None] * u_hat, atol=1e-6)  # the orthogonal part is kept


def test_project_out_at_the_output_makes_embeddings_orthogonal(model, images):
    u = _direction(32, 5)
    with torch.no_grad(), intervene(model, project_out(None, u, hook="hook_image_embed")):
        emb = model.encode_image(images)
    assert (emb @ (u / u.norm())).abs().max() < 1e-5


def test_direction_composes_with_head_edits_on_other_hooks(model, images):
    from workbench.primitives import ablate_heads

    v = _direction(32, 6)
    with torch.no_grad():
        with intervene(model, ablate_heads([(2, 1)])):
            ablated = model.encode_image(images)
        with intervene(model, ablate_heads([(2, 1)]) + add_direction(None, v, hook="hook_image_embed")):
            both = model.encode_image(images)
    assert torch.equal(both, ablated + v)


# ---------------------------------------------------------------------------------------------- SAE
def test_sae_transform_is_the_blend_of_reconstruction_and_input(sae):
    h = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for alpha in (1.0, 0.6, 0.0):
            out = sae_transform(sae, lambda z: z, alpha=alpha)(h)
            assert torch.allclose(out, alpha * by_hand(sae, h) + (1 - alpha) * h, atol=1e-5)
        assert torch.equal(sae_transform(sae, lambda z: z, alpha=0.0)(h), h)


def test_sae_blend_hook_is_debiaslens(model, images, sae):
    """h' = α·decode(z with z[latents] = γ) + (1 − α)·h at every position of the site."""
    latents = [3, 50, 127]
    _, clean = cached(model, images, [SITE])
    _, edited = cached(model, images, [SITE], steer(model, SITE, sae_blend_hook(sae, latents, gamma=0.0, alpha=0.6)))
    h = clean[SITE]

    def set_gamma(z):
        z = z.clone()
        z[..., latents] = 0.0
        return z

    with torch.no_grad():
        expected = 0.6 * by_hand(sae, h, set_gamma) + 0.4 * h
    assert torch.allclose(edited[SITE], expected, atol=1e-5)


def test_sae_blend_hook_at_cls_only_touches_position_0(model, images, sae):
    _, clean = cached(model, images, [SITE])
    _, edited = cached(model, images, [SITE], steer(model, SITE, sae_blend_hook(sae, 7, gamma=1.0, alpha=1.0, position="cls")))

    def set_one(z):
        z = z.clone()
        z[..., 7] = 1.0
        return z

    with torch.no_grad():
        expected = by_hand(sae, clean[SITE][:, 0], set_one)
    assert torch.allclose(edited[SITE][:, 0], expected, atol=1e-5)
    assert torch.equal(edited[SITE][:, 1:], clean[SITE][:, 1:])


def test_sae_modulation_hook_is_sem_without_error_term(model, sae):
    """SEM (docs/methods.md): t' = decode(M ⊙ z + (1 − M) ⊙ m) replaces the text embedding."""
    from tests.primitives.conftest import random_sae

    text_sae = random_sae(32, 96, seed=1)  # on the text embedding (d_embed = 32)
    M = torch.rand(96, generator=torch.Generator().manual_seed(1))
    m = torch.rand(96, generator=torch.Generator().manual_seed(2))
    modulate = lambda z: M * z + (1 - M) * m  # noqa: E731
    tokens = model.tokenize(["a photo of a nurse", "a doctor", ""])
    with torch.no_grad():
        clean = model.encode_text(tokens)
        with steer(model, "text.hook_text_embed", sae_modulation_hook(text_sae, modulate)):
            t = model.encode_text(tokens)
        expected = by_hand(text_sae, clean, modulate)
    assert torch.allclose(t, expected, atol=1e-5)


@pytest.mark.parametrize("op, kwargs, edit", [
    ("zero", dict(), lambda z: z.index_fill(-1, torch.tensor([1, 2]), 0.0)),
    ("scale", dict(factor=3.0), lambda z: torch.cat([z[..., :1], 3.0 * z[..., 1:3], z[..., 3:]], -1)),
    ("set", dict(value=[0.5, -0.5]), lambda z: torch.cat([z[..., :1], torch.tensor([0.5, -0.5]).expand(*z.shape[:-1], 2), z[..., 3:]], -1)),
])
def test_sae_latent_edits_through_intervene(model, images, sae, op, kwargs, edit):
    _, clean = cached(model, images, [SITE])
    iv = ablate_latents([1, 2], op=op, layer=2, **kwargs)
    _, edited = cached(model, images, [SITE], intervene(model, iv, sae=sae, alpha=0.8))
    with torch.no_grad():
        expected = 0.8 * by_hand(sae, clean[SITE], edit) + 0.2 * clean[SITE]
    assert torch.allclose(edited[SITE], expected, atol=1e-5)


def test_spec_style_latent_edits_equal_the_blend_hook_bit_for_bit(model, images, sae):
    """One mechanism: sae_latent Edits and sae_blend_hook run the same SAE pass."""
    with torch.no_grad():
        with intervene(model, ablate_latents([5, 6], op="set", value=0.0, layer=2), sae=sae, alpha=0.6):
            via_edits = model.encode_image(images)
        with steer(model, SITE, sae_blend_hook(sae, [5, 6], gamma=0.0, alpha=0.6)):
            via_hook = model.encode_image(images)
    assert torch.equal(via_edits, via_hook)


def test_consecutive_latent_edits_share_one_sae_pass(model, sae):
    iv = ablate_latents([1], op="zero", layer=2) + ablate_latents([2], op="scale", factor=0.5, layer=2)
    (name, fn), = iv.hooks(model, sae=sae, alpha=0.7)
    assert name == SITE and len(fn.steps) == 1  # encode once, both latent edits, decode once
    h = torch.randn(2, 17, 64)

    def both(z):
        z = z.clone()
        z[..., 1] = 0.0
        z[..., 2] *= 0.5
        return z

    with torch.no_grad():
        assert torch.allclose(fn(h, None), 0.7 * by_hand(sae, h, both) + 0.3 * h, atol=1e-5)


def test_sae_errors_are_specific(model, images, sae):
    with pytest.raises(EditTargetError, match="needs an SAE"):
        with intervene(model, ablate_latents([1], layer=2)):
            pass
    with pytest.raises(EditTargetError, match="d_in=64 but 'hook_image_embed' has width 32"):
        with intervene(model, ablate_latents([1], hook="hook_image_embed"), sae=sae):
            pass
    with pytest.raises(EditTargetError, match="index \\[128\\] out of range"):
        with intervene(model, ablate_latents([128], layer=2), sae=sae):
            pass
    with pytest.raises(EditError, match="out of range; the SAE has d_sae=128"):
        sae_blend_hook(sae, [200])
    with pytest.raises(ValueError, match="d_in=64"):
        sae_blend_hook(sae, [1])(torch.zeros(2, 32), None)
    with pytest.raises(TypeError, match="expected a sae_lens SAE"):
        sae_transform(object(), lambda z: z)


def test_steer_removes_its_hook_and_rejects_unknown_sites(model, images, sae):
    with torch.no_grad():
        clean = model.encode_image(images)
        with pytest.raises(RuntimeError, match="inside"):
            with steer(model, SITE, sae_blend_hook(sae, [1])):
                assert not torch.equal(model.encode_image(images), clean)
                raise RuntimeError("inside")
        assert torch.equal(model.encode_image(images), clean)
    with pytest.raises(EditError, match="no hook point named 'blocks.2.hook_resid'"):
        with steer(model, "blocks.2.hook_resid", lambda t, hook: t):
            pass
