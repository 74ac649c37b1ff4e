"""CLSTail: the last image block re-run at the pooled token from one cached pass equals a full forward under
the same edits (fp32 tolerance), on the shipped model and a random-weight tower with LayerScale; what it
cannot run is refused with a message saying why."""
import pytest
import torch

from tests.models.archs import build_pair
from tests.tolerance import assert_fp32_close
from workbench.data import SynthSocial
from workbench.models import load_clip
from workbench.models.cls_tail import CLSTail, tail_hook_names
from workbench.models.hook_names import act_name
from workbench.primitives import Edit, ablate_heads, ablate_neurons, edits_to_hooks, intervene


@pytest.fixture(scope="module")
def shipped():
    model = load_clip("synthsocial")
    images, _ = SynthSocial("test_balanced", seed=3, n=64).tensors()
    return model, model.preprocess(images)


@pytest.fixture(scope="module")
def random_tower():
    _, model = build_pair("wb-tiny")  # LayerScale, no ln_pre: other branches of the block
    g = torch.Generator().manual_seed(0)
    return model, torch.randn(24, 3, 32, 32, generator=g)


def _cases(model):
    cfg = model.visual.cfg
    L, H, d, d_mlp = cfg.n_layers - 1, cfg.n_heads, cfg.d_model, cfg.d_mlp
    g = torch.Generator().manual_seed(1)
    proto = torch.randn(d, generator=g)
    heads = [(L, 0), (L, H - 1)]
    return {
        "zero heads": ablate_heads(heads, op="zero"),
        "replace heads": ablate_heads(heads, op="replace", value=proto),
        "scale heads": ablate_heads(heads, op="scale", factor=0.1),
        "head coordinates": ablate_neurons([(L, 1, [0, 5, d - 1])], op="scale", factor=0.1)
        + ablate_neurons([(L, 2, 3)], op="set", value=0.7),
        "mlp neurons": ablate_neurons([(L, None, [0, 7, d_mlp - 1])], op="zero")
        + ablate_neurons([(L, None, [2, 3])], op="scale", factor=3.0),
        "mix": ablate_heads([(L, 1)], op="replace", value=proto) + ablate_heads([(L, 0)], op="zero")
        + ablate_neurons([(L, 2, [1, 2])], op="scale", factor=0.0) + ablate_neurons([(L, None, [4])], op="set", value=2.0)
        + [Edit(target="head", op="add", layer=L, head=3, value=proto, scale=0.5)],
    }


@pytest.mark.parametrize("which", ["shipped", "random_tower"])
def test_tail_equals_a_full_forward_under_every_edit(which, request):
    model, x = request.getfixturevalue(which)
    tail = CLSTail.capture(model, x, batch_size=10)
    with torch.no_grad():
        clean = model.encode_image(x)
    assert torch.equal(tail.image_embed, clean)  # the capture pass is the clean forward itself
    assert_fp32_close(tail.encode(), clean, msg="no edits")
    for name, iv in _cases(model).items():
        with torch.no_grad(), intervene(model, iv):
            full = model.encode_image(x)
        fast = tail.encode(edits_to_hooks(model, iv.edits), batch_size=7)
        assert (full - clean).abs().max() > 1e-3, name  # the edit does something
        assert_fp32_close(fast, full, msg=name)
    normalised = tail.encode(edits_to_hooks(model, _cases(model)["mix"].edits), normalize=True)
    torch.testing.assert_close(normalised.norm(dim=-1), torch.ones(len(x)))


def test_tail_runs_hooks_after_attention_too(shipped):
    model, x = shipped
    L = model.visual.cfg.n_layers - 1
    tail = CLSTail.capture(model, x)

    def double(t, hook=None):
        return 2 * t

    for name in (act_name("resid_mid", L), act_name("mlp_pre", L), act_name("ln_post_normalized"),
                 act_name("image_embed")):
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, double)]):
            full = model.encode_image(x)
        assert_fp32_close(tail.encode([(name, double)]), full, msg=name)


def test_tail_hook_names_are_the_last_block_after_attention(shipped):
    model, _ = shipped
    names = tail_hook_names(model)
    assert "blocks.5.attn.hook_cls_result" in names and "blocks.5.mlp.hook_post" in names
    assert "hook_image_embed" in names and "ln_post.hook_normalized" in names
    assert not any(n.startswith(("blocks.4.", "text.")) for n in names)
    assert "blocks.5.hook_resid_pre" not in names and "blocks.5.attn.hook_z" not in names


def test_tail_refuses_what_it_cannot_run(shipped):
    model, x = shipped
    tail = CLSTail.capture(model, x[:8])
    early = edits_to_hooks(model, ablate_heads([(4, 1)], op="zero").edits)
    with pytest.raises(ValueError, match=r"cannot run a hook at 'blocks.4.attn.hook_cls_result'.*forward pass"):
        tail.encode(early)
    everywhere = edits_to_hooks(model, ablate_heads([(5, 1)], op="zero", position="all").edits)
    with pytest.raises(ValueError, match="cannot run a hook at 'blocks.5.attn.hook_result'"):
        tail.encode(everywhere)
    with pytest.raises(TypeError, match=r"\(hook_name, fn\) pairs"):
        tail.encode(["blocks.5.attn.hook_cls_result"])
    hooks = edits_to_hooks(model, ablate_heads([(5, 1)], op="zero").edits)
    with intervene(model, ablate_heads([(5, 2)], op="zero")):
        with pytest.raises(ValueError, match="already attached .*apply them twice"):
            CLSTail.capture(model, x[:8])
        with pytest.raises(ValueError, match="already attached"):
            tail.encode(hooks)
    with pytest.raises(ValueError, match="gallery is empty"):
        CLSTail.capture(model, x[:0])


def test_tail_refuses_an_average_pooled_tower():
    _, model = build_pair("wb-tiny-avg")
    with pytest.raises(ValueError, match="pools 'avg'.*use forward passes"):
        CLSTail.capture(model, torch.zeros(2, 3, 48, 48))
