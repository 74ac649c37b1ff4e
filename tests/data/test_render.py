"""Tests for workbench.data.render: batch independence, exact palette colours, visual cues, noise."""

import numpy as np
import pytest
import torch

from workbench.data import render as R
from workbench.data import vocab

S = 64
# Geometry fields fixed at 0.5 put the person at a known place: centre 0.5, scale = mid-range, head 1.0.
GEOMETRY = ("pos_x", "pos_y", "scale", "head_scale", "body_width", "hair_length", "hairline")
FIXED = R.RenderStyle(scale_range=(1.0, 1.0))  # scale 1: canonical coordinates are image coordinates


def random_codes(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "occupation": rng.integers(0, len(vocab.OCCUPATIONS), n),
        "gender": rng.integers(0, 2, n),
        "ethnicity": rng.integers(0, len(vocab.ETHNICITIES), n),
        "age": rng.integers(0, 2, n),
        "scene": rng.integers(0, len(vocab.SCENES), n),
    }


def random_jitter(n, seed=1, fixed_geometry=False):
    jit = np.random.default_rng(seed).random((n, R.N_JITTER), dtype=np.float32)
    if fixed_geometry:
        for name in GEOMETRY:
            jit[:, R.JITTER_FIELDS.index(name)] = 0.5
    return jit


def pixel(images, x, y):
    """Pixels [n, 3] at image coordinates (x, y) in [0, 1]."""
    return images[:, :, int(y * images.shape[-2]), int(x * images.shape[-1])]


@pytest.mark.parametrize("size", [64, 33])
def test_rows_do_not_depend_on_batch(size):
    n = 23
    codes, jit = random_codes(n), random_jitter(n)
    noise = R.NoiseBank(np.random.default_rng(2), size)
    full = R.render_batch(codes, jit, size, noise)

    def rows(start, stop):
        return R.render_batch({k: v[start:stop] for k, v in codes.items()}, jit[start:stop], size, noise)

    singles = torch.cat([rows(i, i + 1) for i in range(n)])
    chunks = torch.cat([rows(s, s + 5) for s in range(0, n, 5)])
    perm = np.random.default_rng(3).permutation(n)
    shuffled = R.render_batch({k: v[perm] for k, v in codes.items()}, jit[perm], size, noise)
    assert full.dtype == torch.float32 and full.shape == (n, 3, size, size)
    assert torch.equal(full, singles)
    assert torch.equal(full, chunks)
    assert torch.equal(full[perm], shuffled)


def test_values_in_unit_range_and_images_differ():
    img = R.render_batch(random_codes(16), random_jitter(16), S, R.NoiseBank(np.random.default_rng(0), S))
    assert img.min() >= 0 and img.max() <= 1
    flat = img.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(16) * 1e9).min() > 1.0  # no two images alike


def test_noise_free_plain_style_paints_exact_table_colours():
    """With every jitter at its midpoint and no light/noise, pixels are exactly the table colours."""
    style = R.RenderStyle(scale_range=(1.0, 1.0), contrast_range=(1.0, 1.0))
    n = len(vocab.ETHNICITIES)
    codes = {"occupation": np.zeros(n, int), "gender": np.zeros(n, int), "ethnicity": np.arange(n),
             "age": np.zeros(n, int), "scene": np.full(n, vocab.SCENES.index("field"))}
    jit = np.full((n, R.N_JITTER), 0.5, np.float32)  # shade factors 1, channel offsets 0, brightness 0
    img = R.render_batch(codes, jit, S, None, style)
    cheek = pixel(img, 0.46, 0.41)  # below the eyes, above the mouth, inside the face
    expected = torch.tensor([R.SKIN_COLOURS[e] for e in vocab.ETHNICITIES])
    assert torch.equal(cheek, expected)
    sky = pixel(img, 0.02, 0.02)  # field scene: sky above a horizon at y = 0.52
    assert torch.equal(sky, torch.tensor([R.SCENE_COLOURS["field"][0]] * n))
    coat = pixel(img, 0.40, 0.97)  # doctor's white coat, left of the hand and tools
    assert torch.equal(coat, torch.tensor([R.UNIFORM_COLOURS["doctor"]] * n))


def test_skin_palette_separates_ethnicities_despite_jitter():
    n = 400
    codes, jit = random_codes(n, seed=4), random_jitter(n, seed=5, fixed_geometry=True)
    eth = torch.as_tensor(codes["ethnicity"])
    no_light = R.RenderStyle(scale_range=(1.0, 1.0), brightness_jitter=0.0, contrast_range=(1.0, 1.0))
    cheek = pixel(R.render_batch(codes, jit, S, None, no_light), 0.46, 0.41)  # below the eyes, above the mouth
    means = torch.stack([cheek[eth == k].mean(0) for k in range(len(vocab.ETHNICITIES))])
    luminance = means.mean(1)
    order = [vocab.ETHNICITIES.index(e) for e in ("black", "indian", "asian", "white")]
    assert (luminance[order].diff() > 0.05).all()  # black < indian < asian < white, clearly
    assert means[vocab.ETHNICITIES.index("white"), 2] - means[vocab.ETHNICITIES.index("asian"), 2] > 0.2
    assert (torch.cdist(cheek, means).argmin(1) == eth).all()  # skin jitter keeps palettes apart ...
    assert cheek[eth == 0].std(0).min() > 0.005  # ... but does jitter them
    # Global brightness/contrast jitter (default style) blurs the absolute colour only slightly.
    lit = pixel(R.render_batch(codes, jit, S, None, FIXED), 0.46, 0.41)
    assert (torch.cdist(lit, means).argmin(1) == eth).float().mean() > 0.98


def test_hair_colour_tells_age_and_long_hair_tells_gender():
    n = 300
    codes, jit = random_codes(n, seed=6), random_jitter(n, seed=7, fixed_geometry=True)
    img = R.render_batch(codes, jit, S, None, FIXED)
    age = torch.as_tensor(codes["age"])
    female = torch.as_tensor(codes["gender"]) == 1
    side_hair = pixel(img, 0.375, 0.336)  # beside the temple, below every hat
    lum = side_hair.mean(1)
    assert lum[age == 1].min() > 0.5 > lum[age == 0].max()
    # Long hair reaches the shoulders beside the neck; short hair does not.
    hair_at_shoulder = pixel(img, 0.40, 0.62)
    is_hair = (hair_at_shoulder - side_hair).abs().max(1).values < 1e-6
    assert is_hair[female].all() and not is_hair[~female].any()


def test_clothing_cut_differs_by_gender():
    n = 200
    codes, jit = random_codes(n, seed=8), random_jitter(n, seed=9, fixed_geometry=True)
    img = R.render_batch(codes, jit, S, None, FIXED)
    female = torch.as_tensor(codes["gender"]) == 1
    hem = pixel(img, 14.5 / S, 63.5 / S)  # the flared hem reaches x = 0.213, the straight one 0.245
    body = pixel(img, 0.40, 63.5 / S)
    same = (hem - body).abs().max(1).values < 1e-6
    assert same[female].all() and not same[~female].any()
    shoulder = pixel(img, 0.26, 0.66)  # at shoulder height, broad shoulders reach x = 0.23, narrow ones 0.31
    shoulder_is_uniform = (shoulder - body).abs().max(1).values < 1e-6
    assert shoulder_is_uniform[~female].all() and not shoulder_is_uniform[female].any()


def test_uniform_colour_identifies_occupation():
    n = 400
    codes, jit = random_codes(n, seed=10), random_jitter(n, seed=11, fixed_geometry=True)
    img = R.render_batch(codes, jit, S, None, FIXED)
    body = pixel(img, 0.40, 0.97)
    table = torch.tensor([R.UNIFORM_COLOURS[o] for o in vocab.OCCUPATIONS])
    nearest = torch.cdist(body, table).argmin(1)  # colour and light jitter never cross to another uniform
    assert (nearest == torch.as_tensor(codes["occupation"])).all()


def test_scene_background_is_recognisable():
    n = 600
    codes, jit = random_codes(n, seed=12), random_jitter(n, seed=13)
    img = R.render_batch(codes, jit, S, R.NoiseBank(np.random.default_rng(0), S))
    signature = img[:, :, :, :3].mean(3).flatten(1)  # the three left-most columns: never the person
    scene = torch.as_tensor(codes["scene"])
    train, test = slice(0, n // 2), slice(n // 2, n)
    centroids = torch.stack([signature[train][scene[train] == k].mean(0) for k in range(len(vocab.SCENES))])
    accuracy = (torch.cdist(signature[test], centroids).argmin(1) == scene[test]).float().mean()
    assert accuracy > 0.9


def test_noise_bank_windows_are_slices_of_one_vector():
    bank = R.NoiseBank(np.random.default_rng(0), 16, n_offsets=100)
    flat = torch.from_numpy(np.random.default_rng(0).standard_normal(3 * 16 * 16 + 100, dtype=np.float32))
    got = bank.take(np.array([0, 7, 99]))
    assert got.shape == (3, 3, 16, 16)
    for row, offset in zip(got, (0, 7, 99)):
        assert torch.equal(row.flatten(), flat[offset:offset + 3 * 16 * 16])


def test_noise_has_the_configured_strength():
    n = 32
    codes, jit = random_codes(n), random_jitter(n)
    style = R.RenderStyle(noise_std=0.04)
    clean = R.render_batch(codes, jit, S, None, style)
    noisy = R.render_batch(codes, jit, S, R.NoiseBank(np.random.default_rng(0), S), style)
    interior = (clean > 0.15) & (clean < 0.85)  # far from the clamp at 0 and 1
    assert abs((noisy - clean)[interior].std().item() - 0.04) < 0.004


def test_contact_sheet_places_tiles():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 4, 4) / 10
    sheet = R.contact_sheet(images, ncol=2, pad=1)
    assert sheet.shape == (3, 11, 11)
    assert sheet[0, 1, 1] == 0.0 and sheet[0, 1, 6] == pytest.approx(0.1) and sheet[0, 6, 1] == pytest.approx(0.2)
    assert sheet[0, 0, 0] == 1.0 and sheet[0, 6, 6] == 1.0  # gaps and the empty fourth tile stay white


def test_bad_inputs_raise_clear_errors():
    codes, jit = random_codes(2), random_jitter(2)
    with pytest.raises(KeyError, match="scene"):
        R.render_batch({k: v for k, v in codes.items() if k != "scene"}, jit, S)
    with pytest.raises(ValueError, match=r"\[b, 32\]"):
        R.render_batch(codes, jit[:, :5], S)
    with pytest.raises(ValueError, match=">= 16"):
        R.render_batch(codes, jit, 8)
    with pytest.raises(ValueError, match="noise bank is for 32px"):
        R.render_batch(codes, jit, S, R.NoiseBank(np.random.default_rng(0), 32))
    with pytest.raises(ValueError, match="noise_std"):
        R.RenderStyle(noise_std=-0.1)
    with pytest.raises(ValueError, match="scale_range"):
        R.RenderStyle(scale_range=(1.2, 1.0))
