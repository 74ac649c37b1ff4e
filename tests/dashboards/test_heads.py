"""HeadState: live metrics equal evaluate_variants on the same edits (cached last block and forward passes),
exported specs reproduce the embeddings, loaded specs restore the toggles, and bad input is refused clearly."""
import json

import pytest
import torch

from tests.dashboards.conftest import evaluate
from tests.tolerance import assert_fp32_close
from workbench.dashboards import HeadState
from workbench.primitives import Edit, InterventionSpec, ablate_heads, apply


@pytest.fixture
def state(model, gallery, protocol, finding):
    return HeadState(model, gallery, protocol, finding=finding)


def test_baseline_metrics_equal_evaluate_variants(model, data, state):
    _, want = evaluate(model, data, None)
    assert state.path == "baseline"
    assert state.metrics == pytest.approx(want, abs=1e-12)
    assert state.baseline["gender_ndkl"] > 0.01  # the planted bias is visible on this gallery


@pytest.mark.parametrize("op", ["zero", "neutral", "prototype: female", "scale"])
def test_last_block_toggle_is_cached_and_equals_evaluate_variants(model, data, state, op):
    state.set_op(op, alpha=0.25)
    state.toggle(5, 1)
    state.toggle(5, 3)
    assert state.path == "cached" and state.heads == [(5, 1), (5, 3)]
    result, want = evaluate(model, data, state.edits())
    assert result.paths["v"] == "cached"
    assert state.metrics == pytest.approx(want, abs=1e-9)
    assert state.metrics["gender_ndkl"] != pytest.approx(state.baseline["gender_ndkl"], abs=1e-6)
    assert_fp32_close(state.embeddings, result.embeddings["v"])


def test_ops_build_the_edits_they_name(state, finding):
    state.toggle(5, 2)
    (zero,) = state.edits()
    assert (zero.op, zero.layer, zero.head, zero.value) == ("zero", 5, 2, None)
    state.set_op("scale", alpha=0.3)
    assert state.edits()[0].op == "scale" and state.edits()[0].value == pytest.approx(0.3)
    state.set_op("prototype: male")
    male = [c for c, n in finding.class_names.items() if n == "male"][0]
    assert torch.equal(state.edits()[0].value, finding.prototypes[male][(5, 2)].float())
    state.set_op("neutral")
    assert torch.equal(state.edits()[0].value, finding.prototypes["neutral"][(5, 2)].float())


def test_earlier_layer_needs_a_forward_pass_and_still_matches(model, data, state):
    state.toggle(2, 4)
    assert state.path == "forward"
    result, want = evaluate(model, data, state.edits())
    assert result.paths["v"] == "forward"
    assert state.metrics == pytest.approx(want, abs=1e-9)
    state.toggle(2, 4)  # off again: back to the baseline exactly
    assert state.path == "baseline" and state.metrics == state.baseline


def test_observers_and_batch(state):
    seen = []
    state.observe(lambda s: seen.append(s.heads))
    with state.batch():
        state.toggle(5, 0)
        state.toggle(5, 6)
    assert seen == [[(5, 0), (5, 6)]]  # one refresh for the whole block
    state.set_heads([(5, 1)])
    state.clear()
    assert seen[-2:] == [[(5, 1)], []]
    with pytest.raises(TypeError, match="observe needs a callable"):
        state.observe(3)


def test_export_reproduces_the_embeddings(model, data, state, tmp_path):
    state.set_op("neutral")
    state.set_heads([(5, 1), (5, 3)])
    path = state.save_spec(tmp_path / "specs" / "heads.json")
    spec = InterventionSpec.load(path)
    assert [(e.layer, e.head, e.op) for e in spec.edits] == [(5, 1, "replace"), (5, 3, "replace")]
    assert spec.provenance["method"] == "dashboard" and spec.provenance["heads"] == "L5H1, L5H3"
    with apply(model, spec):
        from workbench.evaluation import embed_images

        emb = embed_images(model, data, batch_size=128)
    assert_fp32_close(emb, state.embeddings)


def test_load_restores_toggles_and_op(model, gallery, protocol, finding, state, tmp_path):
    state.set_op("prototype: female")
    state.set_heads([(5, 7), (5, 0)])
    path = state.save_spec(tmp_path / "a.json")
    fresh = HeadState(model, gallery, protocol, finding=finding)
    fresh.load_spec(path)
    assert fresh.heads == [(5, 7), (5, 0)] and fresh.op == "prototype: female"
    assert fresh.metrics == state.metrics
    state.set_op("scale", alpha=0.4)
    fresh.load_spec(state.save_spec(tmp_path / "b.json"))
    assert (fresh.op, fresh.alpha) == ("scale", pytest.approx(0.4))
    assert "loaded L5H7, L5H0" in fresh.message


def test_load_an_experts_spec_with_other_prototypes(model, data, state, tmp_path):
    """A spec written by `workbench experts` (prototypes from another reference set): restored as op "spec" with
    its own values, and the live metrics equal evaluate_variants on the spec itself."""
    from workbench.methods.expert_heads import expert_variants, find_expert_heads, variant_spec
    from workbench.data import SynthSocial

    other = find_expert_heads(model, SynthSocial("test_balanced", n=128, seed=3), attribute="gender", progress=False)
    name = "ap_top3_neutral"
    variants = expert_variants(other, single_heads=False, combinations=False)
    spec = variant_spec(model, name, variants[name], other)
    spec.save(tmp_path / f"{name}.json")
    state.load_spec(tmp_path / f"{name}.json")
    assert state.op == "spec" and state.heads == other.selections["probe_ap"]
    assert "spec" in state.ops
    result, want = evaluate(model, data, InterventionSpec.load(tmp_path / f"{name}.json"))
    assert state.metrics == pytest.approx(want, abs=1e-9)
    damp = f"{other.selection_tag('probe_ap')}_damp0.5"
    if damp in variants:
        state.load_spec(variant_spec(model, damp, variants[damp], other))
        assert (state.op, state.alpha) == ("scale", 0.5)
    # a head the loaded spec has no value for cannot join op "spec"
    state.load_spec(tmp_path / f"{name}.json")
    free = next((5, h) for h in range(8) if (5, h) not in state.heads)
    with pytest.raises(ValueError, match=rf"the loaded spec has no value for L5H{free[1]}; choose another op"):
        state.toggle(*free)


def test_bad_input_is_refused_with_the_reason(model, state, tmp_path):
    with pytest.raises(ValueError, match=r"layer must be an int in 0..5, got 6"):
        state.toggle(6, 0)
    with pytest.raises(ValueError, match=r"head must be an int in 0..7, got -1"):
        state.toggle(0, -1)
    with pytest.raises(ValueError, match=r"unknown op 'mean'; choose one of \['zero', 'scale', 'neutral'"):
        state.set_op("mean")
    with pytest.raises(ValueError, match="alpha .* must be a finite number, got nan"):
        state.set_op("scale", alpha=float("nan"))
    with pytest.raises(ValueError, match="nothing to export: no edit is switched on"):
        state.save_spec(tmp_path / "x.json")
    state.toggle(5, 1)
    with pytest.raises(ValueError, match=r"spec files end in .json, got '.*x.txt'"):
        state.save_spec(tmp_path / "x.txt")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="the spec folder .*file' exists and is not a folder"):
        state.save_spec(blocker / "x.json")
    neuron = InterventionSpec.from_edits(model, [*ablate_heads([(5, 1)], op="zero"),
                                                 Edit(target="neuron", op="zero", layer=5, head=2, index=[3])])
    with pytest.raises(ValueError, match=r"restores head edits at the pooled token of the image tower; this spec has "
                                         r"1 other edit\(s\) \(first: a neuron edit, Edit"):
        state.load_spec(neuron)
    twice = InterventionSpec.from_edits(model, list(ablate_heads([(5, 1)], op="zero")) * 2)
    with pytest.raises(ValueError, match=r"the spec edits a head twice \(L5H1, L5H1\)"):
        state.load_spec(twice)
    doc = json.loads(state.save_spec(tmp_path / "ok.json").read_text())
    doc["model"]["fingerprint"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(doc))
    from workbench.primitives import FingerprintMismatchError

    with pytest.raises(FingerprintMismatchError, match="the weights differ"):
        state.load_spec(tmp_path / "other.json")


def test_prototype_ops_need_a_finding(model, gallery, protocol, finding):
    bare = HeadState(model, gallery, protocol)
    assert bare.ops == ["zero", "scale"]
    with pytest.raises(ValueError, match="prototype ops need a finding"):
        bare.set_op("neutral")
    from workbench.methods.expert_heads import find_expert_heads

    last = HeadState(model, gallery, protocol, finding=find_expert_heads(
        model, gallery.dataset, attribute="gender", layers="last", progress=False))
    last.set_op("neutral")
    with pytest.raises(ValueError, match=r"no prototype for L0H0: the finding covers layers \[5\]; build it with "
                                         r"layers='all'"):
        last.toggle(0, 0)
    assert last.heads == []
