"""Hooked towers reproduce open_clip on random-weight architectures, to fp32 rounding (1e-5 × scale)."""
import pytest
import torch

from tests.models.archs import TEXTS, build_pair, images_for
from workbench.models import TruncatedPromptWarning
from tests.tolerance import assert_fp32_close


def test_encode_image_matches_open_clip(pair):
    oc, hooked = pair
    x = images_for(hooked)
    with torch.no_grad():
        ref = oc.encode_image(x)
        assert_fp32_close(hooked.encode_image(x), ref)
        assert_fp32_close(hooked.encode_image(x, normalize=True), oc.encode_image(x, normalize=True))


def test_encode_text_matches_open_clip(pair):
    oc, hooked = pair
    tokens = hooked.tokenize(TEXTS)
    with torch.no_grad():
        ref = oc.encode_text(tokens)
        assert_fp32_close(hooked.encode_text(tokens), ref)
        assert_fp32_close(hooked.encode_text(TEXTS), ref)  # strings are tokenised with the same tokenizer


def test_image_block_residuals_match_open_clip(pair):
    oc, hooked = pair
    x = images_for(hooked, n=2)
    with torch.no_grad():
        ref = oc.visual.forward_intermediates(x, intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
        _, cache = hooked.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post") and not n.startswith("text."))
    for l, (prefix, patches) in enumerate(zip(ref["image_intermediates_prefix"], ref["image_intermediates"])):
        theirs = torch.cat([prefix, patches], dim=1)
        assert_fp32_close(cache[f"blocks.{l}.hook_resid_post"], theirs, msg=f"block {l}")


def test_text_block_residuals_match_open_clip(pair):
    oc, hooked = pair
    tokens = hooked.tokenize(TEXTS)
    with torch.no_grad():
        ref = oc.forward_intermediates(text=tokens, text_indices=None, intermediates_only=True,
                                       normalize_intermediates=False)
        _, cache = hooked.run_with_cache(text=tokens, names_filter=lambda n: n.startswith("text.") and n.endswith("hook_resid_post"))
    for l, theirs in enumerate(ref["text_intermediates"]):
        assert_fp32_close(cache[f"text.blocks.{l}.hook_resid_post"], theirs, msg=f"text block {l}")


def test_variants_outside_the_matrix_match(tiny_avg):
    """Average pooling, QuickGELU, bidirectional text, Linear projection with bias, 'last' text pooling."""
    oc, hooked = tiny_avg
    assert hooked.visual.cfg.act == "quick_gelu" and hooked.visual.cfg.pool == "avg"
    assert not hooked.text.cfg.causal and hooked.text.cfg.pool == "last"
    with pytest.warns(TruncatedPromptWarning, match="context of 10 tokens"):  # the last of TEXTS has 11 tokens
        tokens = hooked.tokenize(TEXTS, truncate=True)
    x = images_for(hooked)
    with torch.no_grad():
        assert_fp32_close(hooked.encode_image(x), oc.encode_image(x))
        assert_fp32_close(hooked.encode_text(tokens), oc.encode_text(tokens))


def test_explicit_attention_path_matches_fused(tiny):
    """Hooking hook_pattern forces the explicit path; it must agree with the fused one."""
    _, hooked = tiny
    x = images_for(hooked)
    tokens = hooked.tokenize(TEXTS)
    with torch.no_grad():
        fused_img, fused_txt = hooked.encode_image(x), hooked.encode_text(tokens)
        is_pattern = lambda n: n.endswith("hook_pattern")
        explicit_img, _ = hooked.run_with_cache(x, names_filter=is_pattern)
        explicit_txt, cache = hooked.run_with_cache(text=tokens, names_filter=is_pattern)
    assert_fp32_close(explicit_img, fused_img)
    assert_fp32_close(explicit_txt, fused_txt)
    # causal mask kept: no text position attends to a later one
    pattern = cache["text.blocks.0.attn.hook_pattern"]
    assert torch.all(pattern.triu(1) == 0)
    assert torch.allclose(pattern.sum(-1), torch.ones(()))


def test_config_is_read_from_modules():
    _, b32 = build_pair("ViT-B-32")
    _, quick = build_pair("ViT-B-32-quickgelu")
    _, tiny = build_pair("wb-tiny")
    assert (b32.visual.cfg.n_heads, b32.visual.cfg.d_model, b32.visual.cfg.act) == (12, 768, "gelu")
    assert quick.visual.cfg.act == quick.text.cfg.act == "quick_gelu"
    assert tiny.visual.cfg.n_heads == 4 and not tiny.visual.cfg.ln_pre
    assert b32.visual.cfg.eps == 1e-5 and b32.text.cfg.causal
