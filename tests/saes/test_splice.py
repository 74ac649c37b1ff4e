"""Splicing SAEs into the model: hook names, exactness with the error term, the reconstruction without it,
latent edits on the spliced hook points, specs that reproduce them, and the errors."""
import copy

import pytest
import torch

from tests.models.archs import build_pair, images_for
from tests.primitives.conftest import random_sae
from tests.tolerance import assert_fp32_close
from workbench.primitives import Edit, EditTargetError, InterventionSpec, SAEError, ablate_latents, apply, intervene
from workbench.saes import SAEMismatchError, SpliceError, save_sae

SITE = "blocks.2.hook_resid_post"
SAE_NAMES = ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output"]


@pytest.fixture(scope="module")
def model():
    m = copy.deepcopy(build_pair("wb-tiny")[1])
    yield m
    assert not m.spliced_saes()


@pytest.fixture(autouse=True)
def _clean(model):
    yield
    model.reset_hooks(including_permanent=True)
    if model.spliced_saes():
        model.remove_saes()


@pytest.fixture(scope="module")
def x(model):
    return images_for(model, n=3, seed=1)


@pytest.fixture
def sae():
    return random_sae(64, 128, seed=5)  # fresh per test: save_sae records its site in the SAE's metadata


def _recons(sae, h):
    return sae.decode(sae.encode(h))


@pytest.mark.parametrize("site, d_in", [(SITE, 64), ("hook_image_embed", 32), ("text.blocks.1.hook_resid_post", 48),
                                        ("text.hook_text_embed", 32)])
def test_sae_hook_points_appear_under_the_site_and_the_site_stays_a_hook(model, site, d_in):
    n_hooks, fingerprint, keys = len(model.hook_dict), model.fingerprint(), set(model.state_dict())
    assert model.add_sae(random_sae(d_in, 16), site=site) == site
    assert [n for n in model.hook_dict if n.startswith(site + ".")] == [f"{site}.{n}" for n in SAE_NAMES]
    assert site in model.hook_dict and len(model.hook_dict) == n_hooks + 6
    assert set(model.state_dict()) == keys and model.fingerprint() == fingerprint  # the SAE is not in the model
    assert model.hook_dict[f"{site}.hook_sae_acts_post"].name == f"{site}.hook_sae_acts_post"
    model.remove_saes()
    assert len(model.hook_dict) == n_hooks and not model.spliced_saes()


def test_error_term_keeps_the_model_exact(model, x, sae):
    plain = model.encode_image(x)
    with model.saes((sae, SITE), use_error_term=True):
        assert torch.equal(model.encode_image(x), plain)  # nothing hooked: the SAE is skipped
        out, cache = model.run_with_cache(x)  # every SAE hook cached: the SAE runs, output = recons + error
    assert_fp32_close(out, plain)
    h = cache[SITE]
    torch.testing.assert_close(cache[f"{SITE}.hook_sae_recons"], _recons(sae, h), rtol=0, atol=0)
    torch.testing.assert_close(cache[f"{SITE}.hook_sae_error"], h - _recons(sae, h), rtol=0, atol=0)
    assert cache[f"{SITE}.hook_sae_acts_post"].shape == (3, 17, 128)
    assert torch.equal(cache[f"{SITE}.hook_sae_input"], h)


def test_without_error_term_the_reconstruction_flows_on(model, x, sae):
    expected = model.run_with_hooks(x, fwd_hooks=[(SITE, lambda t, hook: _recons(sae, t))])
    with model.saes((sae, SITE)):
        out = model.encode_image(x)
    assert torch.equal(out, expected)
    assert (out - model.encode_image(x)).abs().max() > 0.1  # the reconstruction of a random SAE is far from h


@pytest.mark.parametrize("site, d_in", [("hook_image_embed", 32), ("text.hook_text_embed", 32)])
def test_embedding_sites_b_d(model, x, site, d_in):
    sae = random_sae(d_in, 40, seed=2)
    text = model.tokenize(["a photo of a nurse", "a doctor"])
    run = (lambda: model.encode_image(x)) if site == "hook_image_embed" else (lambda: model.encode_text(text))
    plain = run()
    with model.saes((sae, site)):
        assert torch.equal(run(), _recons(sae, plain))
    with model.saes((sae, site), use_error_term=True):
        _, cache = model.run_with_cache(x if site == "hook_image_embed" else None,
                                        text=None if site == "hook_image_embed" else text)
        assert cache[f"{site}.hook_sae_acts_post"].shape == (plain.shape[0], 40)


def test_hooks_on_the_site_run_before_the_sae(model, x, sae):
    with model.saes((sae, SITE)), model.hooks(fwd_hooks=[(SITE, lambda t, hook: 2 * t)]):
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith(SITE + "."))
    _, plain = model.run_with_cache(x, names_filter=SITE)
    torch.testing.assert_close(cache[f"{SITE}.hook_sae_input"], 2 * plain[SITE], rtol=0, atol=0)


def test_latent_edits_run_on_the_spliced_hook_points(model, x, sae):
    latents = [3, 7, 11]
    with model.saes((sae, SITE), use_error_term=True):
        _, clean = model.run_with_cache(x, names_filter=SITE)
        with intervene(model, ablate_latents(latents, layer=2)):  # no sae= needed: the splice owns the SAE
            _, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith(SITE + "."))
            edited = model.encode_image(x)
    h = clean[SITE]
    z = sae.encode(h)
    z_edit = z.clone()
    z_edit[..., latents] = 0
    assert torch.equal(cache[f"{SITE}.hook_sae_acts_post"], z_edit)
    expected = model.run_with_hooks(x, fwd_hooks=[(SITE, lambda t, hook: sae.decode(z_edit) + (t - sae.decode(z)))])
    assert_fp32_close(edited, expected)
    assert (edited - model.encode_image(x)).abs().max() > 1e-3


def test_blend_alpha_on_a_splice_is_debiaslens(model, x, sae):
    latents, alpha = [1, 2], 0.6
    with model.saes((sae, SITE)):
        with intervene(model, ablate_latents(latents, layer=2, op="set", value=0.5, position="pooled"), alpha=alpha):
            out = model.encode_image(x)

    def by_hand(t, hook):
        z = sae.encode(t)
        z[:, 0, latents] = 0.5
        r = sae.decode(z)
        r[:, 0] = alpha * r[:, 0] + (1 - alpha) * t[:, 0]
        return r

    assert_fp32_close(out, model.run_with_hooks(x, fwd_hooks=[(SITE, by_hand)]))


@pytest.mark.parametrize("use_error_term", [True, False])
@pytest.mark.parametrize("edit_kwargs", [
    dict(op="zero", index=[4, 9]),
    dict(op="set", index=5, value=1.5),
    dict(op="scale", index=[0, 1, 2], value=3.0),
    dict(op="modulate", value=torch.linspace(0, 1, 128), reference=0.25),
])
def test_spec_export_load_apply_reproduces_a_spliced_edit_exactly(model, x, sae, tmp_path, use_error_term, edit_kwargs):
    sae_dir = save_sae(sae, tmp_path / "sae", model=model, site=SITE)
    edit = Edit(target="sae_latent", layer=2, position="all", **edit_kwargs)
    alpha = 0.7 if edit_kwargs["op"] == "set" else 1.0
    with model.saes((sae, SITE), use_error_term=use_error_term):
        with intervene(model, edit, alpha=alpha):
            expected = model.encode_image(x)
        spec = InterventionSpec.from_edits(model, [edit], sae=sae_dir, alpha=alpha)
    assert spec.sae.use_error_term is use_error_term
    assert (expected - model.encode_image(x)).abs().max() > 1e-4  # the edit changes the output
    spec.save(tmp_path / "spec.json")
    loaded = InterventionSpec.load(tmp_path / "spec.json")
    assert loaded == spec
    with apply(model, loaded):  # splices the SAE from its path for the block
        assert SITE in model.spliced_saes()
        out = model.encode_image(x)
    assert not model.spliced_saes()
    assert torch.equal(out, expected)
    with pytest.raises(SAEError, match=r"ran on the SAE spliced at 'blocks.2.hook_resid_post'.*"
                                       r"use apply\(model, spec\)"):
        loaded.hooks(model)
    with model.saes((sae, SITE), use_error_term=not use_error_term), \
            pytest.raises(SAEError, match=f"has use_error_term={not use_error_term}, but the spec's edits ran with"):
        with apply(model, loaded):
            pass


def test_splice_errors_are_specific(model, x, sae):
    with pytest.raises(SpliceError, match="does not record its site"):
        model.add_sae(random_sae(64, 8))
    with pytest.raises(SpliceError, match=r"d_in=64, but 'hook_image_embed' has width 32"):
        model.add_sae(sae, site="hook_image_embed")
    with pytest.raises(SpliceError, match="not a stream hook"):
        model.add_sae(sae, site="blocks.0.attn.hook_pattern")
    with pytest.raises(SpliceError, match="no hook point named 'blocks.9.hook_resid_post'"):
        model.add_sae(sae, site="blocks.9.hook_resid_post")
    with pytest.raises(TypeError, match="expected a sae_lens SAE"):
        model.add_sae(torch.nn.Linear(64, 64), site=SITE)
    with pytest.raises(SpliceError, match=r"nothing is spliced at 'blocks.2.hook_resid_post'|no SAE is spliced"):
        model.remove_saes(SITE)
    model.add_sae(sae, site=SITE)
    with pytest.raises(SpliceError, match=r"already spliced at 'blocks.2.hook_resid_post'; remove it first"):
        model.add_sae(sae, site=SITE)
    with pytest.raises(SpliceError, match=r"cannot splice the SAE.*no hook point named "
                                          r"'blocks.2.hook_resid_post.hook_sae_input.x'"):
        model.add_sae(sae, site=SITE + ".hook_sae_input.x")
    model.remove_saes()
    with model.hooks(fwd_hooks=[(SITE, lambda t, hook: t)]):
        with pytest.raises(SpliceError, match="hooks are attached to 'blocks.2.hook_resid_post'; splice before"):
            model.add_sae(sae, site=SITE)


def test_recorded_site_and_fingerprint_are_checked_on_splice(model, tmp_path, sae):
    from workbench.saes import load_sae

    loaded = load_sae(save_sae(random_sae(64, 8), tmp_path / "s", model=model, site=SITE))
    assert model.add_sae(loaded) == SITE  # spliced at the site it records
    model.remove_saes()
    with pytest.raises(SAEMismatchError, match=r"trained at 'blocks.2.hook_resid_post', "
                                               r"not 'blocks.1.hook_resid_post'"):
        model.add_sae(loaded, site="blocks.1.hook_resid_post")
    loaded.cfg.metadata.workbench_model_fingerprint = "0" * 64
    with pytest.raises(SAEMismatchError, match="fingerprint 000000000000….*strict=False"):
        model.add_sae(loaded)


def test_context_manager_removes_the_saes_after_an_exception(model, sae):
    n = len(model.hook_dict)
    with pytest.raises(RuntimeError, match="boom"), model.saes((sae, SITE), (random_sae(32, 8), "hook_image_embed")):
        assert len(model.spliced_saes()) == 2
        raise RuntimeError("boom")
    assert not model.spliced_saes() and len(model.hook_dict) == n


def test_a_spliced_sae_on_another_device_or_of_another_width_fails_clearly(model, x, sae):
    model.add_sae(sae, site=SITE)
    model.hook_dict[SITE].spliced.__dict__["sae"] = random_sae(63, 8)  # swapped behind the splice's back
    with pytest.raises(SpliceError, match=r"d_in=63, but the activations have shape \[3, 17, 64\]"):
        model.encode_image(x)


def test_an_sae_passed_to_intervene_must_be_the_spliced_one(model, x, sae):
    edit = ablate_latents([1], layer=2)
    with model.saes((sae, SITE)):
        with intervene(model, edit, sae=sae):  # the same SAE: fine
            same = model.encode_image(x)
        with intervene(model, edit):
            assert torch.equal(model.encode_image(x), same)
        with pytest.raises(EditTargetError, match=r"another SAE is spliced at 'blocks.2.hook_resid_post' and "
                                                  r"the edits act on it; drop sae="):
            with intervene(model, edit, sae=random_sae(64, 128, seed=8)):
                pass


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_other_sae_lens_architectures_splice_exactly(model, x, arch):
    import sae_lens

    torch.manual_seed(0)
    if arch == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=64, d_sae=96, k=5))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=64, d_sae=96))
        with torch.no_grad():
            sae.threshold.fill_(0.05)
    plain = model.encode_image(x)
    with model.saes((sae, SITE), use_error_term=True):
        out, cache = model.run_with_cache(x, names_filter=lambda n: n.startswith(SITE))
        z = cache[f"{SITE}.hook_sae_acts_post"]
        latents = z.flatten(0, 1).amax(0).topk(3).indices.tolist()  # latents that fire somewhere
        with intervene(model, ablate_latents(latents, layer=2)):
            edited = model.encode_image(x)
    assert_fp32_close(out, plain)
    assert torch.equal(z, sae.encode(cache[SITE]))
    if arch == "topk":
        assert int((z > 0).sum(-1).max()) <= 5
    z_edit = z.clone()
    z_edit[..., latents] = 0
    expected = model.run_with_hooks(x, fwd_hooks=[(SITE, lambda t, hook: sae.decode(z_edit) + t - sae.decode(z))])
    assert_fp32_close(edited, expected)
    assert (edited - plain).abs().max() > 1e-4


def test_a_separate_pass_spec_is_refused_on_a_model_with_an_sae_spliced_there(model, x, sae, tmp_path):
    sae_dir = save_sae(sae, tmp_path / "sae", model=model, site=SITE)
    edit = ablate_latents([1], layer=2)
    spec = InterventionSpec.from_edits(model, edit, sae=sae_dir)  # nothing spliced: a separate SAE pass
    assert spec.sae.use_error_term is None
    with apply(model, spec):
        separate = model.encode_image(x)
    with intervene(model, edit, sae=sae):
        assert torch.equal(model.encode_image(x), separate)
    with model.saes((sae, SITE), use_error_term=True), \
            pytest.raises(SAEError, match=r"run as a separate pass of its SAE, but an SAE is spliced at "
                                          r"\['blocks.2.hook_resid_post'\]"):
        with apply(model, spec):
            pass
