"""Orth-Proj and Orth-Cali as project_out Edits: equal to a literal transcription of the authors' numpy code
(debiasing_methods/biased_prompts.py, method_utils.get_proj_matrix with scikit-learn's TruncatedSVD), the effect
each claims, the prompts they derive, export, and errors."""
import numpy as np
import pytest
import torch
from sklearn.decomposition import TruncatedSVD

from workbench import load_clip
from workbench.data import prompt_sets
from workbench.methods import get_method
from workbench.methods.baselines import (candidate_prompts, orth_cali, orth_proj, projection_variants,
                                         spurious_prompts)
from workbench.primitives import InterventionSpec, apply, intervene


def get_proj_matrix(embeddings):
    tSVD = TruncatedSVD(n_components=len(embeddings))
    tSVD.fit(embeddings)
    basis = tSVD.components_.T.astype(np.float64)
    proj = basis @ basis.T
    proj = np.eye(proj.shape[0], dtype=np.float64) - proj
    return proj


def get_A(z_i, z_j):
    z_i = z_i[:, None]
    z_j = z_j[:, None]
    return z_i @ z_i.T + z_j @ z_j.T - z_i @ z_j.T - z_j @ z_i.T


def get_M(embeddings, S):
    d = embeddings.shape[1]
    M = np.zeros((d, d), dtype=np.float64)
    for s in S:
        M += get_A(embeddings[s[0]], embeddings[s[1]])
    return M / len(S)


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def prompts():
    return prompt_sets("synthsocial")


def encode(model, prompts, edits=()):
    with torch.no_grad(), intervene(model, list(edits)):
        return model.encode_text(prompts, normalize=True).double().numpy()


def normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("attribute", ["gender", "ethnicity"])
def test_equal_to_the_authors_code(model, prompts, attribute):
    queries = prompts.occupations + prompts.stereotypes
    query = encode(model, queries)
    spurious = encode(model, spurious_prompts(prompts, attribute))
    P0 = get_proj_matrix(spurious)
    # float32 edits applied one after another vs the float64 matrix: a few float32 ulps of a unit vector
    np.testing.assert_allclose(encode(model, queries, orth_proj(model, prompts, attribute)),
                               normalise(query @ P0), rtol=0, atol=1e-6)
    groups = candidate_prompts(prompts, attribute, queries)
    n = len(groups[0])
    S = [[i * n + j, i * n + k] for i in range(len(groups)) for j in range(n) for k in range(j + 1, n)]
    M = get_M(encode(model, [p for g in groups for p in g]), S)
    P = P0 @ np.linalg.inv(1000 * M + np.eye(M.shape[0]))
    np.testing.assert_allclose(encode(model, queries, orth_cali(model, prompts, attribute)),
                               normalise(query @ P.T), rtol=0, atol=1e-6)


def test_the_effects_they_claim(model, prompts):
    spurious = spurious_prompts(prompts, "gender")
    s = encode(model, spurious)
    projected = encode(model, prompts.occupations, orth_proj(model, prompts, "gender"))
    assert np.abs(projected @ s.T).max() < 1e-6  # nothing left along the spurious prompts
    assert np.abs(encode(model, prompts.occupations) @ s.T).max() > 0.1
    # calibration: the two gendered versions of each query land closer together than after Orth-Proj alone
    pairs = candidate_prompts(prompts, "gender", prompts.occupations)
    flat = [p for pair in pairs for p in pair]

    def spread(edits):
        e = encode(model, flat, edits)
        return np.linalg.norm(e[0::2] - e[1::2], axis=1).mean()

    assert spread(orth_cali(model, prompts, "gender")) < 0.5 * spread(orth_proj(model, prompts, "gender"))


def test_prompts(prompts):
    assert spurious_prompts(prompts, "gender") == ["a photo of a male person", "a photo of a female person"]
    assert spurious_prompts(prompts, "scene", ("kitchen", "field")) == ["a photo of a person in a kitchen",
                                                                       "a photo of a person in a field"]
    assert candidate_prompts(prompts, "ethnicity", ["a photo of an engineer"]) == [[
        "a photo of a white engineer", "a photo of a black engineer", "a photo of an asian engineer",
        "a photo of an indian engineer"]]
    real = prompt_sets("real")
    assert spurious_prompts(real, "gender") == ["a photo of a male person", "a photo of a female person"]


def test_variants_export_and_registry(model, prompts, tmp_path):
    variants = projection_variants(model, prompts, "gender")
    assert list(variants) == ["orth_proj", "orth_cali"]
    assert all(e.op == "project_out" and e.hook == "text.hook_text_embed" for v in variants.values() for e in v)
    spec = InterventionSpec.from_edits(model, variants["orth_cali"], method="orth_cali", attribute="gender")
    loaded = InterventionSpec.load(spec.save(tmp_path / "orth_cali.json"))
    with torch.no_grad(), apply(model, loaded):
        applied = model.encode_text(prompts.occupations)
    with torch.no_grad(), intervene(model, variants["orth_cali"]):
        assert torch.equal(applied, model.encode_text(prompts.occupations))
    assert get_method("orth_proj") is orth_proj and get_method("orth_cali") is orth_cali


def test_errors(model, prompts):
    with pytest.raises(ValueError, match="no bias prompts for 'religion'"):
        orth_proj(model, prompts, "religion")
    with pytest.raises(ValueError, match="classes must name at least 2 of the 'scene' classes"):
        orth_proj(model, prompts, "scene", classes=("kitchen",))
    with pytest.raises(ValueError, match="cannot derive calibration prompts from the query 'nurses at work'"):
        orth_cali(model, prompts, "gender", queries=["nurses at work"])
    with pytest.raises(ValueError, match="lam must be a positive number"):
        orth_cali(model, prompts, "gender", lam=0)
