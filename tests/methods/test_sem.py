"""SEM: the formulas against a literal transcription of the authors' code (debiasing_methods/sem.py) on random
latents and on the shipped model's own latents, the exported spec, the effect on gender, and errors."""
import pytest
import torch

from tests.tolerance import assert_fp32_close
from workbench import load_clip
from workbench.data import prompt_sets
from workbench.methods import get_method, method_for_spec
from workbench.methods.sem import (SEM, bias_sensitivity, lower_median, modulation, percentile_rank, relu_latents,
                                   sem_variants)
from workbench.primitives import InterventionSpec, apply
from workbench.saes import load_sae


def authors(version, diverse_activations, query_latent, bias_activations_per_class, class_activations_per_query):
    """The latent arithmetic of SEM.debias_text, transcribed line by line (the CLIP and SAE calls removed; the
    device arguments dropped, long lines kept verbatim):
    diverse_activations [|D|, d]; query_latent [n, d]; bias_activations_per_class: list of [20, d];
    class_activations_per_query: list (one per query) of [n_p, d]. Returns the modulated latents [n, d]."""
    n_diverse = diverse_activations.shape[0]
    latent_dim = diverse_activations.shape[1]
    median_diverse_activations = diverse_activations.median(dim=0).values
    if version in ['SEM_b', 'SEM_bi']:
        bias_activations = torch.cat(bias_activations_per_class)
        prompts_per_bias_class = [len(b) for b in bias_activations_per_class]
    if version in ['SEM_i', 'SEM_bi']:
        extra_class_activations = torch.cat(class_activations_per_query)
        prompts_per_class = [len(c) for c in class_activations_per_query]
        median_class_activations = []
        i = 0
        for n_tc in prompts_per_class:
            target_class_activations = extra_class_activations[i:i + n_tc]
            median_class_activations.append(target_class_activations.median(dim=0, keepdim=True).values)
            i = i + n_tc
    if version in ['SEM_b', 'SEM_bi']:
        latent = query_latent
    if version == 'SEM_i':
        latent = torch.cat(median_class_activations, dim=0)
    if version == 'SEM_bi':
        median_class_activations = torch.cat(median_class_activations, dim=0)
        class_scores = (diverse_activations.unsqueeze(0) < median_class_activations.unsqueeze(1)).sum(dim=1).float() / n_diverse  # noqa: E501 (verbatim)
    if version in ['SEM_b', 'SEM_i']:
        class_scores = (diverse_activations.unsqueeze(0) < latent.unsqueeze(1)).sum(dim=1).float() / n_diverse
    if version in ['SEM_b', 'SEM_bi']:
        bias_scores = torch.zeros(latent_dim, dtype=torch.float32)
        i = 0
        for n_bc in prompts_per_bias_class:
            bc_mask = torch.zeros(bias_activations.shape[0], dtype=torch.bool)
            bc_mask[i:i + n_bc] = 1
            i = i + n_bc
            bc_activations = bias_activations[bc_mask]
            median_bc_activations = bc_activations.median(dim=0, keepdim=True).values
            non_bc_activations = bias_activations[~bc_mask]
            general_bc_scores = ((diverse_activations.unsqueeze(0) < median_bc_activations.unsqueeze(1)).sum(dim=1).float() / n_diverse).squeeze(0)  # noqa: E501 (verbatim)
            specific_bc_scores = ((non_bc_activations.unsqueeze(0) < median_bc_activations.unsqueeze(1)).sum(dim=1).float() / non_bc_activations.shape[0]).squeeze(0)  # noqa: E501 (verbatim)
            bc_scores = torch.minimum(general_bc_scores, specific_bc_scores)
            bias_scores = torch.maximum(bias_scores, bc_scores)
    if version == 'SEM_i':
        combined_score = class_scores ** 2
    if version in ['SEM_b', 'SEM_bi']:
        combined_score = (1 + class_scores - bias_scores) ** 2
    latent = latent * combined_score + (1 - combined_score) * median_diverse_activations.repeat(latent.shape[0], 1)
    return latent, combined_score


def sparse_latents(g, n, d=40):
    """Non-negative latents with many exact zeros and repeated values (ties test the strict <)."""
    x = torch.randint(0, 5, (n, d), generator=g).float() * 0.5
    return x * (torch.rand(n, d, generator=g) < 0.4)


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def prompts():
    return prompt_sets("synthsocial")


@pytest.fixture(scope="module")
def fitted(model, prompts):
    return SEM.fit(model, "synthsocial/text-embed", prompts, "gender")


# ---------------------------------------------------------------------------------------------- the formulas
@pytest.mark.parametrize("seed", [0, 1])
def test_formulas_equal_the_authors_code_on_random_latents(seed):
    g = torch.Generator().manual_seed(seed)
    diverse, query = sparse_latents(g, 33), sparse_latents(g, 4)
    classes = [sparse_latents(g, 20) for _ in range(3)]
    paraphrases = [sparse_latents(g, 10) for _ in range(4)]
    s_b, per_class = bias_sensitivity(diverse, classes)
    m = lower_median(diverse)
    for version in ("SEM_i", "SEM_b", "SEM_bi"):
        expected, M_expected = authors(version, diverse, query, classes, paraphrases)
        medians = torch.stack([lower_median(p) for p in paraphrases])
        z_in = medians if version == "SEM_i" else query
        s_c = percentile_rank(diverse, query if version == "SEM_b" else medians)
        M = modulation(s_c, None if version == "SEM_i" else s_b)
        assert torch.equal(M, M_expected), version
        assert torch.equal(z_in * M + (1 - M) * m, expected), version
        lo, hi = (0, 1) if version == "SEM_i" else (0, 4)
        assert M.min() >= lo and M.max() <= hi
    # strict <: a value equal to every reference row ranks 0, one above all of them ranks 1
    assert torch.equal(percentile_rank(torch.ones(5, 3), torch.tensor([[1.0, 2.0, 0.5]])),
                       torch.tensor([[0.0, 1.0, 0.0]]))
    # lower median for even counts (torch.median), the max over classes of min(general, specific)
    assert torch.equal(lower_median(torch.tensor([[1.0], [2.0], [3.0], [4.0]])), torch.tensor([2.0]))
    assert torch.equal(s_b, per_class.max(dim=0).values.clamp(min=0))


def test_sem_on_the_shipped_model_equals_the_authors_code(model, prompts, fitted):
    sae = fitted.sae
    queries = ["a photo of a nurse", "a photo of a chef", "a photo of a person in a kitchen"]
    with torch.no_grad():
        Z = lambda p: sae.encode(model.encode_text(p, normalize=False).float())  # noqa: E731
        diverse = Z(prompts.diverse)
        classes = [Z(prompts.bias["gender"][c]) for c in ("male", "female")]
        para = [Z([q, *prompts.paraphrases[q]]) for q in queries]  # the query is one of its prompts
        for version, variant in (("SEM_i", "sem_i"), ("SEM_b", "sem_b"), ("SEM_bi", "sem_bi")):
            expected, M = authors(version, diverse, Z(queries), classes, para)
            parts = fitted.scores(queries, variant)
            assert torch.equal(parts["M"], M), variant
            assert torch.equal(parts["z_out"], expected), variant
            assert torch.equal(fitted.debias(queries, variant), sae.decode(expected))
    table = fitted.latent_table()
    assert list(table.columns) == ["latent", "diverse_median", "s_b", "s_b_male", "s_b_female"] and len(table) == 512
    assert torch.equal(torch.tensor(table["s_b"].to_numpy()), fitted.bias_score)
    rows = fitted.query_table(queries[:2], "sem_b")
    assert len(rows) == 2 * 512 and rows["M"].between(0, 4).all()
    assert rows.loc[rows["query"] == queries[0], "z_out"].to_numpy() == pytest.approx(
        fitted.scores(queries[:1], "sem_b")["z_out"][0].numpy())


def test_relu_encode_keeps_the_top_k_entries(fitted, model):
    with torch.no_grad():
        x = model.encode_text(["a photo of a doctor", "a busy farmer"], normalize=False)
        top, relu = fitted.sae.encode(x), relu_latents(fitted.sae, x)
    assert torch.equal(relu[top > 0], top[top > 0]) and (relu > 0).sum() > (top > 0).sum()


def test_sem_b_and_sem_bi_narrow_the_gender_gap_of_queries(model, prompts, fitted):
    """SEM's claim on the text side: bias-sensitive latents are pulled to the diverse median, so a query's
    similarity to the male and female prompt centroids moves closer together (mean gap over the queries)."""
    queries = prompts.occupations + prompts.stereotypes
    with torch.no_grad():
        centroids = torch.stack([torch.nn.functional.normalize(model.encode_text(prompts.bias["gender"][c]).mean(0),
                                                               dim=0) for c in ("male", "female")])

        def gap(t):
            sims = torch.nn.functional.normalize(t, dim=-1) @ centroids.T
            return (sims[:, 0] - sims[:, 1]).abs().mean().item()

        base = gap(model.encode_text(queries))
        assert gap(fitted.debias(queries, "sem_b")) < base
        assert gap(fitted.debias(queries, "sem_bi")) < base


# ---------------------------------------------------------------------------------------------- export
def test_spec_round_trip_is_bit_exact(model, fitted, tmp_path):
    queries = ["a photo of a nurse", "a photo of a pilot", "a tired teacher"]
    spec = fitted.to_spec("sem_b", dataset="synthsocial")
    path = spec.save(tmp_path / "sem_b.json")
    loaded = InterventionSpec.load(path)
    assert loaded.edits == spec.edits and loaded.provenance["method"] == "sem"
    assert method_for_spec(path) is get_method("sem")
    with torch.no_grad(), apply(model, loaded):
        applied = model.encode_text(queries)
    assert torch.equal(applied, fitted.debias(queries, "sem_b"))
    bi = fitted.to_spec("sem_bi")
    assert bi.edits == spec.edits and bi.provenance["variant"] == "sem_bi" and bi.provenance["content_score"] == "query"
    with pytest.raises(ValueError, match="SEMi cannot be exported: its latents and content score are the median over "
                                         "each query's paraphrases.*SEM.debias\\(queries, 'sem_i'\\)"):
        fitted.to_spec("sem_i")


def test_sem_variants_values(model, prompts):
    from workbench.evaluation import TextOverride

    variants = sem_variants(model, "synthsocial/text-embed", prompts, "gender")
    assert list(variants) == ["sem_i", "sem_b", "sem_bi"]
    assert isinstance(variants["sem_b"], InterventionSpec)
    assert isinstance(variants["sem_i"], TextOverride) and isinstance(variants["sem_bi"], TextOverride)
    assert_fp32_close(variants["sem_bi"].fn(["a photo of a nurse"]),
                      SEM.fit(model, "synthsocial/text-embed", prompts, "gender").debias(["a photo of a nurse"]))


# ---------------------------------------------------------------------------------------------- errors
def test_errors(model, prompts, fitted, tmp_path):
    with pytest.raises(ValueError, match="unknown SEM variant 'sem_x'; choose one of"):
        fitted.debias(["a photo of a nurse"], "sem_x")
    with pytest.raises(ValueError, match="no paraphrases for the query 'a busy doctor in a kitchen'.*missing='query'"):
        fitted.debias(["a busy doctor in a kitchen"], "sem_bi")
    solo = fitted.debias(["a busy doctor in a kitchen"], "sem_i", missing="query")
    assert solo.shape == (1, 128)
    with pytest.raises(ValueError, match=r"queries must be a non-empty list of prompt strings"):
        fitted.debias("a photo of a nurse", "sem_b")
    with pytest.raises(ValueError, match="no bias prompts for 'religion'; they have"):
        SEM.fit(model, "synthsocial/text-embed", prompts, "religion")
    with pytest.raises(ValueError, match="classes must name at least 2 of the 'scene' classes"):
        SEM.fit(model, "synthsocial/text-embed", prompts, "scene", classes=("kitchen", "beach"))
    with pytest.raises(ValueError, match="encode must be one of"):
        SEM.fit(model, "synthsocial/text-embed", prompts, encode="jumprelu")
    with pytest.raises(ValueError, match="the SAE must be trained at 'text.hook_text_embed', this one reads "
                                         "'hook_image_embed'"):
        SEM.fit(model, load_sae("synthsocial/image-embed", model), prompts)
    with pytest.raises(TypeError, match="prompts must be a workbench.data.PromptSets"):
        SEM.fit(model, "synthsocial/text-embed", {"diverse": []})
    no_bias = SEM.fit(model, "synthsocial/text-embed", prompts, attribute=None)
    with pytest.raises(ValueError, match="sem_b needs bias prompts: fit with attribute="):
        no_bias.debias(["a photo of a nurse"], "sem_b")
    relu = SEM.fit(model, "synthsocial/text-embed", prompts, encode="relu")
    with pytest.raises(ValueError, match="only encode='sae' exports"):
        relu.to_spec("sem_b")
    in_memory = SEM.fit(model, fitted.sae, prompts)
    with pytest.raises(ValueError, match="the spec must name the SAE's folder"):
        in_memory.to_spec("sem_b")


def test_figures(fitted):
    from workbench.viz.sem import plot_modulation_histogram, plot_sem_scores

    table = fitted.query_table(["a photo of a nurse", "a photo of a chef"], "sem_bi")
    fig = plot_sem_scores(table, "a photo of a nurse")
    rows = table[table["query"] == "a photo of a nurse"]
    assert len(fig.data[0].x) == 512 and list(fig.data[0].marker.color) == rows["M"].tolist()
    with pytest.raises(ValueError, match="the table has no rows for query 'a photo of a pilot'"):
        plot_sem_scores(table, "a photo of a pilot")
    hist = plot_modulation_histogram({"sem_bi": table})
    assert hist.data[0].name == "sem_bi" and len(hist.data[0].x) == 2 * 512
    with pytest.raises(ValueError, match="needs at least one"):
        plot_modulation_histogram({})
