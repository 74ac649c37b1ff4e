"""save_sae / load_sae: sae_lens's own format with the workbench metadata, checks against the model, names."""
import copy
import json

import pytest
import torch

from tests.models.archs import build_pair
from tests.primitives.conftest import random_sae
from tests.tolerance import assert_fp32_close
from workbench.saes import (SAELoadError, SAEMismatchError, SAEMismatchWarning, SpliceError, load_sae,
                            read_sae_config, resolve_sae_path, save_sae, shipped_dir, shipped_saes)
from workbench.saes.presets import SHIPPED

SITE = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return copy.deepcopy(build_pair("wb-tiny")[1])


@pytest.fixture
def saved(model, tmp_path):
    sae = random_sae(64, 96, seed=3)
    return sae, save_sae(sae, tmp_path / "sae", model=model, site=SITE, trained_tokens=1234)


def test_saved_folder_is_sae_lens_format_with_workbench_metadata(model, saved):
    sae, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    meta = json.loads((path / "cfg.json").read_text())["metadata"]
    assert meta["hook_name"] == SITE and meta["workbench_tower"] == "image"
    assert meta["workbench_model_fingerprint"] == model.fingerprint() and meta["model_name"] == "wb-tiny"
    assert meta["trained_tokens"] == 1234
    assert sae.cfg.metadata.hook_name == SITE  # the in-memory SAE knows its site too


def test_sae_lens_opens_the_files_unchanged(saved):
    from sae_lens import SAE

    sae, path = saved
    other = SAE.load_from_disk(str(path))
    assert type(other) is type(sae)
    for k, v in sae.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    h = torch.randn(5, 64)
    assert torch.equal(other.encode(h), sae.encode(h))
    assert other.cfg.metadata.hook_name == SITE


def test_load_sae_checks_and_returns_the_same_sae(model, saved):
    sae, path = saved
    loaded = load_sae(path, model=model)
    h = torch.randn(4, 17, 64)
    assert torch.equal(loaded.decode(loaded.encode(h)), sae.decode(sae.encode(h)))
    assert not loaded.training and loaded.cfg.metadata.hook_name == SITE
    assert read_sae_config(path)["d_sae"] == 96


def test_training_sae_is_saved_as_its_inference_sae(model, tmp_path):
    from sae_lens import SAE, StandardTrainingSAE, StandardTrainingSAEConfig

    torch.manual_seed(0)
    tsae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=32, d_sae=40))
    path = save_sae(tsae, tmp_path / "t", model=model, site="hook_image_embed")
    loaded = SAE.load_from_disk(str(path))
    assert type(loaded).__name__ == "StandardSAE"
    h = torch.randn(3, 32)
    assert torch.equal(loaded.encode(h), tsae.encode(h))
    assert load_sae(path, model=model).cfg.metadata.workbench_tower == "image"


def test_other_weights_are_refused_naming_both_fingerprints_and_the_override(model, saved):
    _, path = saved
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.visual.proj.add_(1.0)
    with pytest.raises(SAEMismatchError, match=r"trained on a model with fingerprint [0-9a-f]{12}…, but this model "
                                               r"'wb-tiny' has [0-9a-f]{12}….*strict=False"):
        load_sae(path, model=other)
    with pytest.warns(SAEMismatchWarning, match="fingerprint"):
        assert load_sae(path, model=other, strict=False) is not None


def test_another_site_is_refused_naming_both_sites(model, saved):
    _, path = saved
    with pytest.raises(SAEMismatchError, match=r"trained at 'blocks.2.hook_resid_post', not "
                                               r"'blocks.1.hook_resid_post'.*strict=False"):
        load_sae(path, model=model, site="blocks.1.hook_resid_post")
    with pytest.warns(SAEMismatchWarning):
        sae = load_sae(path, model=model, site="blocks.1.hook_resid_post", strict=False)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_a_site_of_another_width_is_refused_even_when_relaxed(model, saved):
    _, path = saved
    with pytest.warns(SAEMismatchWarning), pytest.raises(SpliceError, match=r"d_in=64, but 'hook_image_embed' has "
                                                                           r"width 32"):
        load_sae(path, model=model, site="hook_image_embed", strict=False)
    with pytest.raises(SAEMismatchError, match="no hook point named 'blocks.7.hook_resid_post'"):
        load_sae(path, model=model, site="blocks.7.hook_resid_post")


def test_missing_and_malformed_saes_are_specific_errors(tmp_path):
    with pytest.raises(SAELoadError, match=r"no SAE at 'synthsocial/nope': not a folder with cfg.json, and not a "
                                           r"shipped name \(shipped: "):
        load_sae("synthsocial/nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAELoadError, match="is not a saved SAE: it has no cfg.json"):
        load_sae(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text("{not json")
    with pytest.raises(SAELoadError, match="cannot read .*cfg.json"):
        load_sae(bad)
    (bad / "cfg.json").write_text('{"d_in": 4, "d_sae": 8, "architecture": "standard"}')
    with pytest.raises(SAELoadError, match="has a cfg.json but no sae_weights.safetensors"):
        load_sae(bad)
    good = save_sae(random_sae(8, 16), tmp_path / "good", site=SITE)
    (good / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAELoadError, match=r"sae_lens cannot load the SAE at .*good.*header"):
        load_sae(good)
    (good / "cfg.json").write_text('{"d_in": 8, "d_sae": 16, "architecture": "no-such-architecture"}')
    with pytest.raises(SAELoadError, match="sae_lens cannot load the SAE"):
        load_sae(good)
    with pytest.raises(TypeError, match="expected a path or a shipped SAE name"):
        resolve_sae_path(3)


def test_save_refuses_an_sae_without_site_and_unserialisable_metadata(model, tmp_path):
    sae = random_sae(64, 8)
    with pytest.raises(ValueError, match=r"does not record its site .*pass site="):
        save_sae(sae, tmp_path / "a")
    with pytest.raises(ValueError, match="metadata 'x' must be JSON-serialisable"):
        save_sae(sae, tmp_path / "a", site=SITE, x=float("nan"))
    with pytest.raises(ValueError, match="cannot record site 'blocks.9.hook_resid_post'"):
        save_sae(sae, tmp_path / "a", model=model, site="blocks.9.hook_resid_post")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        save_sae(sae, tmp_path / "file", site=SITE)


def test_shipped_saes_load_by_name_onto_the_shipped_model_and_splice_exactly():
    from workbench import load_clip

    assert shipped_saes() == sorted(SHIPPED)
    clip = load_clip("synthsocial")
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    x = clip.preprocess(x)
    text = clip.tokenize(["a photo of a nurse", "a photo of a doctor"])
    plain_image, plain_text = clip.encode_image(x), clip.encode_text(text)
    for name, recipe in SHIPPED.items():
        assert resolve_sae_path(name) == shipped_dir() / name
        sae = load_sae(name, model=clip)  # site and fingerprint checked against the shipped model
        meta = sae.cfg.metadata
        assert meta.hook_name == recipe.site and meta.workbench_model_fingerprint == clip.fingerprint()
        text_site = recipe.site.startswith("text.")
        with clip.saes(sae, use_error_term=True):
            out, cache = clip.run_with_cache(None if text_site else x, text=text if text_site else None,
                                             names_filter=lambda n: n.startswith(recipe.site + "."))
        assert_fp32_close(out, plain_text if text_site else plain_image, msg=name)
        assert cache[f"{recipe.site}.hook_sae_acts_post"].shape[-1] == sae.cfg.d_sae


def test_a_built_wheel_carries_the_shipped_saes(tmp_path):
    """A normal install gets the top-level saes/ folder as workbench/saes/shipped/ (setup.py maps it)."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(root / "workbench", src / "workbench", ignore=ignore)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    fake = "synthsocial/only-for-this-test"  # stands in for the shipped ones, so the mapping is tested either way
    if (root / "saes").is_dir():
        shutil.copytree(root / "saes", src / "saes", ignore=ignore)
    (src / "saes" / fake).mkdir(parents=True)
    (src / "saes" / fake / "cfg.json").write_text("{}")
    (src / "saes" / fake / "sae_weights.safetensors").write_bytes(b"x")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "whl")], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "whl").glob("workbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"workbench/saes/shipped/{p.relative_to(src / 'saes').as_posix()}"
                for p in (src / "saes").rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".md")}
    assert f"workbench/saes/shipped/{fake}/cfg.json" in expected
    assert expected <= names, sorted(expected - names)
    assert "workbench/saes/io.py" in names and "workbench/models/pretrained/synthsocial.safetensors" in names
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    code = ("from workbench.saes.io import resolve_sae_path, shipped_saes; "
            f"print(resolve_sae_path({fake!r})); print({fake!r} in shipped_saes())")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout.split()
    assert out == [str(target / "workbench" / "saes" / "shipped" / fake), "True"]
