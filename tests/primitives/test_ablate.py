"""Ablation on the tiny model: every op × target checked against the clean activations, reference means
against the decomposition's head contributions, and the context managers' clean-up."""
import pytest
import torch

from workbench.primitives import (Edit, EditError, Intervention, Prototypes, ablate_heads, ablate_latents,
                                  ablate_neurons, class_prototypes, intervene, mean_activations)

L, H = 1, 2  # a middle layer: the edit's effect is visible downstream and at the output


def run(model, images, names, edits=None):
    """(image embedding, cache of `names`), optionally under `edits`."""
    with torch.no_grad():
        if edits is None:
            return model.run_with_cache(images, names_filter=names)
        with intervene(model, edits):
            return model.run_with_cache(images, names_filter=names)


def attn(layer, what):
    return f"blocks.{layer}.attn.{what}"


def blk(layer, what):
    return f"blocks.{layer}.{what}"


# ---------------------------------------------------------------------------------------------- heads
def test_zeroing_a_head_at_cls_removes_exactly_its_write(model, images):
    names = [attn(L, "hook_cls_result"), blk(L, "hook_attn_out"), blk(L - 1, "hook_resid_post")]
    clean_emb, clean = run(model, images, names)
    emb, edited = run(model, images, names, ablate_heads([(L, H)]))
    x = clean[attn(L, "hook_cls_result")][:, H]
    # CLS row of the attention output moves by exactly −x^(l,h); other positions and earlier layers do not move
    assert torch.allclose(edited[blk(L, "hook_attn_out")][:, 0], clean[blk(L, "hook_attn_out")][:, 0] - x, atol=1e-6)
    assert torch.equal(edited[blk(L, "hook_attn_out")][:, 1:], clean[blk(L, "hook_attn_out")][:, 1:])
    assert torch.equal(edited[blk(L - 1, "hook_resid_post")], clean[blk(L - 1, "hook_resid_post")])
    assert torch.equal(edited[attn(L, "hook_cls_result")][:, H], torch.zeros_like(x))
    others = [h for h in range(4) if h != H]
    assert torch.equal(edited[attn(L, "hook_cls_result")][:, others], clean[attn(L, "hook_cls_result")][:, others])
    assert not torch.allclose(emb, clean_emb, atol=1e-4)


@pytest.mark.parametrize("op", ["mean", "replace"])
def test_replacing_a_head_puts_exactly_the_prototype_there(model, images, op):
    proto = torch.randn(64, generator=torch.Generator().manual_seed(3))
    names = [attn(L, "hook_cls_result"), blk(L, "hook_attn_out")]
    _, clean = run(model, images, names)
    _, edited = run(model, images, names, ablate_heads([(L, H)], op=op, value={(L, H): proto}))
    assert torch.equal(edited[attn(L, "hook_cls_result")][:, H], proto.expand(3, 64))
    shift = proto - clean[attn(L, "hook_cls_result")][:, H]
    assert torch.allclose(edited[blk(L, "hook_attn_out")][:, 0], clean[blk(L, "hook_attn_out")][:, 0] + shift, atol=1e-5)


def test_scaling_a_head_multiplies_its_write(model, images):
    names = [attn(L, "hook_cls_result"), blk(L, "hook_attn_out")]
    _, clean = run(model, images, names)
    _, edited = run(model, images, names, ablate_heads([(L, H)], op="scale", factor=0.25))
    x = clean[attn(L, "hook_cls_result")][:, H]
    assert torch.equal(edited[attn(L, "hook_cls_result")][:, H], 0.25 * x)
    assert torch.allclose(edited[blk(L, "hook_attn_out")][:, 0], clean[blk(L, "hook_attn_out")][:, 0] - 0.75 * x, atol=1e-6)


def test_scale_one_is_an_exact_no_op(model, images):
    clean, _ = run(model, images, [])
    edited, _ = run(model, images, [], ablate_heads([(0, 0), (2, 3)], op="scale", factor=1.0)
                    + ablate_neurons([(1, None, [0, 4])], op="scale", factor=1.0, position="all"))
    assert torch.equal(edited, clean)


def test_zeroing_a_head_at_all_positions_removes_its_write_everywhere(model, images):
    names = [attn(L, "hook_result"), blk(L, "hook_attn_out")]
    _, clean = run(model, images, names)
    _, edited = run(model, images, names, ablate_heads([(L, H)], position="all"))
    write = clean[attn(L, "hook_result")][:, :, H]  # [b, pos, d_model]
    assert torch.equal(edited[attn(L, "hook_result")][:, :, H], torch.zeros_like(write))
    assert torch.allclose(edited[blk(L, "hook_attn_out")], clean[blk(L, "hook_attn_out")] - write, atol=1e-6)


def test_mean_ablation_at_all_positions_uses_the_per_position_mean(model, images):
    ref = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    means = mean_activations(model, ref, heads=[(L, H)], position="all")
    assert means[(L, H)].shape == (17, 64)
    _, cache = run(model, ref, [attn(L, "hook_result")])
    assert torch.allclose(means[(L, H)], cache[attn(L, "hook_result")][:, :, H].mean(0), atol=1e-6)
    _, edited = run(model, images, [attn(L, "hook_result")], ablate_heads([(L, H)], op="mean", value=means, position="all"))
    assert torch.equal(edited[attn(L, "hook_result")][:, :, H], means[(L, H)].expand(3, 17, 64))


# ---------------------------------------------------------------------------------------------- neurons
def test_damping_neurons_of_a_head_output_scales_only_those_coordinates(model, images):
    idx = [5, 17, 40]
    names = [attn(L, "hook_cls_result"), blk(L, "hook_attn_out")]
    _, clean = run(model, images, names)
    _, edited = run(model, images, names, ablate_neurons([(L, H, idx)], op="scale", factor=0.1))
    x, y = clean[attn(L, "hook_cls_result")][:, H], edited[attn(L, "hook_cls_result")][:, H]
    assert torch.equal(y[:, idx], 0.1 * x[:, idx])
    rest = [i for i in range(64) if i not in idx]
    assert torch.equal(y[:, rest], x[:, rest])
    delta = torch.zeros_like(x)
    delta[:, idx] = -0.9 * x[:, idx]
    assert torch.allclose(edited[blk(L, "hook_attn_out")][:, 0], clean[blk(L, "hook_attn_out")][:, 0] + delta, atol=1e-6)


def test_head_neurons_at_all_positions(model, images):
    _, clean = run(model, images, [attn(L, "hook_result")])
    _, edited = run(model, images, [attn(L, "hook_result")],
                    ablate_neurons([(L, H, 7)], op="replace", value=1.5, position="all"))
    expected = clean[attn(L, "hook_result")].clone()
    expected[:, :, H, 7] = 1.5
    assert torch.equal(edited[attn(L, "hook_result")], expected)


def test_zeroing_mlp_neurons_at_cls_changes_the_mlp_output_by_their_write(model, images):
    idx = [3, 100]
    names = [blk(L, "mlp.hook_post"), blk(L, "hook_mlp_out")]
    _, clean = run(model, images, names)
    _, edited = run(model, images, names, ablate_neurons([(L, None, idx)]))
    post = clean[blk(L, "mlp.hook_post")]
    expected = post.clone()
    expected[:, 0, idx] = 0.0
    assert torch.equal(edited[blk(L, "mlp.hook_post")], expected)
    W_out = model.visual.blocks[L].mlp.W_out  # [d_model, d_mlp]
    removed = post[:, 0, idx] @ W_out[:, idx].T
    assert torch.allclose(edited[blk(L, "hook_mlp_out")][:, 0], clean[blk(L, "hook_mlp_out")][:, 0] - removed, atol=1e-5)
    assert torch.equal(edited[blk(L, "hook_mlp_out")][:, 1:], clean[blk(L, "hook_mlp_out")][:, 1:])


@pytest.mark.parametrize("op, kwargs, expect", [
    ("scale", dict(factor=0.5), lambda v: 0.5 * v),
    ("set", dict(value=2.0), lambda v: torch.full_like(v, 2.0)),
    ("zero", dict(), torch.zeros_like),
])
def test_mlp_neurons_at_all_positions(model, images, op, kwargs, expect):
    idx = [0, 9]
    _, clean = run(model, images, [blk(2, "mlp.hook_post")])
    _, edited = run(model, images, [blk(2, "mlp.hook_post")], ablate_neurons([(2, None, idx)], op=op, position="all", **kwargs))
    expected = clean[blk(2, "mlp.hook_post")].clone()
    expected[..., idx] = expect(expected[..., idx])
    assert torch.equal(edited[blk(2, "mlp.hook_post")], expected)


def test_neurons_are_grouped_per_layer_and_head_with_per_neuron_values():
    iv = ablate_neurons([(1, 2, 5), (1, None, 3), (1, 2, [6, 8])], op="replace",
                        value={(1, 2, 5): 0.5, (1, 2, 6): 1.0, (1, 2, 8): -1.0, (1, None, 3): 2.0})
    assert [(e.layer, e.head, e.index) for e in iv] == [(1, 2, (5, 6, 8)), (1, None, (3,))]
    assert iv[0].value.tolist() == [0.5, 1.0, -1.0] and iv[1].value.tolist() == [2.0]


def test_text_tower_head_ablation_acts_on_the_pooled_token(model):
    tokens = model.tokenize(["a photo of a nurse", "a doctor"])
    name = "text.blocks.1.attn.hook_cls_result"
    with torch.no_grad():
        _, clean = model.run_with_cache(text=tokens, names_filter=[name])
        with intervene(model, ablate_heads([(1, 0)], tower="text")):
            _, edited = model.run_with_cache(text=tokens, names_filter=[name])
    assert torch.equal(edited[name][:, 0], torch.zeros(2, 48))
    assert torch.equal(edited[name][:, 1:], clean[name][:, 1:])


# ---------------------------------------------------------------------------------------------- composition, clean-up
def test_interventions_compose_with_plus(model, images):
    a, b = ablate_heads([(L, H)]), ablate_neurons([(L, H, [1])], op="set", value=3.0)
    both = a + b
    assert isinstance(both, Intervention) and len(both) == 2 and list(both) == list(a) + list(b)
    assert sum([a, b], Intervention()) == both
    assert a + b[0] == both
    _, edited = run(model, images, [attn(L, "hook_cls_result")], both)
    expected = torch.zeros(3, 64)
    expected[:, 1] = 3.0  # zeroed first, then neuron 1 set: order respected
    assert torch.equal(edited[attn(L, "hook_cls_result")][:, H], expected)
    _, reverse = run(model, images, [attn(L, "hook_cls_result")], b + a)
    assert torch.equal(reverse[attn(L, "hook_cls_result")][:, H], torch.zeros(3, 64))


def _n_hooks(model):
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def test_intervene_removes_its_hooks_on_exit_and_after_an_exception(model, images):
    with torch.no_grad():
        clean = model.encode_image(images)
        before = _n_hooks(model)
        with intervene(model, ablate_heads([(0, 1), (2, 2)])):
            assert _n_hooks(model) == before + 2
            assert not torch.equal(model.encode_image(images), clean)
        assert _n_hooks(model) == before
        with pytest.raises(RuntimeError, match="boom"):
            with intervene(model, ablate_neurons([(1, None, 4)])):
                raise RuntimeError("boom")
        assert _n_hooks(model) == before
        assert torch.equal(model.encode_image(images), clean)


def test_intervene_validates_before_attaching_anything(model):
    before = _n_hooks(model)
    with pytest.raises(EditError, match="layer 7 out of range"):
        with intervene(model, ablate_heads([(0, 0), (7, 0)])):
            pass
    assert _n_hooks(model) == before


# ---------------------------------------------------------------------------------------------- reference means
def test_mean_activations_match_the_decompositions_head_contributions(model):
    ref = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    means = mean_activations(model, ref, batch_size=2)  # chunked: 2 + 2 + 1 images
    with torch.no_grad():
        contrib = model.visual.head_contributions(ref, space="resid")  # [b, layer, head, d_model]
    assert set(means) == {(l, h) for l in range(3) for h in range(4)}
    for (l, h), m in means.items():
        assert m.dtype == torch.float32 and torch.allclose(m, contrib[:, l, h].mean(0), atol=1e-6)


def test_class_prototypes_from_tensors_and_from_a_loader(model):
    ref = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 1, 1, 0, 1, 1])
    heads = [(2, 0), (2, 3)]
    protos = class_prototypes(model, ref, labels, heads=heads)
    with torch.no_grad():
        _, cache = model.run_with_cache(ref, names_filter=["blocks.2.attn.hook_cls_result"])
    x = cache["blocks.2.attn.hook_cls_result"]
    mu0, mu1 = x[labels == 0].mean(0), x[labels == 1].mean(0)
    assert isinstance(protos, Prototypes) and protos.counts == {0: 2, 1: 4}
    for i, hd in enumerate([0, 3]):
        assert torch.allclose(protos[0][(2, hd)], mu0[hd], atol=1e-6)
        assert torch.allclose(protos[1][(2, hd)], mu1[hd], atol=1e-6)
        assert torch.allclose(protos["neutral"][(2, hd)], (mu0[hd] + mu1[hd]) / 2, atol=1e-6)  # balanced
    overall = class_prototypes(model, ref, labels, heads=heads, neutral="all")
    assert torch.allclose(overall["neutral"][(2, 3)], x[:, 3].mean(0), atol=1e-6)
    # a DataLoader-style iterable of (images, {key: labels}) gives the same prototypes
    loader = [(ref[:4], {"gender": labels[:4], "age": labels[:4]}), (ref[4:], {"gender": labels[4:], "age": labels[4:]})]
    streamed = class_prototypes(model, loader, "gender", heads=heads)
    assert streamed.counts == protos.counts
    assert all(torch.allclose(streamed[c][hd], protos[c][hd], atol=1e-6) for c in (0, 1, "neutral") for hd in heads)
    with pytest.raises(KeyError, match="no prototype for class 2"):
        protos[2]


def test_prototype_replacement_end_to_end(model, images):
    """Expert heads (docs/methods.md): replacing expert heads' CLS writes by the neutral prototype puts it in the cache."""
    ref = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    heads = [(2, 1), (2, 3)]
    protos = class_prototypes(model, ref, [0, 0, 0, 1, 1, 1], heads=heads)
    _, edited = run(model, images, ["blocks.2.attn.hook_cls_result"], ablate_heads(heads, op="replace", value=protos["neutral"]))
    for l, h in heads:
        assert torch.equal(edited["blocks.2.attn.hook_cls_result"][:, h], protos["neutral"][(l, h)].expand(3, 64))


@pytest.mark.parametrize("call, message", [
    (lambda: ablate_heads([(0, 0)], op="scale"), "needs factor"),
    (lambda: ablate_heads([(0, 0)], op="zero", factor=0.1), "factor is only used by op 'scale'"),
    (lambda: ablate_heads([(0, 0)], op="replace"), "needs value="),
    (lambda: ablate_heads([(0, 0)], op="project"), "unknown ablation op"),
    (lambda: ablate_heads([(0, 0), (0, 1)], op="replace", value={(0, 0): torch.zeros(64)}), "no entry for head (0, 1)"),
    (lambda: ablate_heads([0, 1]), "(layer, head) pairs"),
    (lambda: ablate_heads([(0, 0)], op="replace", value=Prototypes({}, {})), "value=protos['neutral']"),
    (lambda: ablate_heads([(0, 0), (0, 0)]), "duplicates"),
    (lambda: ablate_neurons([(0, 1)]), "triples"),
    (lambda: ablate_neurons([(0, 1, 2), (0, 1, 2)]), "duplicates"),
    (lambda: Intervention([Edit(target="head", op="zero", layer=0, head=0), "x"]), "item 1 is a str"),
])
def test_bad_constructor_arguments(call, message):
    with pytest.raises(EditError) as info:
        call()
    assert message in str(info.value)


def test_reference_set_errors(model):
    ref = torch.randn(4, 3, 32, 32)
    with pytest.raises(EditError, match="3 labels for 4 images"):
        class_prototypes(model, ref, [0, 1, 0])
    with pytest.raises(EditError, match="out of range"):
        mean_activations(model, ref, heads=[(0, 4)])
    with pytest.raises(EditError, match="pass labels=<one of them>"):
        class_prototypes(model, [(ref, {"gender": torch.zeros(4)})], "race")
    with pytest.raises(EditError, match="reference set is empty"):
        mean_activations(model, [])
    with pytest.raises(EditError, match=r"found a single class \('f'\) in the labels; a neutral prototype needs at "
                                        "least 2 classes. Use mean_activations for one overall mean"):
        class_prototypes(model, ref, ["f"] * 4)


def test_latent_ablation_builds_one_sae_edit():
    iv = ablate_latents([4, 9], op="scale", factor=0.0, hook="text.hook_text_embed")
    e, = iv
    assert (e.target, e.op, e.index, e.value, e.tower, e.position) == ("sae_latent", "scale", (4, 9), 0.0, "text", "all")
