"""hook_names: every name act_name builds is a hook of the model (and every hook has a kind), the close-match
hint of the one unknown-hook message, position canonicalisation and token-axis selection."""
import pytest
import torch

from workbench.models.hook_names import (BLOCK_KINDS, TOWER_KINDS, act_name, canonical_position, check_hook_name,
                                         is_pooled_hook, parse_hook_name, pooled_index, position_axis,
                                         select_position, stream_width)


@pytest.fixture
def model(tiny):
    return tiny[1]


def test_names_for_both_towers_are_exactly_the_models_hooks(model):
    built = set()
    for tower, cfg in (("image", model.visual.cfg), ("text", model.text.cfg)):
        for kind in BLOCK_KINDS:
            built |= {act_name(kind, layer, tower=tower) for layer in range(cfg.n_layers)}
        built |= {act_name(kind, tower=tower) for kind, (_, towers) in TOWER_KINDS.items()
                  if tower in towers and (cfg.ln_pre or not kind.startswith("ln_pre"))}  # wb-tiny has no ln_pre
    assert built == set(model.hook_dict)
    for name in model.hook_dict:  # and parsing inverts building
        tower, layer, kind = parse_hook_name(name)
        assert act_name(kind, layer, tower=tower) == name


def test_documented_examples_and_aliases():
    assert act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert act_name("cls_result", 5) == "blocks.5.attn.hook_cls_result"
    assert act_name("image_embed") == "hook_image_embed"
    assert act_name("resid_post", 2, tower="text") == "text.blocks.2.hook_resid_post"
    assert act_name("text_embed", tower="text") == "text.hook_text_embed"
    assert act_name("ln_post_scale") == "ln_post.hook_scale"
    assert act_name("post", 1) == "blocks.1.mlp.hook_post"  # TransformerLens' short names
    assert act_name("hook_resid_pre", 4) == "blocks.4.hook_resid_pre"
    assert act_name("attn.hook_z", 0, tower="text") == "text.blocks.0.attn.hook_z"
    assert act_name("blocks.3.attn.hook_pattern") == "blocks.3.attn.hook_pattern"  # full names pass through
    assert act_name("text.hook_text_embed") == "text.hook_text_embed"


@pytest.mark.parametrize("args, kwargs, message", [
    (("resid_pots", 1), {}, "unknown hook kind 'resid_pots'; did you mean 'resid_post'"),
    (("banana",), {}, "kinds: ['attn_out', "),
    (("resid_post",), {}, "lives in a block: pass layer="),
    (("image_embed",), {"tower": "text"}, "exists only in the image tower"),
    (("text_embed",), {}, "exists only in the text tower"),
    (("embed", 2), {}, "is not in a block"),
    (("resid_post", -1), {}, "layer must be a non-negative int"),
    (("resid_post", 1), {"tower": "audio"}, "unknown tower 'audio'"),
    (("blocks.3.hook_resid_pots",), {}, "is not a hook name of the hooked CLIP layout"),
    (("blocks.3.hook_resid_post", 3), {}, "is a full hook name; pass it without a layer"),
])
def test_bad_kinds_raise_specific_errors(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        act_name(*args, **kwargs)
    assert message in str(info.value)


def test_check_hook_name_hints_at_close_matches(model):
    assert check_hook_name(model, "blocks.0.hook_resid_post") == "blocks.0.hook_resid_post"
    with pytest.raises(ValueError) as info:
        check_hook_name(model, "blocks.0.hook_resid_pots")
    assert str(info.value).startswith("no hook point named 'blocks.0.hook_resid_pots' in this model (did you mean "
                                      "'blocks.0.hook_resid_post'")
    with pytest.raises(ValueError, match="no hook point named 'nonsense' in this model. Valid names are in "
                                         "model.hook_dict"):
        check_hook_name(model, "nonsense")
    with pytest.raises(ValueError, match="'text.hook_text_embed' is a text-tower hook, but this needs a hook of the image tower"):
        check_hook_name(model, "text.hook_text_embed", tower="image")
    with pytest.raises(ValueError, match=r"no text-tower hook point named 'text.blocks.9.hook_resid_post'.*did you "
                                         r"mean 'text.blocks.1.hook_resid_post'"):
        check_hook_name(model, "text.blocks.9.hook_resid_post", tower="text")
    assert check_hook_name(model, "head_contributions", extra=["head_contributions"]) == "head_contributions"
    with pytest.raises(ValueError, match="did you mean 'head_contributions'"):
        check_hook_name(model, "head_contribution", extra=["head_contributions"])
    with pytest.raises(TypeError, match="hook names are strings, got 3"):
        check_hook_name(model, 3)


def test_positions_are_canonicalised():
    assert canonical_position("cls") == "pooled"
    assert canonical_position("pooled") == "pooled" and canonical_position("all") == "all"
    assert canonical_position(-1, allow_int=True) == -1
    with pytest.raises(ValueError, match=r"unknown position 3; expected one of \['pooled', 'all'\] \('cls' is"):
        canonical_position(3)
    with pytest.raises(ValueError, match="unknown position True; .* or an int token index"):
        canonical_position(True, allow_int=True)
    with pytest.raises(ValueError, match="unknown position 'first'"):
        canonical_position("first")


def test_token_axes_and_pooled_hooks():
    assert position_axis("blocks.0.hook_resid_post", 3) == 1
    assert position_axis("blocks.0.attn.hook_pattern", 4) == 2
    assert position_axis("text.blocks.1.attn.hook_cls_result", 3) is None
    assert position_axis("ln_post.hook_normalized", 2) is None
    assert position_axis("ln_post.hook_normalized", 3) == 1  # average-pooled towers apply ln_post before pooling
    assert is_pooled_hook("hook_image_embed") and is_pooled_hook("text.hook_text_embed")
    assert not is_pooled_hook("blocks.0.hook_embed") and not is_pooled_hook("text.ln_final.hook_normalized")


def test_select_position_takes_cls_eot_or_an_index(model):
    t = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)
    assert torch.equal(select_position(t, "blocks.0.hook_resid_post", "cls"), t[:, 0])
    assert torch.equal(select_position(t, "blocks.0.hook_resid_post", "pooled", torch.tensor([4, 2])),
                       torch.stack([t[0, 4], t[1, 2]]))
    assert torch.equal(select_position(t, "blocks.0.hook_resid_post", -1), t[:, -1])
    assert select_position(t, "blocks.0.hook_resid_post", "all") is t
    pattern = torch.rand(2, 4, 5, 5)
    assert torch.equal(select_position(pattern, "blocks.0.attn.hook_pattern", "pooled", torch.tensor([1, 3])),
                       torch.stack([pattern[0, :, 1], pattern[1, :, 3]]))
    with pytest.raises(ValueError, match="position 5 is out of range for blocks.0.hook_resid_post"):
        select_position(t, "blocks.0.hook_resid_post", 5)
    with pytest.raises(ValueError, match="hook_patch_embed holds patches only"):
        select_position(t, "hook_patch_embed", "cls")
    tokens = model.tokenize(["a doctor", "a photo of a nurse"])
    assert torch.equal(pooled_index(model, "text", tokens), model.text.pool_index(tokens))
    assert pooled_index(model, "image") is None
    with pytest.raises(ValueError, match="pass tokens="):
        pooled_index(model, "text")


def test_stream_widths(model):
    v, t = model.visual.cfg, model.text.cfg
    assert stream_width("blocks.1.hook_resid_mid", v) == 64 and stream_width("blocks.1.mlp.hook_pre", v) == 256
    assert stream_width("hook_image_embed", v) == 32 and stream_width("text.hook_text_embed", t) == 32
    assert stream_width("text.ln_final.hook_normalized", t) == 48
    with pytest.raises(ValueError, match="'blocks.0.attn.hook_z' is not a stream hook"):
        stream_width("blocks.0.attn.hook_z", v)


def test_ln_pre_hooks_are_named_where_the_tower_has_one():
    from workbench.models import load_clip

    shipped = load_clip("synthsocial")
    assert shipped.visual.cfg.ln_pre
    for kind in ("ln_pre_scale", "ln_pre_normalized"):
        name = act_name(kind)
        assert name in shipped.hook_dict and parse_hook_name(name) == ("image", None, kind)
