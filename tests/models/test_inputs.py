"""What the model accepts (docs/inputs.md): images through `preprocess`, finite inputs to the image tower,
text as strings or token ids, overlong prompts and unknown words named."""
import copy
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.models.archs import build_pair, images_for
from tests.tolerance import assert_fp32_close, fp32_atol
from workbench.models import TruncatedPromptWarning, UnknownWordsWarning, load_clip
from workbench.models.preprocess import Preprocess, check_finite
from workbench.models.tokenize import check_lengths, prompt_list

MAN = "a photo of a nurse standing in a hospital next to a person who is a man"  # 19 tokens
WOMAN = MAN.replace(" man", " woman")


@pytest.fixture(scope="module")
def shipped():
    return load_clip("synthsocial")


@pytest.fixture
def model():
    return build_pair("wb-tiny")[1]  # 32×32 images, context 12, random weights (no all-zero token rows)


def solid(size, rgb):
    return Image.new("RGB", size, rgb)


# ------------------------------------------------------------------ preprocess
def test_preprocess_takes_a_list_of_pil_images_of_different_sizes(shipped):
    pp = shipped.preprocess
    images = [solid((40, 30), (255, 0, 0)), solid((64, 64), (0, 128, 255)), solid((100, 80), (10, 20, 30))]
    batch = pp(images)
    assert batch.shape == (3, 3, 64, 64)
    for i, image in enumerate(images):
        assert torch.equal(batch[i], pp(image))
    # a solid colour c becomes (c / 255 − mean) / std everywhere (embedded model: mean 0.5, std 0.25)
    expected = (torch.tensor([0, 128, 255]) / 255 - 0.5) / 0.25
    torch.testing.assert_close(batch[1], expected[:, None, None].expand(3, 64, 64), atol=1e-6, rtol=0)


def test_preprocess_mixed_list_and_real_photo_sizes(model):
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    tensor = torch.rand(3, 20, 20)
    batch = model.preprocess([photo, tensor])
    assert batch.shape == (2, 3, 32, 32)
    assert torch.equal(batch[1], model.preprocess(tensor))


def test_preprocess_uint8_equals_float_in_unit_range(model):
    u8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(model.preprocess(u8), model.preprocess(u8.float() / 255))
    x = torch.rand(3, 32, 32)
    mean, std = torch.tensor(model.preprocess.mean), torch.tensor(model.preprocess.std)
    torch.testing.assert_close(model.preprocess(x), (x - mean[:, None, None]) / std[:, None, None])


@pytest.mark.parametrize("image, error, message", [
    (torch.rand(3, 32, 32) * 255, ValueError, r"values in \[0, 1\].*looks like 0–255 pixel values: divide by 255 "
                                              r"or pass a uint8 tensor"),
    (torch.randn(3, 32, 32), ValueError, r"negative values look like an image that was normalised already"),
    (torch.full((3, 32, 32), float("nan")), ValueError, r"contain 3072 NaN and 0 inf values"),
    (torch.tensor(float("inf")).expand(2, 3, 8, 8), ValueError, r"contain 0 NaN and 384 inf values \(2 of 2 images\)"),
    (torch.rand(32, 32, 3), ValueError, r"RGB image tensor.*channels last\? use image.permute\(2, 0, 1\)"),
    (torch.zeros(3, 8, 8, dtype=torch.int64), ValueError, r"uint8 \(0–255\) or float \(\[0, 1\]\).*torch.int64"),
    (np.zeros((8, 8, 3), dtype=np.uint8), TypeError, r"got a numpy.ndarray.*PIL.Image.fromarray"),
    ("photo.jpg", TypeError, r"takes a PIL image, a list of PIL images, or an image tensor.*got a builtins.str"),
    ([], ValueError, r"empty list of images"),
    ([solid((8, 8), (0, 0, 0)), "x"], TypeError, r"item 1 is a builtins.str"),
    ([torch.rand(3, 8, 8), torch.rand(3, 8, 8) * 255], ValueError, r"image 1 of the list: .*looks like 0–255"),
])
def test_preprocess_refuses_with_the_fix(model, image, error, message):
    with pytest.raises(error, match=message):
        model.preprocess(image)


def test_preprocess_tolerates_rounding_at_the_range_ends():
    pp = Preprocess((8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.zeros(3, 8, 8)
    x[0, 0, 0], x[1, 0, 0] = 1 + 5e-5, -5e-5  # float rounding of a user's own division
    assert torch.isfinite(pp(x)).all()


def test_preprocess_output_range_and_identity():
    pp = Preprocess((8, 8), mean=(0.5, 0.25, 0.5), std=(0.25, 0.25, 0.5))
    assert pp.output_range() == (-2.0, 3.0)
    assert pp.same_as(Preprocess((8, 8), mean=(0.5, 0.25, 0.5), std=(0.25, 0.25, 0.5)))
    assert not pp.same_as(Preprocess((16, 16), mean=(0.5, 0.25, 0.5), std=(0.25, 0.25, 0.5)))


# ------------------------------------------------------------------ the image tower
def nan_batch(model, bad=(1,)):
    x = images_for(model, n=3)
    for i in bad:
        x[i, 0, 0, 0] = float("nan")
    return x


def test_encode_image_refuses_nan_and_inf(model):
    with pytest.raises(ValueError, match=r"contain 2 NaN and 0 inf values \(2 of 3 images\).*NaN"):
        model.encode_image(nan_batch(model, bad=(0, 2)))
    x = images_for(model, n=2)
    x[1, 2, 3, 4] = -float("inf")
    with pytest.raises(ValueError, match=r"0 NaN and 1 inf values \(1 of 2 images\)"):
        model.encode_image(x)


@pytest.mark.parametrize("entry", ["run_with_cache", "forward", "run_with_hooks", "decompose", "head_contributions"])
def test_every_image_entry_point_refuses_nan(model, entry):
    x = nan_batch(model)
    calls = {"run_with_cache": lambda: model.run_with_cache(x), "forward": lambda: model(x),
             "run_with_hooks": lambda: model.run_with_hooks(x, fwd_hooks=[]),
             "decompose": lambda: model.visual.decompose(x),
             "head_contributions": lambda: model.visual.head_contributions(x)}
    with pytest.raises(ValueError, match="1 NaN and 0 inf values"):
        calls[entry]()


def test_encode_image_says_to_preprocess_raw_images(model):
    with pytest.raises(TypeError, match=r"got Image: call model.encode_image\(model.preprocess\(images\)\)"):
        model.encode_image(solid((32, 32), (0, 0, 0)))
    with pytest.raises(TypeError, match=r"got list: call model.encode_image\(model.preprocess\(images\)\)"):
        model.encode_image([solid((32, 32), (0, 0, 0))])
    with pytest.raises(ValueError, match=r"\[batch, 3, 32, 32\] \(float\), got \(2, 3, 32, 32\) torch.uint8"):
        model.encode_image(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got \(2, 3, 64, 64\).*`preprocess`.*which also resizes"):
        model.encode_image(torch.zeros(2, 3, 64, 64))


def test_finite_check_is_exact_when_the_sum_overflows():
    huge = torch.full((2, 3, 4, 4), 3e38)  # finite, but their float32 sum is inf: the exact check decides
    check_finite(huge)
    huge[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN and 0 inf values \(1 of 2 images\)"):
        check_finite(huge)


def test_finite_check_accepts_half_precision_batches():
    x = torch.full((64, 3, 32, 32), 60000.0, dtype=torch.float16)  # the fp16 sum would overflow; fp32 does not
    check_finite(x)


# ------------------------------------------------------------------ text: types
@pytest.mark.parametrize("text, message", [
    ({"a photo of a nurse": 1}, r"got dict; a dict would be encoded by its keys"),
    (["a nurse", 3], r"item 1 of the list is int 3"),
    ([b"a nurse"], r"item 0 of the list is bytes"),
    (b"a nurse", r"got bytes; decode bytes first"),
    (None, r"got NoneType"),
    ({"a nurse"}, r"got set; a set has no order"),
    (3.5, r"got float"),
])
def test_non_string_text_is_refused(model, text, message):
    need = r"text must be a string or a list of strings \(or token ids \[batch, n_ctx\] from model.tokenize\)"
    calls = [model.encode_text, model.tokenize]
    if text is not None:  # forward(text=None) means "no text": it asks for images or text instead
        calls += [lambda t: model(text=t), lambda t: model.run_with_cache(text=t)]
    for call in calls:
        with pytest.raises(TypeError, match=need + r".*" + message):
            call(text)


def test_empty_text_is_refused(model):
    with pytest.raises(ValueError, match=r"no text given \(an empty list\)"):
        model.encode_text([])


def test_token_ids_and_other_sequences_stay_supported(model):
    prompts = ["a photo of a nurse", "a doctor"]
    tokens = model.tokenize(prompts)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 12)
    expected = model.encode_text(tokens)
    assert torch.equal(model.encode_text(prompts), expected)
    assert torch.equal(model.encode_text(tuple(prompts)), expected)
    assert torch.equal(model.encode_text(np.array(prompts)), expected)  # numpy strings are str
    assert_fp32_close(model.encode_text("a doctor")[0], expected[1])  # batch of 1 vs 2: rounding only
    assert prompt_list(iter(prompts)) == prompts


# ------------------------------------------------------------------ text: length
def test_overlong_prompts_raise_naming_them_and_the_context(shipped):
    with pytest.raises(ValueError, match=r"2 prompt\(s\) exceed the model's context of 16 tokens .*"
                                         r"'a photo of a nurse .* who is a man' \(19 tokens\), "
                                         r"'a photo of a nurse .* who is a woman' \(19 tokens\).*truncate=True"):
        shipped.encode_text([MAN, "a photo of a nurse", WOMAN])


def test_truncate_cuts_and_warns_once_naming_the_prompts(shipped):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = shipped.encode_text([MAN, WOMAN], truncate=True)
    truncated = [w for w in caught if issubclass(w.category, TruncatedPromptWarning)]
    assert len(truncated) == 1
    assert "cut 2 prompt(s) to the model's context of 16 tokens" in str(truncated[0].message)
    assert "who is a woman' (19 tokens)" in str(truncated[0].message)
    assert truncated[0].filename == __file__  # points at the caller's line
    assert_fp32_close(emb[0], emb[1])  # why it is refused by default: the cut prompts embed identically


def test_context_boundary(model):
    fits, over = " ".join(["a"] * 10), " ".join(["a"] * 11)  # 10 + start + end = 12 = the context
    assert model.tokenize(fits)[0, -1] == model.tokenizer.eot_token_id
    with pytest.raises(ValueError, match=r"1 prompt\(s\) exceed the model's context of 12 tokens.*\(13 tokens\)"):
        model.tokenize([fits, over])
    with pytest.raises(ValueError, match=r"context of 12 tokens"):
        model.run_with_cache(text=[over])
    with pytest.warns(TruncatedPromptWarning, match=r"cut 1 prompt\(s\)"):
        embed, _ = model.run_with_cache(text=[over], truncate=True)
    assert_fp32_close(embed, model.encode_text(model.tokenizer([over], context_length=12)))  # open_clip's cut


def test_length_check_with_a_hugging_face_style_tokenizer():
    class Inner:
        def __call__(self, text):
            return {"input_ids": [0] + [5] * len(text.split()) + [1]}

    class HFStyle:
        tokenizer = Inner()

    check_lengths(HFStyle(), ["one two"], 4)
    with pytest.raises(ValueError, match=r"'one two three' \(5 tokens\)"):
        check_lengths(HFStyle(), ["one two", "one two three"], 4)


# ------------------------------------------------------------------ text: unknown words
def test_unknown_words_on_the_shipped_model_warn_naming_them(shipped):
    with pytest.warns(UnknownWordsWarning, match=r"2 word\(s\) in the 2 prompt\(s\) are unknown to this model "
                                                  r".*all-zero embeddings.*'zebra', 'astronaut'") as caught:
        emb = shipped.encode_text(["a photo of a zebra", "a photo of an astronaut"])
    assert len(caught) == 1 and caught[0].filename == __file__
    # what the warning is about: different unknown words embed identically, unlike known ones
    with pytest.warns(UnknownWordsWarning, match="'giraffe'"):
        assert_fp32_close(emb[0], shipped.encode_text(["a photo of a giraffe", "a photo of a nurse"])[0])
    known = shipped.encode_text(["a photo of a doctor", "a photo of a nurse"])
    assert (known[0] - known[1]).abs().max() > 100 * fp32_atol(known[1])


def test_known_words_do_not_warn(shipped, model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        shipped.encode_text(["a photo of a nurse", "a photo of a female doctor"])
        model.encode_text(["a photo of a zebra"])  # random weights: no all-zero rows


def test_unknown_token_mask_follows_weight_edits(model):
    model = copy.deepcopy(model)
    assert not model.text.unknown_token_mask().any()
    (zebra,) = model.tokenizer.encode("zebra")
    with torch.no_grad():
        model.text.token_embedding[zebra] = 0
    mask = model.text.unknown_token_mask()
    assert mask.nonzero().flatten().tolist() == [zebra]
    with pytest.warns(UnknownWordsWarning, match=r"1 word\(s\) in the 1 prompt\(s\).*: 'zebra'\."):
        model.tokenize("a zebra, a photo")
