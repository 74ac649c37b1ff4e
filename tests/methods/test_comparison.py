"""compare_methods: every method's variants in one evaluation, the text methods refitted for the spurious label
on the worst-group gallery, specs for the exportable variants, and a clear error for an unknown method."""
import pytest
import torch

from workbench.data import SynthSocial, prompt_sets
from workbench.evaluation import evaluate_variants
from workbench.methods.comparison import METHODS, compare_methods
from workbench.methods.sem import sem_variants
from workbench.models import load_clip
from workbench.primitives import InterventionSpec

N_BOOT = 200


@pytest.fixture(scope="module")
def model():
    return load_clip("synthsocial")


@pytest.fixture(scope="module")
def data():
    return (SynthSocial("test_balanced", seed=11, n=256), SynthSocial("test_balanced", seed=12, n=256),
            SynthSocial("test_spurious", seed=13, n=128))


@pytest.fixture(scope="module")
def comparison(model, data):
    reference, gallery, spurious = data
    return compare_methods(model, reference, gallery, spurious=spurious, methods=("sem", "projection"),
                           n_boot=N_BOOT, progress=False)


def test_one_result_with_every_methods_variants(comparison):
    assert comparison.method_of == {"sem_i": "sem", "sem_b": "sem", "sem_bi": "sem", "orth_proj": "projection",
                                    "orth_cali": "projection"}
    result = comparison.result
    assert result.variants == ["baseline", *comparison.method_of]
    for m in ("gender_maxskew_occupations", "gender_kl_prior_stereotypes", "zero_shot_accuracy",
              "worst_group_accuracy"):
        assert m in result.metrics
    table = comparison.table(["gender_maxskew_occupations", "worst_group_accuracy"], intervals=False)
    assert list(table["method"]) == ["vanilla", "sem", "sem", "sem", "projection", "projection"]
    assert table.loc["sem_b", "gender_maxskew_occupations"] == result.value("sem_b", "gender_maxskew_occupations")


def test_specs_for_exportable_variants_only(comparison):
    assert comparison.specs["sem_i"] is None and comparison.specs["sem_bi"] is None  # API calls (paraphrases)
    for name in ("sem_b", "orth_proj", "orth_cali"):
        assert isinstance(comparison.specs[name], InterventionSpec)
    from workbench.methods import get_method, method_for_spec

    for name in ("sem_b", "orth_proj", "orth_cali"):  # each spec names a registered method
        assert method_for_spec(comparison.specs[name]) is get_method("sem" if name == "sem_b" else name)


def test_the_spurious_gallery_sees_the_text_methods_refitted_for_its_label(comparison, model, data):
    # worst-group accuracy of sem_b must be that of SEMb fitted on the scene (kitchen vs field), not on gender
    _, _, spurious = data
    prompts = prompt_sets("synthsocial")
    scene = sem_variants(model, "synthsocial/text-embed", prompts, "scene", classes=("kitchen", "field"))
    queries = {c: f"a photo of a {c}" for c in spurious.label_names["target"]}
    direct = evaluate_variants(model, spurious, {"sem_b": scene["sem_b"]}, target="target", groups=(),
                               worst_group="spurious", queries=queries, word_lists={}, captions=False,
                               n_boot=N_BOOT, progress=False)
    got = comparison.spurious.prompt_embeddings["sem_b"]["queries"]
    assert torch.equal(got, direct.prompt_embeddings["sem_b"]["queries"])
    gender = comparison.result.prompt_embeddings["sem_b"]["queries"]  # the gender fit, on occupation queries
    chef = prompts.occupations.index("a photo of a chef")
    assert not torch.allclose(got[0], gender[chef], atol=1e-4)  # the two fits really differ
    wga = comparison.result.per_query["sem_b"]["worst_group_accuracy"]
    assert (wga == direct.per_query["sem_b"]["worst_group_accuracy"]).all()


def test_unknown_methods_are_refused(model, data):
    reference, gallery, _ = data
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['ntide'\]; choose from"):
        compare_methods(model, reference, gallery, methods=("sem", "ntide"))
    assert METHODS == ("expert_heads", "sem", "projection", "debiaslens")
