"""The `rank_modulate` op (SEM's bias-aware modulation, content score from the activation itself): the formula
against a literal transcription, value checks, and an export → load → apply round trip that is bit-exact."""
import pytest
import torch

from tests.primitives.conftest import random_sae
from workbench.primitives import Edit, EditError, EditTargetError, InterventionSpec, apply, apply_op, intervene


def literal(v, bias, rows, m):
    """M = (1 + rank_R(v) − b)², rank by strict comparison counted over every row, z' = z·M + (1 − M)·m."""
    out = torch.empty_like(v)
    for i in range(v.shape[0]):
        rank = (rows < v[i][None, :]).sum(dim=0).float() / rows.shape[0]
        M = (1 + rank - bias) ** 2
        out[i] = v[i] * M + (1 - M) * m
    return out


def test_formula_equals_the_literal_transcription_with_ties():
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 4, (9, 12), generator=g).float()  # many ties: strict < matters
    v = torch.randint(0, 4, (5, 12), generator=g).float()
    bias = torch.rand(12, generator=g)
    m = torch.randn(12, generator=g)
    value = torch.cat([bias[None], rows])
    got = apply_op(v, "rank_modulate", value, reference=m)
    assert torch.equal(got, literal(v, bias, rows, m))
    # a value equal to every row ranks 0 (strict), above every row ranks 1 → M = (1 − b)² and (2 − b)²
    tie = apply_op(torch.full((1, 12), 7.0), "rank_modulate", torch.cat([bias[None], torch.full((3, 12), 7.0)]))
    assert torch.equal(tie[0], 7.0 * (1 - bias) ** 2)
    above = apply_op(torch.full((1, 12), 8.0), "rank_modulate", torch.cat([bias[None], torch.full((3, 12), 7.0)]))
    assert torch.equal(above[0], 8.0 * (2 - bias) ** 2)


def test_value_checks():
    site = dict(target="sae_latent", op="rank_modulate", hook="text.hook_text_embed", tower="text")
    with pytest.raises(EditError, match=r"rank_modulate needs a matrix value \[1 \+ n, w\].*got \[5\]"):
        Edit(**site, value=torch.ones(5))
    with pytest.raises(EditError, match=r"needs a matrix value.*got \[1, 5\]"):
        Edit(**site, value=torch.ones(1, 5))
    with pytest.raises(EditError, match="needs a matrix value.*got float"):
        Edit(**site, value=0.5)
    with pytest.raises(EditError, match="op 'rank_modulate' is not available for target 'neuron'"):
        Edit(target="neuron", op="rank_modulate", layer=0, index=[1], value=torch.ones(3, 1))
    e = Edit(**site, value=torch.ones(3, 8), reference=torch.zeros(8))  # rows are data, fine at position "pooled"
    assert e.position == "pooled"


def test_width_checked_against_the_sae(model):
    sae = random_sae(32, 48)
    e = Edit(target="sae_latent", op="rank_modulate", hook="text.hook_text_embed", tower="text",
             value=torch.ones(3, 40), reference=torch.zeros(48))
    with pytest.raises(EditTargetError, match=r"value has shape \[3, 40\], expected \[rows, 48\]"):
        e.validate(model, sae=sae)


def test_export_load_apply_is_bit_exact_and_matches_the_formula(model, tmp_path):
    sae = random_sae(32, 48, seed=1)
    sae_dir = tmp_path / "saes" / "text"
    sae.save_model(sae_dir)
    prompts = ["a photo of a cat", "a dog", "a photo of a red car"]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        reference_rows = sae.encode(model.encode_text(["a house", "a tree", "a photo", "a car", "a cat"]))
        bias = torch.rand(48, generator=g)
        median = reference_rows.median(dim=0).values
        edit = Edit(target="sae_latent", op="rank_modulate", hook="text.hook_text_embed", tower="text",
                    value=torch.cat([bias[None], reference_rows]), reference=median)
        with intervene(model, [edit], sae=sae):
            edited = model.encode_text(prompts)
        spec = InterventionSpec.from_edits(model, [edit], sae=sae_dir, method="sem")
        path = spec.save(tmp_path / "specs" / "sem_b.json")
        assert (tmp_path / "specs" / "sem_b.values.safetensors").is_file()  # the matrix went to the sidecar
        loaded = InterventionSpec.load(path)
        assert loaded.edits == [edit]
        with apply(model, loaded):
            reloaded = model.encode_text(prompts)
        plain = model.encode_text(prompts)
        by_hand = sae.decode(literal(sae.encode(plain), bias, reference_rows, median))
    assert torch.equal(reloaded, edited)
    torch.testing.assert_close(edited, by_hand, atol=1e-6, rtol=0)
    assert not torch.allclose(edited, plain)
