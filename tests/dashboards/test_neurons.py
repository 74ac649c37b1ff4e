"""NeuronState: the cached SAE update equals evaluate_variants on the exported spec (a forward pass with the
SAE as a separate pass), at the image embedding and at the last block; specs round-trip; bad input is refused."""
import json

import pytest
import torch

from tests.dashboards.conftest import evaluate
from tests.tolerance import assert_fp32_close
from workbench.dashboards import NeuronState
from workbench.primitives import InterventionSpec
from workbench.saes import load_sae
from workbench.saes.io import resolve_sae_path
from workbench.saes.stats import LatentStats

SAES = {"embed": "synthsocial/image-embed", "tail": "synthsocial/image-resid-last"}


def make_state(model, gallery, protocol, name, **kw):
    path = resolve_sae_path(SAES[name])
    return NeuronState(model, gallery, protocol, load_sae(path, model=model), sae_path=path, **kw)


@pytest.fixture(scope="module")
def embed_state(model, gallery, protocol):
    return make_state(model, gallery, protocol, "embed")


@pytest.mark.parametrize("name", ["embed", "tail"])
def test_cached_update_equals_the_spec_evaluated_with_forward_passes(model, data, gallery, protocol, name, tmp_path):
    state = make_state(model, gallery, protocol, name, alpha=0.6)
    assert state._mode == {"embed": "embed", "tail": "tail"}[name]  # the embed SAE's decoder is affine: delta path
    top = [int(i) for i in state.latent_ap()["latent"][:3]]
    state.set_latents(top)
    assert state.path == "cached"
    spec = InterventionSpec.load(state.save_spec(tmp_path / "latents.json"))
    assert spec.alpha == 0.6 and spec.sae is not None and spec.sae.use_error_term is None
    assert [(e.target, e.op, e.index) for e in spec.edits] == [("sae_latent", "zero", tuple(sorted(top)))]
    result, want = evaluate(model, data, spec)
    assert result.paths["v"] == "forward"  # the reference is a real forward pass with the spec applied
    assert_fp32_close(state.embeddings, result.embeddings["v"])
    assert state.metrics == pytest.approx(want, abs=1e-6)
    assert state.metrics["gender_ndkl"] != pytest.approx(state.baseline["gender_ndkl"], abs=1e-4)


def test_gamma_and_alpha_change_the_edit(model, data, embed_state, tmp_path):
    s = embed_state
    s.clear()
    s.toggle(int(s.latent_ap()["latent"][0]))
    at_zero = dict(s.metrics)
    s.set_gamma(2.0)
    s.set_alpha(1.0)
    (edit,) = s.edits()
    assert (edit.op, edit.value) == ("set", 2.0)
    assert s.metrics != at_zero
    result, want = evaluate(model, data, s.to_spec())
    assert s.metrics == pytest.approx(want, abs=1e-6)
    s.set_alpha(0.0)  # α = 0 keeps the model's own activations: the baseline, through the edit
    assert s.metrics == pytest.approx(s.baseline, abs=1e-6)
    s.set_gamma(0.0)
    s.set_alpha(0.6)


def test_load_restores_latents_gamma_alpha(model, gallery, protocol, embed_state, tmp_path):
    s = embed_state
    s.set_latents([3, 40, 7])
    s.set_gamma(0.5)
    s.set_alpha(0.8)
    path = s.save_spec(tmp_path / "spec.json")
    fresh = make_state(model, gallery, protocol, "embed")
    fresh.load_spec(path)
    assert (sorted(fresh.latents), fresh.gamma, fresh.alpha) == ([3, 7, 40], 0.5, 0.8)
    assert fresh.metrics == s.metrics
    other = make_state(model, gallery, protocol, "tail")
    with pytest.raises(ValueError, match=r"the spec edits the SAE at \['hook_image_embed'\], this dashboard's SAE "
                                         r"is at 'blocks.5.hook_resid_post'"):
        other.load_spec(path)
    doc = json.loads(path.read_text())
    doc["sae"]["sha256"] = "f" * 64
    (tmp_path / "other_sae.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="the spec was made with another SAE"):
        fresh.load_spec(tmp_path / "other_sae.json")
    s.set_gamma(0.0)
    s.set_alpha(0.6)


def test_latent_browsing_tables(embed_state):
    table = embed_state.latent_ap()
    assert list(table.columns[:3]) == ["latent", "auroc", "ap"] and len(table) == 512
    assert table["ap"].is_monotonic_decreasing
    # the best latent separates the genders: its AP is well above the best AP any of the 512 latents reaches by
    # chance (the same latents scored against shuffled gender labels; about 0.57 on this 256-image gallery)
    stats, generator = embed_state.stats, torch.Generator().manual_seed(0)
    chance = []
    for _ in range(20):
        shuffled = {**stats.labels, "gender": stats.labels["gender"][torch.randperm(stats.n, generator=generator)]}
        chance.append(float(LatentStats(stats.acts, shuffled, stats.label_names).ap("gender")["ap"].max()))
    assert table["ap"].iloc[0] > max(chance) + 0.05


def test_bad_input(model, gallery, protocol, embed_state, tmp_path):
    s = embed_state
    with pytest.raises(ValueError, match=r"latent must be an int in 0..511 \(the SAE's d_sae\), got 512"):
        s.toggle(512)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        s.set_alpha(1.5)
    with pytest.raises(ValueError, match="gamma .* must be a finite number, got inf"):
        s.set_gamma(float("inf"))
    with pytest.raises(TypeError, match="sae must be a sae_lens SAE"):
        NeuronState(model, gallery, protocol, object())
    text_sae = load_sae("synthsocial/text-embed", model=model)
    with pytest.raises(ValueError, match="NeuronDashboard edits image-tower SAEs; 'text.hook_text_embed' is on the "
                                         "text tower"):
        NeuronState(model, gallery, protocol, text_sae)
    no_path = NeuronState(model, gallery, protocol, load_sae("synthsocial/image-embed", model=model))
    no_path.toggle(1)
    with pytest.raises(ValueError, match="the spec must record where the SAE lives"):
        no_path.save_spec(tmp_path / "x.json")
    s.clear()
    with pytest.raises(ValueError, match="nothing to export"):
        s.save_spec(tmp_path / "x.json")
