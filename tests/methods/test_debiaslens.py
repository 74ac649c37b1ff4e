"""DebiasLens (docs/debiaslens.md): the social-neuron search against a literal transcription of E_g / N_g / j*_g,
the pooling, the intervention against α·decode(z with latents set to γ) + (1 − α)·h computed by hand through
sae_lens, export → load → apply, the effect on the targeted latents on the shipped model, and the errors."""
import pytest
import torch

from tests.primitives.conftest import random_sae
from tests.tolerance import assert_fp32_close
from workbench import load_clip
from workbench.data import SynthSocial
from workbench.methods import get_method, method_for_spec
from workbench.methods.debiaslens import (
    alpha_sweep_variants,
    debiaslens,
    debiaslens_edits,
    debiaslens_spec,
    debiaslens_variants,
    find_social_neurons,
    latent_activations,
    social_neurons,
)
from workbench.primitives import InterventionSpec, apply
from workbench.saes import load_sae, save_sae

IMAGE_SAE = "synthsocial/image-resid-last"
IMAGE_SITE = "blocks.5.hook_resid_post"
TEXT_SITE = "text.blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def reference():
    return SynthSocial("test_balanced", seed=1, n=256)


@pytest.fixture(scope="module")
def image_neurons(model, reference):
    return find_social_neurons(model, IMAGE_SAE, reference, progress=False)


@pytest.fixture(scope="module")
def text_sae_dir(model, tmp_path_factory):
    """A random StandardSAE at the last text block (128 → 64 latents), saved for specs."""
    return save_sae(random_sae(128, 64, seed=3), tmp_path_factory.mktemp("text_sae") / "sae", model=model,
                    site=TEXT_SITE)


# ---------------------------------------------------------------------------------------------- the search
def literal_search(acts, codes, tau, top_n=1):
    """E_g, N_g and the top_n of N_g by mean activation, written out loop by loop (inputs with code < 0 are not
    in any group)."""
    n, d = len(acts), len(acts[0])
    groups = sorted({c for c in codes if c >= 0})
    members = {g: [i for i in range(n) if codes[i] == g] for g in groups}
    freq = {g: [sum(1 for i in members[g] if acts[i][j] > 0) / len(members[g]) for j in range(d)] for g in groups}
    mean = {g: [sum(acts[i][j] for i in members[g]) / len(members[g]) for j in range(d)] for g in groups}
    E = {g: {j for j in range(d) if freq[g][j] >= tau} for g in groups}
    N = {g: {j for j in E[g] if not any(j in E[h] for h in groups if h != g)} for g in groups}
    chosen = {g: sorted(N[g], key=lambda j: (-mean[g][j], j))[:top_n] for g in groups}
    return E, N, chosen, freq, mean


# pooled activations of 7 inputs × 6 latents; gender 0/1 (the last input unlabelled), age 0/1/2
ACTS = [[1.0, 2.0, 3.0, 0.0, 0.0, 0.5],
        [1.0, 1.0, 5.0, 0.0, 0.0, 0.5],
        [1.0, 3.0, 4.0, 0.0, 0.2, 0.5],
        [1.0, 0.0, 2.0, 4.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 6.0, 1.0, 0.5],
        [1.0, 0.0, 1.0, 2.0, 0.0, 0.5],
        [0.0, 9.0, 9.0, 9.0, 9.0, 9.0]]
GENDER = [0, 0, 0, 1, 1, 1, -1]
AGE = [0, 1, 2, 0, 1, 2, 2]


@pytest.mark.parametrize("tau", [1.0, 0.6, 0.3])
def test_search_matches_the_literal_definition(tau):
    acts = torch.tensor(ACTS)
    found = social_neurons(acts, {"gender": torch.tensor(GENDER), "age": torch.tensor(AGE)}, tau=tau,
                           label_names={"gender": ["male", "female"]})
    for attribute, codes in (("gender", GENDER), ("age", AGE)):
        E, N, chosen, freq, mean = literal_search(ACTS, codes, tau)
        assert found.selected[attribute] == [j for g in sorted(chosen) for j in chosen[g]]
        rows = found.table[found.table["attribute"] == attribute]
        for g in E:
            name = ["male", "female"][g] if attribute == "gender" else g
            mine = rows[rows["group"] == name]
            assert set(mine["latent"]) == E[g]
            assert set(mine[mine["exclusive"]]["latent"]) == N[g]
            assert list(mine[mine["selected"]]["latent"]) == chosen[g]
            for j, f, m in zip(mine["latent"], mine["frequency"], mine["mean_activation"]):
                assert f == pytest.approx(freq[g][j]) and m == pytest.approx(mean[g][j])


def test_search_values_on_the_fixture():
    """The fixture's answers, by hand: at τ = 1 latent 2 fires on every male input and 2 of 3 female ones, so it
    is exclusive to male and beats latent 1 (mean 4 vs 2); at τ = 0.6 it is consistent in both groups and is
    excluded, leaving latent 1. Latent 0 fires on everyone (never exclusive); the unlabelled input (9s) is
    ignored (latent 4 would otherwise be consistent for no group it belongs to)."""
    acts, codes = torch.tensor(ACTS), {"gender": torch.tensor(GENDER)}
    strict = social_neurons(acts, codes, tau=1.0)
    assert strict.selected == {"gender": [2, 3]}
    male = strict.table[(strict.table["group"] == 0)].set_index("latent")
    assert male.loc[2, "frequency"] == 1.0 and male.loc[2, "mean_activation"] == pytest.approx(4.0)
    assert male.loc[2, "other_frequency"] == pytest.approx(2 / 3) and male.loc[2, "exclusive"]
    assert not male.loc[0, "exclusive"]  # fires everywhere
    # latent 5 fires on every male input and on 2 of 3 female ones: exclusive at τ = 1 by the letter of the
    # definition, but not selected (mean 0.5 < 4)
    assert male.loc[5, "exclusive"] and not male.loc[5, "selected"]
    loose = social_neurons(acts, codes, tau=0.6)
    assert loose.selected == {"gender": [1, 3]}  # 2 now consistent in both groups: excluded
    both = loose.table[loose.table["latent"] == 2]
    assert list(both["group"]) == [0, 1] and not both["exclusive"].any()
    assert social_neurons(acts, codes, tau=1.0, top_n=3).selected == {"gender": [2, 1, 5, 3]}
    assert strict.latents() == [2, 3] and strict.latents("gender") == [2, 3]


def test_pooling_is_the_mean_over_tokens_image_all_text_up_to_eot(model, text_sae_dir):
    sae = load_sae(IMAGE_SAE, model=model)
    data = SynthSocial("test_balanced", n=64)
    acts, labels, names = latent_activations(model, sae, data, progress=False)
    x = model.preprocess(data.tensors()[0])
    _, cache = model.run_with_cache(x, names_filter=IMAGE_SITE)
    with torch.no_grad():
        expected = sae.encode(cache[IMAGE_SITE]).mean(1)  # [n, 17 tokens, d_sae] → mean over every token
    assert_fp32_close(acts, expected)
    assert torch.equal(labels["gender"], torch.as_tensor(data.labels["gender"]))
    assert list(names["gender"]) == ["male", "female"]

    text_sae = load_sae(text_sae_dir, model=model)
    prompts = ["a photo of a woman", "a man", "a photo of an old asian man in a kitchen"]
    acts, _, _ = latent_activations(model, text_sae, prompts, progress=False)
    tokens = model.tokenize(prompts)
    with torch.no_grad():
        resid = {}
        handle = [(TEXT_SITE, lambda t, hook: resid.setdefault("h", t.detach().clone()))]
        with model.hooks(fwd_hooks=handle):
            model.encode_text(prompts)
        z = text_sae.encode(resid["h"])
    for i, p in enumerate(prompts):
        eot = int(tokens[i].argmax())  # open_clip pools the EOT token, the largest id
        assert eot == len(p.split()) + 1  # start token + one token per word here
        assert_fp32_close(acts[i], z[i, : eot + 1].mean(0))


def test_find_on_the_shipped_model(image_neurons, reference):
    found = image_neurons
    assert found.site == IMAGE_SITE and found.tower == "image" and found.tau == 1.0
    assert found.sae_path.endswith("saes/synthsocial/image-resid-last")
    assert found.acts.shape == (256, 256) and set(found.attributes) == {"gender", "ethnicity", "age"}
    assert "SocialNeurons(site='blocks.5.hook_resid_post'" in repr(found) and "union=" in repr(found)
    # every selected latent fires on every input of its group (τ = 1) and is exclusive
    sel = found.table[found.table["selected"]]
    assert len(sel) and (sel["frequency"] == 1.0).all() and sel["exclusive"].all()
    summary = found.summary()
    assert summary["union"] == found.latents() and summary["n_inputs"] == 256
    assert summary["groups"]["gender"]["female"]["n"] == int((torch.as_tensor(reference.labels["gender"]) == 1).sum())
    by_group = found.group_activations()
    assert set(by_group["latent"]) == set(found.latents()) and (by_group["n"] > 0).all()
    top = found.top_items(3)
    for latent, rows in top.groupby("latent"):
        assert list(rows["value"]) == sorted(found.acts[:, latent].tolist(), reverse=True)[:3]


# ---------------------------------------------------------------------------------------------- the intervention
def _text_neurons(text_sae_dir):
    """A text-side search result on made-up pooled latents: latents 3 and 7 fire on group 0 only, 10 on group 1."""
    acts = torch.zeros(8, 64)
    acts[0::2, 3], acts[0::2, 7], acts[1::2, 10] = 1.0, 0.5, 2.0
    return social_neurons(acts, {"gender": torch.tensor([0, 1] * 4)}, top_n=2, site=TEXT_SITE, tower="text",
                          sae_path=str(text_sae_dir))


def _blend_by_hand(sae, latents, alpha, gamma=0.0):
    """h → α·decode(z with z[..., latents] = γ) + (1 − α)·h, through sae_lens's own encode / decode."""
    def hook(h, hook):
        z = sae.encode(h)
        z[..., latents] = gamma
        return alpha * sae.decode(z) + (1 - alpha) * h
    return hook


@pytest.mark.parametrize("alpha,gamma", [(0.6, 0.0), (1.0, 0.0), (0.3, 2.5)])
def test_image_intervention_is_the_blend_by_hand(model, image_neurons, alpha, gamma):
    spec = debiaslens_spec(model, image_neurons, alpha=alpha, gamma=gamma)
    assert spec.alpha == alpha and spec.provenance["method"] == "debiaslens"
    (edit,) = spec.edits
    assert edit.op == ("zero" if gamma == 0 else "set") and edit.position == "all" and edit.hook == IMAGE_SITE
    x = model.preprocess(SynthSocial("test_balanced", n=64).tensors()[0][:16])
    with apply(model, spec), torch.no_grad():
        out = model.encode_image(x)
    sae = load_sae(IMAGE_SAE, model=model)
    with torch.no_grad():
        expected = model.run_with_hooks(x, fwd_hooks=[(IMAGE_SITE, _blend_by_hand(sae, image_neurons.latents(),
                                                                                     alpha, gamma))])
        clean = model.encode_image(x)
    assert_fp32_close(out, expected)
    assert (out - clean).abs().max() > 1e-3  # the edit does something


def test_text_intervention_keeps_the_causal_mask_and_is_the_blend_by_hand(model, text_sae_dir):
    neurons = _text_neurons(text_sae_dir)
    latents = neurons.latents()
    assert latents == [3, 7, 10]
    spec = debiaslens_spec(model, neurons, alpha=0.6)
    prompts = ["a photo of a woman", "a photo of a man in a kitchen"]
    with apply(model, spec), torch.no_grad():
        out = model.encode_text(prompts)
    sae = load_sae(text_sae_dir, model=model)
    with torch.no_grad(), model.hooks(fwd_hooks=[(TEXT_SITE, _blend_by_hand(sae, latents, 0.6))]):
        expected = model.encode_text(prompts)
    assert_fp32_close(out, expected)
    # the mask is kept: the edit at the last block cannot make a token see a later one, so a prompt's pooled
    # embedding does not depend on what the padding is — the same prompt alone gives the same embedding
    with apply(model, spec), torch.no_grad():
        alone = model.encode_text(prompts[:1])
    assert_fp32_close(alone[0], out[0])


def test_export_load_apply_is_exact_for_each_side_and_both(model, image_neurons, text_sae_dir, tmp_path):
    text = _text_neurons(text_sae_dir)
    variants = debiaslens_variants(model, image=image_neurons, text=text, alpha=0.6)
    assert set(variants) == {"debiaslens_i", "debiaslens_t", "debiaslens_it"}
    assert variants["debiaslens_it"] == [variants["debiaslens_i"], variants["debiaslens_t"]]
    x = model.preprocess(SynthSocial("test_balanced", n=64).tensors()[0][:8])
    prompts = ["a photo of a nurse", "a photo of a pilot"]
    for name in ("debiaslens_i", "debiaslens_t"):
        spec = variants[name]
        with apply(model, spec), torch.no_grad():
            before = (model.encode_image(x), model.encode_text(prompts))
        spec.save(tmp_path / f"{name}.json")
        loaded = InterventionSpec.load(tmp_path / f"{name}.json")
        assert method_for_spec(loaded) is get_method("debiaslens") is debiaslens
        with apply(model, loaded), torch.no_grad():
            after = (model.encode_image(x), model.encode_text(prompts))
        assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    sweep = alpha_sweep_variants(model, image=image_neurons, text=text, alphas=(0.0, 0.5, 1.0))
    assert set(sweep) == {f"debiaslens_{t}_a{a}" for t in ("i", "t", "it") for a in ("0.5", "1")}
    assert sweep["debiaslens_i_a0.5"].alpha == 0.5


def test_the_intervention_cuts_the_gap_of_the_latents_it_targets(model, image_neurons):
    """On the shipped model: the selected gender latents' group gap (mean pooled activation, female − male),
    re-encoded from the block's output after the intervention, shrinks. With α = 1 the latents are zeroed in the
    reconstruction that replaces h, so little of the gap can remain; with α = 0.6 the input still holds 40 % of
    h, so the gap cannot drop below about that share, and must drop at least to it plus a margin."""
    sae = load_sae(IMAGE_SAE, model=model)
    data = SynthSocial("test_balanced", seed=2, n=256)
    x = model.preprocess(data.tensors()[0])
    female = torch.as_tensor(data.labels["gender"]) == 1
    latents = image_neurons.latents("gender")
    assert latents

    def gap(h):
        a = sae.encode(h).mean(1)[:, latents]
        return (a[female].mean(0) - a[~female].mean(0)).abs()

    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=IMAGE_SITE)
        before = gap(cache[IMAGE_SITE])
        after = {}
        for alpha in (0.6, 1.0):
            with apply(model, debiaslens_spec(model, image_neurons, alpha=alpha, attribute="gender")):
                _, cache = model.run_with_cache(x, names_filter=IMAGE_SITE)  # the cache hook runs after the edit
            after[alpha] = gap(cache[IMAGE_SITE])
    assert (before > 0.05).all(), before
    assert (after[1.0] <= 0.25 * before).all(), (before, after[1.0])
    assert (after[0.6] <= 0.6 * before).all(), (before, after[0.6])


def test_registered_method_runs_end_to_end(model, reference):
    neurons, spec = debiaslens(model, IMAGE_SAE, reference, attributes=["gender"], progress=False)
    assert neurons.attributes == ["gender"] and spec.alpha == 0.6
    assert list(spec.edits[0].index) == neurons.latents()


# ---------------------------------------------------------------------------------------------- errors
def test_bad_input_is_refused_with_the_fix(model, reference, image_neurons, text_sae_dir):
    acts = torch.rand(4, 8)
    codes = {"gender": torch.tensor([0, 1, 0, 1])}
    with pytest.raises(ValueError, match=r"unknown attribute 'religion': the labels have \['gender'\]"):
        social_neurons(acts, codes, attributes=["religion"])
    with pytest.raises(ValueError, match=r"unknown attribute 'religion': the labels have \['age', 'ethnicity'"):
        find_social_neurons(model, IMAGE_SAE, reference, attributes=["religion"], progress=False)
    for tau in (0, 1.5, -0.1, True, "1"):
        with pytest.raises(ValueError, match=r"tau must be a fraction in \(0, 1\]"):
            social_neurons(acts, codes, tau=tau)
    with pytest.raises(ValueError, match=r"tau must be a fraction in \(0, 1\]"):
        find_social_neurons(model, IMAGE_SAE, reference, tau=2.0, progress=False)
    with pytest.raises(ValueError, match="top_n must be a positive integer"):
        social_neurons(acts, codes, top_n=0)
    with pytest.raises(ValueError, match="attribute 'gender' has 1 group"):
        social_neurons(acts, {"gender": torch.tensor([1, 1, 1, -1])})
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
            debiaslens_spec(model, image_neurons, alpha=alpha)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        alpha_sweep_variants(model, image=image_neurons, alphas=(0.5, 2.0))
    with pytest.raises(ValueError, match="no latents to silence: the search selected none"):
        debiaslens_edits([], IMAGE_SITE)
    with pytest.raises(ValueError, match="the spec must name the SAE's folder"):
        debiaslens_spec(model, social_neurons(acts, codes, tau=0.1, site=IMAGE_SITE))
    with pytest.raises(ValueError, match="image=... needs a search on the image tower"):
        debiaslens_variants(model, image=social_neurons(acts, codes, tau=0.1, site=TEXT_SITE, tower="text",
                                                        sae_path=str(text_sae_dir)))
    # an SAE for another site, or of another width
    from workbench.saes import SAEMismatchError, SpliceError

    with pytest.raises(SAEMismatchError, match=r"it was trained at 'blocks.5.hook_resid_post', not "
                                               r"'blocks.3.hook_resid_post'"):
        find_social_neurons(model, IMAGE_SAE, reference, site="blocks.3.hook_resid_post", progress=False)
    with pytest.raises(SpliceError, match=r"d_in=128, but 'text.blocks.2.hook_resid_post' has width 128|"
                                          r"the SAE reads vectors of size d_in=64"):
        find_social_neurons(model, random_sae(64, 32), ["a man"], labels={"gender": [0]}, site=TEXT_SITE,
                            progress=False)
    with pytest.raises(ValueError, match="prompts carry no labels: pass labels="):
        find_social_neurons(model, text_sae_dir, ["a man", "a woman"], progress=False)
    with pytest.raises(TypeError, match="is an image-tower site but the data is a list of prompts"):
        find_social_neurons(model, IMAGE_SAE, ["a man", "a woman"], progress=False)
