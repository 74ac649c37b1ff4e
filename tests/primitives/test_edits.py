"""Edit: field validation, hook resolution, model checks, ops by hand, and composition into one hook fn."""
import numpy as np
import pytest
import torch

from workbench.primitives.edits import Edit, EditError, EditTargetError, apply_op, edits_to_hooks


# ---------------------------------------------------------------------------------------------- fields
@pytest.mark.parametrize("kwargs, message", [
    (dict(site="heads", op="zero", layer=0, head=0), "unknown site 'heads'"),
    (dict(site="head", op="ablate", layer=0, head=0), "unknown op 'ablate'"),
    (dict(site="head", op="zero", layer=0, head=0, position="first"), "unknown position 'first'"),
    (dict(site="head", op="zero", layer=0, head=0, tower="audio"), "unknown tower 'audio'"),
    (dict(site="head", op="zero", head=0), "needs `layer`"),
    (dict(site="head", op="zero", layer=0), "needs `head`"),
    (dict(site="head", op="zero", layer=-1, head=0), "layer must be a non-negative int"),
    (dict(site="head", op="zero", layer=1.0, head=0), "layer must be a non-negative int"),
    (dict(site="head", op="zero", layer=True, head=0), "layer must be a non-negative int"),
    (dict(site="head", op="zero", layer=0, head=0, index=3), "takes no `index`"),
    (dict(site="head", op="zero", layer=0, head=0, value=1.0), "takes no value"),
    (dict(site="head", op="replace", layer=0, head=0), "needs a value"),
    (dict(site="head", op="replace", layer=0, head=0, value=0.5), "needs a vector [d_model]"),
    (dict(site="head", op="scale", layer=0, head=0, value=0.1, scale=2.0), "scale=2.0 only applies to add/project_out"),
    (dict(site="neuron", op="zero", layer=0), "needs `index`"),
    (dict(site="neuron", op="zero", layer=0, index=[]), "index is an empty list"),
    (dict(site="neuron", op="zero", layer=0, index=[1, 1]), "duplicates"),
    (dict(site="neuron", op="zero", layer=0, index=[1, 2.0]), "only ints"),
    (dict(site="neuron", op="zero", layer=0, index=-2), "index must be >= 0"),
    (dict(site="neuron", op="zero", layer=0, index=1, hook="blocks.0.hook_resid_post"), "`hook` is only for"),
    (dict(site="direction", op="zero", layer=0, value=[1.0]), "not available for site 'direction'"),
    (dict(site="direction", op="add", value=[1.0]), "exactly one of `layer`"),
    (dict(site="direction", op="add", layer=0, hook="hook_image_embed", value=[1.0]), "exactly one of `layer`"),
    (dict(site="direction", op="add", hook="text.hook_text_embed", value=[1.0]), "belongs to the text tower"),
    (dict(site="direction", op="add", layer=0, head=1, value=[1.0]), "takes no `head`"),
    (dict(site="direction", op="project_out", layer=0, value=[0.0, 0.0]), "zero vector"),
    (dict(site="direction", op="project_out", layer=0, value=2.0), "needs a direction vector"),
    (dict(site="direction", op="add", layer=0, value=[[1.0, 2.0]], position="cls"), "needs position='all'"),
    (dict(site="direction", op="add", layer=0, value=[float("nan")]), "NaN or inf"),
    (dict(site="direction", op="add", layer=0, value=[1e39]), "NaN or inf"),
    (dict(site="direction", op="add", layer=0, value=torch.zeros(2, 2, 2), position="all"), "shape (2, 2, 2)"),
    (dict(site="direction", op="add", layer=0, value=True), "got a bool"),
    (dict(site="direction", op="add", layer=0, value="1.0"), "a list of numbers or a tensor, got str"),
    (dict(site="direction", op="add", layer=0, value=[1.0], scale=float("inf")), "scale must be a finite number"),
    (dict(site="sae_latent", op="project_out", layer=0, index=1, value=[1.0]), "not available for site 'sae_latent'"),
    (dict(site="sae_latent", op="set", layer=0, value=0.0), "needs `index`"),
])
def test_malformed_edits_raise_specific_errors(kwargs, message):
    with pytest.raises(EditError) as info:
        Edit(**kwargs)
    assert message in str(info.value)


def test_values_and_indices_are_canonicalised():
    e = Edit(site="neuron", op="replace", layer=0, index=np.array([4, 2]), value=[1, 2])
    assert e.index == (4, 2)
    assert e.value.dtype == torch.float32 and e.value.tolist() == [1.0, 2.0]
    assert Edit(site="neuron", op="scale", layer=0, index=torch.tensor(3), value=torch.tensor(0.5, dtype=torch.float64)).value == 0.5
    assert isinstance(Edit(site="neuron", op="set", layer=0, index=1, value=2).value, float)
    # float64 tensors become float32: the precision specs round-trip in
    v64 = torch.tensor([0.1, 0.2], dtype=torch.float64)
    assert torch.equal(Edit(site="direction", op="add", layer=0, value=v64).value, v64.float())


def test_equality_compares_tensor_values_bitwise():
    a = Edit(site="direction", op="add", layer=1, value=torch.tensor([1.0, 2.0]))
    assert a == Edit(site="direction", op="add", layer=1, value=[1.0, 2.0])
    assert a != Edit(site="direction", op="add", layer=1, value=[1.0, 2.0000002])
    assert a != Edit(site="direction", op="add", layer=1, value=[1.0, 2.0], scale=2.0)
    assert "L1" in repr(a) and "add[2]" in repr(a)


# ---------------------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("kwargs, hook", [
    (dict(site="head", op="zero", layer=2, head=1), "blocks.2.attn.hook_cls_result"),
    (dict(site="head", op="zero", layer=2, head=1, position="all"), "blocks.2.attn.hook_result"),
    (dict(site="neuron", op="zero", layer=1, head=3, index=[0, 5]), "blocks.1.attn.hook_cls_result"),
    (dict(site="neuron", op="zero", layer=1, head=3, index=5, position="all"), "blocks.1.attn.hook_result"),
    (dict(site="neuron", op="zero", layer=0, index=7), "blocks.0.mlp.hook_post"),
    (dict(site="neuron", op="zero", layer=0, index=7, position="all", tower="text"), "text.blocks.0.mlp.hook_post"),
    (dict(site="head", op="zero", layer=1, head=0, tower="text"), "text.blocks.1.attn.hook_cls_result"),
    (dict(site="direction", op="add", layer=2, value=[1.0]), "blocks.2.hook_resid_post"),
    (dict(site="direction", op="add", hook="hook_image_embed", value=[1.0]), "hook_image_embed"),
    (dict(site="sae_latent", op="set", layer=2, index=3, value=0.0), "blocks.2.hook_resid_post"),
])
def test_hook_names_follow_the_mapping(kwargs, hook):
    assert Edit(**kwargs).hook_name() == hook


def test_sae_latent_edits_target_a_spliced_sae_directly():
    class Spliced:  # a model with an SAE spliced at blocks.2.hook_resid_post exposes its latents as a hook
        hook_dict = {"blocks.2.hook_resid_post.hook_sae_acts_post": None}

    e = Edit(site="sae_latent", op="set", layer=2, index=3, value=0.0)
    assert e.hook_name(Spliced()) == "blocks.2.hook_resid_post.hook_sae_acts_post"
    z = torch.rand(2, 5, 8) + 0.5
    (name, fn), = edits_to_hooks(Spliced(), [e], validate=False)
    out = fn(z, None)
    expected = z.clone()
    expected[:, 0, 3] = 0.0
    assert name == "blocks.2.hook_resid_post.hook_sae_acts_post" and torch.equal(out, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(site="head", op="zero", layer=3, head=0), "layer 3 out of range; the image tower has layers 0..2"),
    (dict(site="head", op="zero", layer=0, head=4), "head 4 out of range"),
    (dict(site="head", op="zero", layer=2, head=0, tower="text"), "layer 2 out of range; the text tower"),
    (dict(site="neuron", op="zero", layer=0, index=[1, 256]), "index [256] out of range; d_mlp is 256"),
    (dict(site="neuron", op="zero", layer=0, head=1, index=64), "index [64] out of range; d_model"),
    (dict(site="head", op="replace", layer=0, head=0, value=torch.zeros(63)), "expected [64]"),
    (dict(site="head", op="replace", layer=0, head=0, value=torch.zeros(17, 63), position="all"), "expected [64] or [17, 64]"),
    (dict(site="neuron", op="replace", layer=0, index=[1, 2], value=[1.0, 2.0, 3.0]), "expected [2]"),
    (dict(site="direction", op="add", layer=0, value=torch.zeros(32)), "(the hook's width = 64)"),
    (dict(site="direction", op="add", hook="hook_image_embed", value=torch.zeros(64)), "= 32)"),
    (dict(site="direction", op="add", hook="hook_image_embed", value=torch.zeros(17, 32), position="all"), "expected [32] ("),
    (dict(site="direction", op="add", hook="blocks.0.attn.hook_pattern", value=[1.0]), "not a stream hook"),
    (dict(site="direction", op="add", hook="blocks.9.hook_resid_post", value=[1.0]), "no hook point named"),
    (dict(site="neuron", op="zero", layer=0, index=1, tower="text"), "position='cls' is not supported here for the text tower"),
    (dict(site="sae_latent", op="set", layer=0, index=1, value=0.0), "needs an SAE"),
])
def test_edits_that_do_not_fit_the_model_are_rejected(model, kwargs, message):
    with pytest.raises(EditTargetError) as info:
        edits_to_hooks(model, [Edit(**kwargs)])
    assert message in str(info.value)


def test_text_cls_is_allowed_on_pooled_hooks_and_head_sites(model):
    edits = [Edit(site="direction", op="add", hook="text.hook_text_embed", tower="text", value=torch.ones(32)),
             Edit(site="neuron", op="zero", layer=0, head=1, index=2, tower="text")]
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
    replace = Edit(site="head", op="replace", layer=1, head=2, value=proto)
    double = Edit(site="head", op="scale", layer=1, head=2, value=2.0)
    other = Edit(site="head", op="zero", layer=1, head=0)
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
    edits = [Edit(site="neuron", op="zero", layer=2, index=1), Edit(site="head", op="zero", layer=0, head=0),
             Edit(site="neuron", op="scale", layer=2, index=[1, 2], value=0.5)]
    assert [n for n, _ in edits_to_hooks(model, edits)] == ["blocks.2.mlp.hook_post", "blocks.0.attn.hook_cls_result"]


def test_single_edit_hook_fn_matches_edits_to_hooks(model):
    e = Edit(site="neuron", op="scale", layer=0, index=[3, 9], value=torch.tensor([0.5, -1.0]), position="all")
    x = torch.randn(2, 17, 256)
    expected = x.clone()
    expected[..., 3] *= 0.5
    expected[..., 9] *= -1.0
    assert torch.equal(e.hook_fn(model)(x, None), expected)
    assert torch.equal(e.hook_fn()(x, None), expected)


def test_a_value_that_does_not_fit_a_hook_fails_with_the_edit_named():
    e = Edit(site="direction", op="add", hook="blocks.0.hook_resid_post", value=torch.ones(5))
    with pytest.raises(EditTargetError, match="does not fit activations of shape"):
        e.hook_fn()(torch.zeros(2, 3, 4), None)


def test_edits_to_hooks_rejects_non_edits_and_bad_alpha(model):
    with pytest.raises(EditError, match="edits\\[0\\] is a dict"):
        edits_to_hooks(model, [{"site": "head"}])
    with pytest.raises(EditError, match="alpha must be a finite number"):
        edits_to_hooks(model, [], alpha=float("nan"))
