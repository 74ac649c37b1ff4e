"""Edit: field validation, hook resolution, model checks, ops by hand, the op registry, the JSON form, and
composition into one hook fn."""
import numpy as np
import pytest
import torch

from workbench.primitives import (Edit, EditError, EditTargetError, apply_op, edit_hook_fn, edits_to_hooks,
                                  op_names, register_op)
from workbench.primitives import ops as ops_module


# ---------------------------------------------------------------------------------------------- fields
@pytest.mark.parametrize("kwargs, message", [
    (dict(target="heads", op="zero", layer=0, head=0), "unknown target 'heads'"),
    (dict(target="head", op="ablate", layer=0, head=0), "unknown op 'ablate'"),
    (dict(target="head", op="zero", layer=0, head=0, position="first"), "unknown position 'first'"),
    (dict(target="head", op="zero", layer=0, head=0, tower="audio"), "unknown tower 'audio'"),
    (dict(target="head", op="zero", head=0), "needs `layer`"),
    (dict(target="head", op="zero", layer=0), "needs `head`"),
    (dict(target="head", op="zero", layer=-1, head=0), "layer must be a non-negative int"),
    (dict(target="head", op="zero", layer=1.0, head=0), "layer must be a non-negative int"),
    (dict(target="head", op="zero", layer=True, head=0), "layer must be a non-negative int"),
    (dict(target="head", op="zero", layer=0, head=0, index=3), "takes no `index`"),
    (dict(target="head", op="zero", layer=0, head=0, value=1.0), "takes no value"),
    (dict(target="head", op="replace", layer=0, head=0), "needs a value"),
    (dict(target="head", op="replace", layer=0, head=0, value=0.5), "needs a vector [d_model]"),
    (dict(target="head", op="scale", layer=0, head=0, value=0.1, scale=2.0), "scale=2.0 only applies to add/project_out"),
    (dict(target="neuron", op="zero", layer=0), "needs `index`"),
    (dict(target="neuron", op="zero", layer=0, index=[]), "index is an empty list"),
    (dict(target="neuron", op="zero", layer=0, index=[1, 1]), "duplicates"),
    (dict(target="neuron", op="zero", layer=0, index=[1, 2.0]), "only ints"),
    (dict(target="neuron", op="zero", layer=0, index=-2), "index must be >= 0"),
    (dict(target="neuron", op="zero", layer=0, index=1, hook="blocks.0.hook_resid_post"), "`hook` is only for"),
    (dict(target="direction", op="zero", layer=0, value=[1.0]), "not available for target 'direction'"),
    (dict(target="direction", op="add", value=[1.0]), "exactly one of `layer`"),
    (dict(target="direction", op="add", layer=0, hook="hook_image_embed", value=[1.0]), "exactly one of `layer`"),
    (dict(target="direction", op="add", hook="text.hook_text_embed", value=[1.0]), "belongs to the text tower"),
    (dict(target="direction", op="add", layer=0, head=1, value=[1.0]), "takes no `head`"),
    (dict(target="direction", op="project_out", layer=0, value=[0.0, 0.0]), "zero vector"),
    (dict(target="direction", op="project_out", layer=0, value=2.0), "needs a vector [d] as value (the direction to remove"),
    (dict(target="head", op="scale", layer=0, head=0, value=0.5, reference=1.0), "reference only applies to modulate"),
    (dict(target="head", op="modulate", layer=0, head=0, value=0.5, reference=[[1.0]]), "per-position reference"),
    (dict(target="head", op="modulate", layer=0, head=0), "needs a value (the modulation M"),
    (dict(target="head", op="modulate", layer=0, head=0, value=0.5, reference="m"), "reference must be a number"),
    (dict(target="neuron", op="modulate", layer=0, value=0.5), "needs `index`"),
    (dict(target="direction", op="add", layer=0, value=[[1.0, 2.0]], position="cls"), "needs position='all'"),
    (dict(target="direction", op="add", layer=0, value=[float("nan")]), "NaN or inf"),
    (dict(target="direction", op="add", layer=0, value=[1e39]), "NaN or inf"),
    (dict(target="direction", op="add", layer=0, value=torch.zeros(2, 2, 2), position="all"), "shape (2, 2, 2)"),
    (dict(target="direction", op="add", layer=0, value=True), "got a bool"),
    (dict(target="direction", op="add", layer=0, value="1.0"), "a list of numbers or a tensor, got str"),
    (dict(target="direction", op="add", layer=0, value=[1.0], scale=float("inf")), "scale must be a finite number"),
    (dict(target="sae_latent", op="project_out", layer=0, index=1, value=[1.0]), "not available for target 'sae_latent'"),
    (dict(target="sae_latent", op="set", layer=0, value=0.0), "needs `index`"),
    (dict(target="head", op="zero", layer=0, head=0, position=3), "unknown position 3"),
])
def test_malformed_edits_raise_specific_errors(kwargs, message):
    with pytest.raises(EditError) as info:
        Edit(**kwargs)
    assert message in str(info.value)


def test_values_and_indices_are_canonicalised():
    e = Edit(target="neuron", op="replace", layer=0, index=np.array([4, 2]), value=[1, 2])
    assert e.index == (4, 2)
    assert e.value.dtype == torch.float32 and e.value.tolist() == [1.0, 2.0]
    assert Edit(target="head", op="zero", layer=0, head=0, position="cls").position == "pooled"  # the alias
    assert Edit(target="neuron", op="scale", layer=0, index=torch.tensor(3), value=torch.tensor(0.5, dtype=torch.float64)).value == 0.5
    assert isinstance(Edit(target="neuron", op="set", layer=0, index=1, value=2).value, float)
    # float64 tensors become float32: the precision specs round-trip in
    v64 = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert torch.equal(Edit(target="direction", op="add", layer=0, value=v64).value, v64.float())
    # values are copies: changing the caller's tensor later does not change the edit
    v = torch.ones(3)
    e = Edit(target="direction", op="add", layer=0, value=v)
    v.mul_(5)
    assert e.value.tolist() == [1.0, 1.0, 1.0]


def test_equality_compares_tensor_values_bitwise():
    a = Edit(target="direction", op="add", layer=1, value=torch.tensor([1.0, 2.0]))
    assert a == Edit(target="direction", op="add", layer=1, value=[1.0, 2.0])
    assert a != Edit(target="direction", op="add", layer=1, value=[1.0, 2.0000002])
    assert a != Edit(target="direction", op="add", layer=1, value=[1.0, 2.0], scale=2.0)
    assert "L1" in repr(a) and "add[2]" in repr(a)


# ---------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("kwargs, hook", [
    (dict(target="head", op="zero", layer=2, head=1), "blocks.2.attn.hook_cls_result"),
    (dict(target="head", op="zero", layer=2, head=1, position="all"), "blocks.2.attn.hook_result"),
    (dict(target="neuron", op="zero", layer=1, head=3, index=[0, 5]), "blocks.1.attn.hook_cls_result"),
    (dict(target="neuron", op="zero", layer=1, head=3, index=5, position="all"), "blocks.1.attn.hook_result"),
    (dict(target="neuron", op="zero", layer=0, index=7), "blocks.0.mlp.hook_post"),
    (dict(target="neuron", op="zero", layer=0, index=7, position="all", tower="text"), "text.blocks.0.mlp.hook_post"),
    (dict(target="head", op="zero", layer=1, head=0, tower="text"), "text.blocks.1.attn.hook_cls_result"),
    (dict(target="direction", op="add", layer=2, value=[1.0]), "blocks.2.hook_resid_post"),
    (dict(target="direction", op="add", hook="hook_image_embed", value=[1.0]), "hook_image_embed"),
    (dict(target="sae_latent", op="set", layer=2, index=3, value=0.0), "blocks.2.hook_resid_post"),
])
def test_hook_names_follow_the_mapping(kwargs, hook):
    assert Edit(**kwargs).hook_name() == hook


def test_sae_latent_edits_target_a_spliced_sae_directly():
    class Spliced:  # a model with an SAE spliced at blocks.2.hook_resid_post exposes its latents as a hook
        hook_dict = {"blocks.2.hook_resid_post.hook_sae_acts_post": None}

    e = Edit(target="sae_latent", op="set", layer=2, index=3, value=0.0)
    assert e.hook_name(Spliced()) == "blocks.2.hook_resid_post.hook_sae_acts_post"
    z = torch.rand(2, 5, 8) + 0.5
    (name, fn), = edits_to_hooks(Spliced(), [e], validate=False)
    out = fn(z, None)
    expected = z.clone()
    expected[:, 0, 3] = 0.0
    assert name == "blocks.2.hook_resid_post.hook_sae_acts_post" and torch.equal(out, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="head", op="zero", layer=3, head=0), "layer 3 out of range; the image tower has layers 0..2"),
    (dict(target="head", op="zero", layer=0, head=4), "head 4 out of range"),
    (dict(target="head", op="zero", layer=2, head=0, tower="text"), "layer 2 out of range; the text tower"),
    (dict(target="neuron", op="zero", layer=0, index=[1, 256]), "index [256] out of range; d_mlp is 256"),
    (dict(target="neuron", op="zero", layer=0, head=1, index=64), "index [64] out of range; d_model"),
    (dict(target="head", op="replace", layer=0, head=0, value=torch.zeros(63)), "expected [64]"),
    (dict(target="head", op="replace", layer=0, head=0, value=torch.zeros(17, 63), position="all"), "expected [64] or [17, 64]"),
    (dict(target="neuron", op="replace", layer=0, index=[1, 2], value=[1.0, 2.0, 3.0]), "expected [2]"),
    (dict(target="direction", op="add", layer=0, value=torch.zeros(32)), "(the hook's width = 64)"),
    (dict(target="direction", op="add", hook="hook_image_embed", value=torch.zeros(64)), "= 32)"),
    (dict(target="direction", op="add", hook="hook_image_embed", value=torch.zeros(17, 32), position="all"), "expected [32] ("),
    (dict(target="direction", op="add", hook="blocks.0.attn.hook_pattern", value=[1.0]), "not a stream hook"),
    (dict(target="direction", op="add", hook="blocks.9.hook_resid_post", value=[1.0]),
     "no hook point named 'blocks.9.hook_resid_post' in this model (did you mean 'blocks.2.hook_resid_post'"),
    (dict(target="neuron", op="zero", layer=0, index=1, tower="text"), "position='pooled' is not supported here for the text tower"),
    (dict(target="head", op="modulate", layer=0, head=0, value=0.5, reference=torch.zeros(63)),
     "reference has shape [63], expected [64]"),
    (dict(target="sae_latent", op="modulate", layer=0, value=torch.ones(5)), "needs an SAE"),
    (dict(target="sae_latent", op="set", layer=0, index=1, value=0.0), "needs an SAE"),
])
def test_edits_that_do_not_fit_the_model_are_rejected(model, kwargs, message):
    with pytest.raises(EditTargetError) as info:
        edits_to_hooks(model, [Edit(**kwargs)])
    assert message in str(info.value)


def test_text_cls_is_allowed_on_pooled_hooks_and_head_sites(model):
    edits = [Edit(target="direction", op="add", hook="text.hook_text_embed", tower="text", value=torch.ones(32)),
             Edit(target="neuron", op="zero", layer=0, head=1, index=2, tower="text")]
    names = [n for n, _ in edits_to_hooks(model, edits)]
    assert names == ["text.hook_text_embed", "text.blocks.0.attn.hook_cls_result"]


# ---------------------------------------------------------------------------------------------- ops by hand
def test_ops_on_hand_computed_examples():
    v = torch.tensor([[3.0, 4.0], [1.0, -2.0]])
    assert torch.equal(apply_op(v, "zero", None), torch.zeros(2, 2))
    assert torch.equal(apply_op(v, "replace", torch.tensor([7.0, 8.0])), torch.tensor([[7.0, 8.0], [7.0, 8.0]]))
    assert torch.equal(apply_op(v, "set", 5.0), torch.full((2, 2), 5.0))
    assert torch.equal(apply_op(v, "scale", 0.5), torch.tensor([[1.5, 2.0], [0.5, -1.0]]))
    assert torch.equal(apply_op(v, "scale", torch.tensor([0.0, 2.0])), torch.tensor([[0.0, 8.0], [0.0, -4.0]]))
    assert torch.equal(apply_op(v, "add", torch.tensor([1.0, 1.0]), scale=2.0), torch.tensor([[5.0, 6.0], [3.0, 0.0]]))
    # project out the x axis (given unnormalised): only the y coordinate survives; half-strength halves x
    assert torch.equal(apply_op(v, "project_out", torch.tensor([2.0, 0.0])), torch.tensor([[0.0, 4.0], [0.0, -2.0]]))
    assert torch.equal(apply_op(v, "project_out", torch.tensor([2.0, 0.0]), scale=0.5), torch.tensor([[1.5, 4.0], [0.5, -2.0]]))
    # along the diagonal: [3, 4] − ((3 + 4)/2)·[1, 1] = [−0.5, 0.5]
    assert torch.allclose(apply_op(v[:1], "project_out", torch.tensor([1.0, 1.0])), torch.tensor([[-0.5, 0.5]]))


# ---------------------------------------------------------------------------------------------- composition
def test_edits_on_one_hook_compose_in_order_into_one_fn(model, images):
    proto = torch.randn(64, generator=torch.Generator().manual_seed(1))
    replace = Edit(target="head", op="replace", layer=1, head=2, value=proto)
    double = Edit(target="head", op="scale", layer=1, head=2, value=2.0)
    other = Edit(target="head", op="zero", layer=1, head=0)
    hooks = edits_to_hooks(model, [replace, double, other])
    assert [n for n, _ in hooks] == ["blocks.1.attn.hook_cls_result"]  # ONE hook fn for three edits
    x = torch.randn(3, 4, 64)
    out = hooks[0][1](x, None)
    assert torch.equal(out[:, 2], (2.0 * proto).expand(3, 64))  # replace, then scale
    assert torch.equal(out[:, 0], torch.zeros(3, 64))
    assert torch.equal(out[:, [1, 3]], x[:, [1, 3]])
    reversed_out = edits_to_hooks(model, [double, replace])[0][1](x, None)
    assert torch.equal(reversed_out[:, 2], proto.expand(3, 64))  # scale, then replace: the prototype wins
    assert torch.equal(x, x.clone()) and out is not x  # the input is not modified in place


def test_edits_on_different_hooks_give_one_fn_per_hook_in_first_seen_order(model):
    edits = [Edit(target="neuron", op="zero", layer=2, index=1), Edit(target="head", op="zero", layer=0, head=0),
             Edit(target="neuron", op="scale", layer=2, index=[1, 2], value=0.5)]
    assert [n for n, _ in edits_to_hooks(model, edits)] == ["blocks.2.mlp.hook_post", "blocks.0.attn.hook_cls_result"]


def test_single_edit_hook_fn_matches_edits_to_hooks(model):
    e = Edit(target="neuron", op="scale", layer=0, index=[3, 9], value=torch.tensor([0.5, -1.0]), position="all")
    x = torch.randn(2, 17, 256)
    expected = x.clone()
    expected[..., 3] *= 0.5
    expected[..., 9] *= -1.0
    assert torch.equal(edit_hook_fn(e, model)(x, None), expected)
    assert torch.equal(edit_hook_fn(e)(x, None), expected)


def test_a_value_that_does_not_fit_a_hook_fails_with_the_edit_named():
    e = Edit(target="direction", op="add", hook="blocks.0.hook_resid_post", value=torch.ones(5))
    with pytest.raises(EditTargetError, match="does not fit activations of shape"):
        edit_hook_fn(e)(torch.zeros(2, 3, 4), None)


def test_edits_to_hooks_rejects_non_edits_and_bad_alpha(model):
    with pytest.raises(EditError, match="edits\\[0\\] is a dict"):
        edits_to_hooks(model, [{"target": "head"}])
    with pytest.raises(EditError, match="alpha must be a finite number"):
        edits_to_hooks(model, [], alpha=float("nan"))


# ---------------------------------------------------------------------------------------------- modulate and the registry
def test_modulate_is_m_times_v_plus_one_minus_m_times_reference():
    v = torch.tensor([[3.0, 4.0, -1.0], [1.0, -2.0, 0.5]])
    M, m = torch.tensor([1.0, 0.0, 0.25]), torch.tensor([9.0, 7.0, 2.0])
    assert torch.equal(apply_op(v, "modulate", M, reference=m),
                       torch.tensor([[3.0, 7.0, 1.25], [1.0, 7.0, 1.625]]))  # M=1 keeps v, M=0 gives m
    assert torch.equal(apply_op(v, "modulate", M), M * v)  # reference 0
    assert torch.equal(apply_op(v, "modulate", 0.5, reference=1.0), 0.5 * v + 0.5)


def test_modulate_edits_on_heads_and_neurons(model):
    M = torch.rand(64, generator=torch.Generator().manual_seed(0))
    m = torch.randn(64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 4, 64)
    e = Edit(target="head", op="modulate", layer=1, head=2, value=M, reference=m)
    out = edit_hook_fn(e, model)(x, None)
    assert torch.equal(out[:, 2], M * x[:, 2] + (1 - M) * m) and torch.equal(out[:, [0, 1, 3]], x[:, [0, 1, 3]])
    n = Edit(target="neuron", op="modulate", layer=0, index=[3, 9], value=[0.5, 2.0], reference=1.0, position="all")
    y = torch.randn(2, 17, 256)
    expected = y.clone()
    expected[..., [3, 9]] = torch.tensor([0.5, 2.0]) * y[..., [3, 9]] + (1 - torch.tensor([0.5, 2.0])) * 1.0
    assert torch.equal(edit_hook_fn(n, model)(y, None), expected)


@pytest.fixture
def registry(monkeypatch):
    """The op registry, restored after the test."""
    monkeypatch.setattr(ops_module, "_REGISTRY", dict(ops_module._REGISTRY))
    return ops_module._REGISTRY


def test_a_new_op_is_one_register_op_call(model, registry):
    register_op("clamp_max", lambda v, value, scale, reference: v.clamp(max=value), targets=("neuron",),
                value_hint="the upper bound")
    assert "clamp_max" in op_names() and op_names("head") == [n for n in op_names("head") if n != "clamp_max"]
    e = Edit(target="neuron", op="clamp_max", layer=0, index=[1, 2], value=0.25, position="all")
    assert Edit.from_dict(e.to_dict()) == e
    x = torch.rand(2, 17, 256) + 0.5
    out = edit_hook_fn(e, model)(x, None)
    assert torch.equal(out[..., 1:3], torch.full((2, 17, 2), 0.25)) and torch.equal(out[..., 3:], x[..., 3:])
    with pytest.raises(EditError, match="op 'clamp_max' is not available for target 'head'"):
        Edit(target="head", op="clamp_max", layer=0, head=0, value=torch.ones(64))
    with pytest.raises(EditError, match=r"op 'clamp_max' needs a value \(the upper bound\)"):
        Edit(target="neuron", op="clamp_max", layer=0, index=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="scale", fn=lambda *a: a[0]), "op 'scale' is already registered; pass replace=True"),
    (dict(name="my op", fn=lambda *a: a[0]), "op names are identifiers"),
    (dict(name="x", fn=3), "fn must be callable"),
    (dict(name="x", fn=lambda *a: a[0], targets=("heads",)), "targets must be a non-empty subset"),
])
def test_bad_registrations(registry, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        register_op(**kwargs)


# ---------------------------------------------------------------------------------------------- JSON form
def test_to_dict_from_dict_round_trip_and_tensor_callbacks():
    e = Edit(target="sae_latent", op="modulate", hook="text.hook_text_embed", tower="text", value=torch.rand(20),
             reference=torch.randn(20), position="cls")
    d = e.to_dict()
    assert d["target"] == "sae_latent" and d["position"] == "pooled" and "scale" not in d and len(d["reference"]) == 20
    assert Edit.from_dict(d) == e
    store = {}

    def to_json(name, t):
        store[name] = t
        return {"sidecar": name}

    ref = e.to_dict(to_json)
    assert ref["value"] == {"sidecar": "value"} and ref["reference"] == {"sidecar": "reference"}
    assert Edit.from_dict(ref, lambda name, obj: store[obj["sidecar"]]) == e
    plain = Edit(target="head", op="zero", layer=1, head=2).to_dict()
    assert plain == {"target": "head", "op": "zero", "layer": 1, "head": 2, "index": None, "position": "pooled",
                     "tower": "image", "value": None}


@pytest.mark.parametrize("d, message", [
    ({"op": "zero"}, "missing key(s) ['target']"),
    ({"target": "head", "op": "zero", "layer": 0, "head": 0, "site": "head"}, "unknown key(s) ['site']"),
    ({"target": "head", "op": "zero", "layer": 0, "head": 0, "position": None}, "position: must not be null"),
    ({"target": "direction", "op": "add", "layer": 0, "value": [1.0], "scale": "2"}, "scale: expected a number"),
    ({"target": "direction", "op": "add", "layer": 0, "value": [[1.0], [1.0, 2.0]]}, "value: nested lists must be rectangular"),
    ({"target": "direction", "op": "add", "layer": 0, "value": {"sidecar": "k"}}, "needs a sidecar to read from"),
    ({"target": "direction", "op": "add", "layer": 0, "value": "1"}, "value: expected null, a number"),
    (["target"], "an edit must be an object, got list"),
])
def test_from_dict_errors_name_the_key(d, message):
    with pytest.raises(EditError) as info:
        Edit.from_dict(d)
    assert message in str(info.value)
