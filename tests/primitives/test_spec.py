"""InterventionSpec: JSON round trip (hypothesis), bit-exact application after export → load, specific errors
for malformed files, missing sidecars, fingerprint mismatches and SAEs."""
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.models.archs import images_for
from workbench.primitives import (Edit, FingerprintMismatchError, FingerprintWarning, InterventionSpec, ModelRef,
                                  SAEError, SAERef, SidecarError, SpecError, SpecFormatError, SpecModelMismatchError,
                                  ablate_heads, ablate_latents, ablate_neurons, add_direction, apply, intervene,
                                  project_out, sae_sha256)
from workbench.primitives.spec import SCHEMA

HYPOTHESIS = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tiny(model):  # this file's name for the shared wb-tiny model (tests/primitives/conftest.py)
    return model


def embed(model, images, spec, **kw):
    with torch.no_grad(), apply(model, spec, **kw):
        return model.encode_image(images)


def example_spec(model):
    g = torch.Generator().manual_seed(0)
    iv = (ablate_heads([(2, 1)], op="replace", value=torch.randn(64, generator=g))      # sidecar (64 numbers)
          + ablate_neurons([(2, 1, [3, 9])], op="scale", alpha=0.1)                     # inline scalar
          + ablate_neurons([(1, None, [0, 5])], op="replace", value={(1, None, 0): 0.25, (1, None, 5): -1.5})  # inline list
          + add_direction(None, torch.randn(32, generator=g), scale=0.5, hook="hook_image_embed"))
    return iv.to_spec(model, method="expert_heads", dataset="synthsocial", attribute="gender")


# ---------------------------------------------------------------------------------------------- round trip
def test_export_load_apply_reproduces_embeddings_bit_for_bit(tiny, tmp_path):
    spec = example_spec(tiny)
    path = spec.save(tmp_path / "debias.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["debias.json", "debias.values.safetensors"]
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["sidecar"] == "debias.values.safetensors"
    assert doc["edits"][0]["value"] == {"sidecar": "edit0.value"}
    assert doc["edits"][1]["value"] == 0.1 and doc["edits"][2]["value"] == [0.25, -1.5]
    assert doc["model"] == {"name": "wb-tiny", "pretrained": None, "fingerprint": tiny.fingerprint()}
    assert doc["provenance"]["method"] == "expert_heads" and doc["provenance"]["workbench_version"]
    loaded = InterventionSpec.load(path)
    assert loaded == spec
    images = images_for(tiny, n=3)
    with torch.no_grad():
        clean = tiny.encode_image(images)
    a, b = embed(tiny, images, spec), embed(tiny, images, loaded)
    assert torch.equal(a, b) and not torch.allclose(a, clean)
    assert torch.equal(embed(tiny, images, path), b)  # apply() takes a path too
    with torch.no_grad(), intervene(tiny, spec.edits):
        assert torch.equal(tiny.encode_image(images), a)  # the spec is exactly its edits


def test_sidecar_threshold_and_stale_sidecars(tiny, tmp_path):
    small = Edit(site="neuron", op="replace", layer=0, index=list(range(16)), value=torch.arange(16.0))
    spec = InterventionSpec.from_edits(tiny, [small])
    doc, tensors = spec.to_json_dict()
    assert doc["edits"][0]["value"] == list(range(16)) and not tensors and doc["sidecar"] is None
    big = Edit(site="neuron", op="replace", layer=0, index=list(range(17)), value=torch.arange(17.0))
    doc, tensors = InterventionSpec.from_edits(tiny, [big]).to_json_dict()
    assert doc["edits"][0]["value"] == {"sidecar": "edit0.value"} and torch.equal(tensors["edit0.value"], torch.arange(17.0))
    # re-saving without tensors removes the old sidecar; no temporary files are left behind
    InterventionSpec.from_edits(tiny, [big]).save(tmp_path / "s.json")
    spec.save(tmp_path / "s.json")
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    assert InterventionSpec.load(tmp_path / "s.json") == spec


def test_sidecar_problems_name_the_file_and_key(tiny, tmp_path):
    path = example_spec(tiny).save(tmp_path / "x.json")
    sidecar = tmp_path / "x.values.safetensors"
    from safetensors.torch import save_file

    save_file({"other": torch.zeros(3)}, str(sidecar))
    with pytest.raises(SidecarError, match="has no tensor 'edit0.value'"):
        InterventionSpec.load(path)
    sidecar.write_bytes(b"not a safetensors file")
    with pytest.raises(SidecarError, match="cannot read the sidecar file"):
        InterventionSpec.load(path)
    sidecar.unlink()
    with pytest.raises(SidecarError) as info:
        InterventionSpec.load(path)
    assert str(sidecar) in str(info.value) and "missing" in str(info.value)


def test_fingerprint_mismatch_names_the_model_the_spec_was_made_for(tiny):
    spec = example_spec(tiny)
    other = InterventionSpec(model=ModelRef("ViT-B-32", "openai", "ab" * 32), edits=spec.edits)
    images = images_for(tiny, n=2)
    with pytest.raises(FingerprintMismatchError) as info:
        embed(tiny, images, other)
    assert "'ViT-B-32'" in str(info.value) and "openai" in str(info.value) and "strict_fingerprint=False" in str(info.value)
    with pytest.warns(FingerprintWarning, match="made for model 'ViT-B-32'"):
        relaxed = embed(tiny, images, other, strict_fingerprint=False)
    assert torch.equal(relaxed, embed(tiny, images, spec))
    unsigned = InterventionSpec(model=ModelRef("hand-written"), edits=spec.edits)
    with pytest.warns(FingerprintWarning, match="no model fingerprint"):
        embed(tiny, images, unsigned)


def test_edits_that_do_not_fit_the_model_are_reported_by_position(tiny):
    spec = example_spec(tiny)
    bad = InterventionSpec(model=spec.model, edits=spec.edits + [Edit(site="head", op="zero", layer=5, head=0)])
    with pytest.raises(SpecModelMismatchError, match=r"edits\[4\]: .*layer 5 out of range"):
        bad.validate(tiny)
    with pytest.raises(SpecModelMismatchError, match="layer 5 out of range"):
        InterventionSpec.from_edits(tiny, bad.edits)


# ---------------------------------------------------------------------------------------------- SAE
def test_sae_specs_resolve_relative_paths_check_hashes_and_apply_exactly(tiny, tmp_path, sae, monkeypatch):
    sae_dir = tmp_path / "saes" / "resid2"
    sae.save_model(sae_dir)
    monkeypatch.chdir(tmp_path)
    iv = ablate_latents([4, 20], op="set", value=0.0, layer=2) + ablate_heads([(0, 0)])
    spec = iv.to_spec(tiny, sae="saes/resid2", alpha=0.6, method="debiaslens")
    assert spec.sae == SAERef("saes/resid2", sae_sha256(sae_dir))
    path = spec.save(tmp_path / "specs" / "dl.json")
    assert json.loads(path.read_text())["sae"]["path"] == "../saes/resid2"  # relative to the spec's folder now
    monkeypatch.chdir(tmp_path / "saes")  # loading does not depend on the working directory
    loaded = InterventionSpec.load(path)
    images = images_for(tiny, n=2)
    with torch.no_grad(), intervene(tiny, iv, sae=sae, alpha=0.6):
        expected = tiny.encode_image(images)
    assert torch.equal(embed(tiny, images, loaded), expected)
    # a different SAE at the same path is refused
    cfg = sae_dir / "cfg.json"
    cfg.write_text(cfg.read_text() + " ")
    with pytest.raises(SAEError, match="different SAE"):
        embed(tiny, images, InterventionSpec.load(path))
    # an explicitly passed SAE wins over the spec's entry
    assert torch.equal(embed(tiny, images, InterventionSpec.load(path), sae=sae), expected)


def test_missing_sae_errors(tiny, tmp_path):
    images = images_for(tiny, n=1)
    no_entry = InterventionSpec.from_edits(tiny, ablate_latents([1], layer=2))
    with pytest.raises(SAEError, match="no `sae` entry"):
        embed(tiny, images, no_entry)
    gone = InterventionSpec(model=no_entry.model, edits=no_entry.edits, sae=SAERef(str(tmp_path / "nope"), "0" * 64))
    with pytest.raises(SAEError, match="does not exist"):
        embed(tiny, images, gone)
    with pytest.raises(SAEError, match="not an SAE object"):
        InterventionSpec.from_edits(tiny, no_entry.edits, sae=object())


# ---------------------------------------------------------------------------------------------- malformed files
def _write(tmp_path, doc_or_text, name="m.json"):
    p = tmp_path / name
    p.write_text(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
    return p


def _valid_doc():
    return {
        "schema": SCHEMA,
        "model": {"name": "wb-tiny", "pretrained": None, "fingerprint": "c" * 64},
        "edits": [
            {"site": "head", "op": "zero", "layer": 1, "head": 2, "index": None, "position": "cls", "tower": "image", "value": None},
            {"site": "neuron", "op": "scale", "layer": 0, "head": None, "index": [1, 2], "position": "all", "tower": "image", "value": [0.5, 2.0]},
            {"site": "direction", "op": "add", "layer": None, "hook": "hook_image_embed", "position": "all", "tower": "image",
             "value": [1.0, 2.0], "scale": 2.0},
        ],
        "sidecar": None,
        "sae": {"path": "saes/x", "sha256": "d" * 64},
        "alpha": 0.6,
        "provenance": {"method": "m", "dataset": None, "attribute": "gender", "date": "2026-01-01", "workbench_version": "0.1.0"},
    }


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ('{"schema": NaN}', "NaN is not allowed"),
    ('{"schema": "a", "schema": "b"}', "duplicate keys ['schema']"),
    ("[]", "expected a JSON object"),
    ('{"model": {}}', "not a workbench intervention spec"),
    ('{"schema": "workbench.intervention/v2"}', "unsupported version 'workbench.intervention/v2'"),
    ('{"schema": "workbench.intervention/v1"}', "missing key(s) ['edits', 'model']"),
])
def test_malformed_text_raises_spec_format_errors(tmp_path, text, message):
    with pytest.raises(SpecFormatError) as info:
        InterventionSpec.load(_write(tmp_path, text))
    assert message in str(info.value) and "m.json" in str(info.value)


def test_the_valid_base_document_loads(tmp_path):
    spec = InterventionSpec.load(_write(tmp_path, _valid_doc()))
    assert len(spec.edits) == 3 and spec.alpha == 0.6 and spec.edits[2].scale == 2.0


@pytest.mark.parametrize("path, bad, message", [
    (("edits", 0, "op"), "ablate", "unknown op 'ablate'"),
    (("edits", 0, "site"), None, "unknown site None"),
    (("edits", 0, "position"), "first", "unknown position 'first'"),
    (("edits", 0, "layer"), -1, "layer must be a non-negative int"),
    (("edits", 0, "layer"), 1.0, "layer must be a non-negative int"),
    (("edits", 1, "index"), [1, 1], "duplicates"),
    (("edits", 1, "value"), [0.5, "x"], "list of numbers"),
    (("edits", 1, "value"), [[0.5], [1.0, 2.0]], "rectangular"),
    (("edits", 1, "value"), {"inline": [1]}, "must be {\"sidecar\": key}, got keys ['inline']"),
    (("edits", 1, "value"), {"sidecar": "edit1.value"}, "sidecar"),
    (("edits", 2, "scale"), "2", "expected a number"),
    (("edits", 2, "positon"), "all", "unknown key(s) ['positon']"),
    (("model", "fingerprint"), "xyz", "64 lowercase hex"),
    (("model", "name"), 3, "model.name: expected a non-empty string"),
    (("sae", "sha256"), None, "sae.sha256"),
    (("alpha",), "0.6", "alpha: expected a finite number"),
    (("provenance", "notes"), ["a"], "provenance.notes must be"),
    (("edits",), {}, "expected a list of edits"),
])
def test_specific_fields_are_named_in_errors(tmp_path, path, bad, message):
    doc = _valid_doc()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = bad
    with pytest.raises(SpecError) as info:
        InterventionSpec.load(_write(tmp_path, doc))
    assert message in str(info.value)


# Mutations that always make the base document invalid: (where, how). Each yields a specific SpecError.
NOT_INT = st.one_of(st.floats(allow_nan=False), st.text(max_size=3), st.booleans(), st.lists(st.integers(), max_size=2),
                    st.integers(max_value=-1))
NOT_STR = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.text(max_size=2), max_size=2))
NOT_NUMBER = st.one_of(st.text(max_size=3), st.booleans(), st.lists(st.floats(allow_nan=False), max_size=2), st.none(),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
UNKNOWN_WORD = st.text(min_size=1, max_size=8).filter(
    lambda s: s not in {"head", "neuron", "sae_latent", "direction", "zero", "mean", "replace", "scale", "set", "add",
                        "project_out", "cls", "all", "image", "text"})


@st.composite
def mutations(draw):
    doc = _valid_doc()
    kind = draw(st.sampled_from(["drop", "extra", "enum", "int", "str", "number", "value", "schema", "container"]))
    i = draw(st.integers(0, 2))
    edit = doc["edits"][i]
    if kind == "drop":
        where = draw(st.sampled_from(["schema", "model", "edits", "model.name", "edit.site", "edit.op", "sae.path"]))
        if where.startswith("edit."):
            del edit[where[5:]]
        elif "." in where:
            del doc[where.split(".")[0]][where.split(".")[1]]
        else:
            del doc[where]
    elif kind == "extra":
        holder = draw(st.sampled_from([doc, doc["model"], edit, doc["sae"]]))
        key = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in holder and k not in
                                                          {"pretrained", "fingerprint", "sidecar", "sae", "alpha", "provenance",
                                                           "layer", "head", "index", "position", "value", "tower", "hook", "scale"}))
        holder[key] = draw(st.integers())
    elif kind == "enum":
        edit[draw(st.sampled_from(["site", "op", "position", "tower"]))] = draw(st.one_of(UNKNOWN_WORD, NOT_STR, st.none()))
    elif kind == "int":
        edit[draw(st.sampled_from(["layer", "head"] if i == 0 else ["layer"]))] = draw(NOT_INT)
    elif kind == "str":
        key = draw(st.sampled_from(["model.name", "model.fingerprint", "sae.path", "sae.sha256", "sidecar"]))
        value = draw(NOT_STR)
        if key == "sidecar":
            doc["sidecar"] = value
        else:
            doc[key.split(".")[0]][key.split(".")[1]] = value
    elif kind == "number":
        if draw(st.booleans()):
            doc["alpha"] = draw(NOT_NUMBER)
        else:
            doc["edits"][2]["scale"] = draw(NOT_NUMBER)
    elif kind == "value":
        doc["edits"][1]["value"] = draw(st.one_of(
            st.text(max_size=3), st.booleans(), st.just([]), st.just([[1.0], [1.0, 2.0]]), st.just([[[1.0]]]),
            st.lists(st.text(max_size=2), min_size=1, max_size=2), st.just([1e300, 1.0]), st.just([10 ** 400, 1]),
            st.dictionaries(st.text(max_size=3).filter(lambda k: k != "sidecar"), st.integers(), min_size=1, max_size=2)))
    elif kind == "schema":
        doc["schema"] = draw(st.one_of(st.text(max_size=30).filter(lambda s: s != SCHEMA), NOT_STR, st.none()))
    else:
        key = draw(st.sampled_from(["model", "edits", "sae", "provenance"]))
        doc[key] = draw(st.one_of(st.text(max_size=3), st.integers(), st.booleans(), st.lists(st.integers(), min_size=1, max_size=2))
                        if key != "edits" else st.one_of(st.text(max_size=3), st.integers(), st.booleans(), st.just({})))
    return kind, doc


@HYPOTHESIS
@given(mutations())
def test_random_mutations_are_rejected_with_a_spec_format_error(mutation):
    kind, doc = mutation
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(SpecFormatError):
            InterventionSpec.load(path)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=5), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=8)
EDIT_KEYS = ["site", "op", "layer", "head", "index", "position", "value", "tower", "hook", "scale"]


def _outcome(doc):
    """'ok', or the class of the exception from_json_dict raised (asserted on outside)."""
    try:
        InterventionSpec.from_json_dict(doc, sidecar={})
    except Exception as err:  # noqa: BLE001 - the test asserts which kinds are allowed
        return type(err)
    return "ok"


# Field values near the valid ones reach the deeper checks (ranges, shapes, sidecar references).
PLAUSIBLE = st.one_of(JSON, st.integers(-2, 300), st.lists(st.integers(-2, 300), max_size=4),
                      st.sampled_from(["cls", "all", "image", "text", "hook_image_embed", "text.hook_text_embed"]),
                      st.lists(st.floats(-1e40, 1e40), max_size=4), st.lists(st.lists(st.floats(-3, 3), max_size=3), max_size=3),
                      st.just({"sidecar": "edit0.value"}))


@st.composite
def edit_objects(draw):
    edit = draw(st.dictionaries(st.sampled_from(EDIT_KEYS), PLAUSIBLE, max_size=6))
    if draw(st.booleans()):
        edit["site"] = draw(st.sampled_from(["head", "neuron", "sae_latent", "direction"]))
        edit["op"] = draw(st.sampled_from(["zero", "mean", "replace", "scale", "set", "add", "project_out"]))
    return edit


@settings(HYPOTHESIS, max_examples=200)
@given(edit_objects())
def test_arbitrary_edit_objects_load_or_raise_spec_errors_only(edit):
    doc = {"schema": SCHEMA, "model": {"name": "m"}, "edits": [edit]}
    outcome = _outcome(doc)
    assert outcome == "ok" or issubclass(outcome, SpecError), outcome


@HYPOTHESIS
@given(JSON)
def test_arbitrary_json_documents_raise_spec_errors_only(doc):
    outcome = _outcome(doc)
    assert outcome != "ok" and issubclass(outcome, SpecError), outcome


# ---------------------------------------------------------------------------------------------- random valid specs
F32 = st.floats(-8, 8, allow_nan=False, width=32)


def _vec(n):
    return st.lists(F32, min_size=n, max_size=n).map(torch.tensor)


def _nonzero(n):
    return _vec(n).filter(lambda v: v.abs().sum() > 0.1)


@st.composite
def valid_edits(draw, with_sae=False):
    site = draw(st.sampled_from(["head", "neuron", "direction"] + (["sae_latent"] if with_sae else [])))
    position = draw(st.sampled_from(["cls", "all"]))
    if site == "direction":
        hook = draw(st.sampled_from([None, "hook_image_embed"]))
        width = 32 if hook else 64
        op = draw(st.sampled_from(["add", "project_out"]))
        return Edit(site=site, op=op, layer=None if hook else draw(st.integers(0, 2)), hook=hook, position=position,
                    value=draw(_nonzero(width)), scale=draw(st.sampled_from([1.0, 0.5, -2.25])))
    if site == "sae_latent":
        index = draw(st.lists(st.integers(0, 127), min_size=1, max_size=3, unique=True))
        op = draw(st.sampled_from(["zero", "set", "scale"]))
        value = None if op == "zero" else draw(F32)
        return Edit(site=site, op=op, layer=2, index=index, position=position, value=value)
    head = draw(st.integers(0, 3)) if site == "head" else draw(st.one_of(st.none(), st.integers(0, 3)))
    layer = draw(st.integers(0, 2))
    op = draw(st.sampled_from(["zero", "mean", "replace", "scale", "set", "add", "project_out"]))
    if site == "head":
        width, index = 64, None
    else:
        index = draw(st.one_of(st.integers(0, 63), st.lists(st.integers(0, 63), min_size=1, max_size=20, unique=True)))
        width = 1 if isinstance(index, int) else len(index)
    if op == "zero":
        value = None
    elif op == "project_out":
        value = draw(_nonzero(width))
    elif op in ("scale", "add") or site != "head":
        value = draw(st.one_of(F32, _vec(width)))
    else:
        value = draw(_vec(width))
    return Edit(site=site, op=op, layer=layer, head=head, index=index, position=position, value=value)


@HYPOTHESIS
@given(edits=st.lists(valid_edits(with_sae=True), max_size=5), alpha=st.floats(0, 1),
       method=st.one_of(st.none(), st.text(max_size=10)), threshold=st.sampled_from([0, 16, 10_000]))
def test_random_valid_specs_round_trip_exactly(edits, alpha, method, threshold):
    sae = SAERef("/data/saes/resid2", "e" * 64) if any(e.site == "sae_latent" for e in edits) else None
    spec = InterventionSpec(model=ModelRef("wb-tiny", None, "a" * 64), edits=edits, sae=sae, alpha=alpha,
                            provenance={"method": method, "date": "2026-02-03T04:05:06+00:00"})
    with tempfile.TemporaryDirectory() as tmp:
        path = spec.save(Path(tmp) / "r.json", sidecar_threshold=threshold)
        loaded = InterventionSpec.load(path)
    assert loaded == spec
    assert loaded.to_json_dict(threshold)[0] == spec.to_json_dict(threshold)[0]


@HYPOTHESIS
@given(edits=st.lists(valid_edits(), min_size=1, max_size=4))
def test_random_valid_specs_apply_identically_after_export(tiny, edits):
    spec = InterventionSpec.from_edits(tiny, edits)
    images = images_for(tiny, n=2, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = InterventionSpec.load(spec.save(Path(tmp) / "a.json"))
    assert torch.equal(embed(tiny, images, loaded), embed(tiny, images, spec))


def test_text_tower_specs_apply_identically_after_export(tiny, tmp_path):
    g = torch.Generator().manual_seed(7)
    iv = (ablate_heads([(1, 2)], op="replace", value=torch.randn(48, generator=g), tower="text")
          + ablate_neurons([(0, None, [3, 4])], op="scale", alpha=0.3, position="all", tower="text")
          + project_out(None, torch.randn(32, generator=g), hook="text.hook_text_embed", position="cls"))
    spec = InterventionSpec.load(iv.to_spec(tiny).save(tmp_path / "t.json"))
    tokens = tiny.tokenize(["a photo of a nurse", "a doctor"])
    with torch.no_grad():
        clean = tiny.encode_text(tokens)
        with apply(tiny, iv.to_spec(tiny)):
            a = tiny.encode_text(tokens)
        with apply(tiny, spec):
            b = tiny.encode_text(tokens)
    assert torch.equal(a, b) and not torch.allclose(a, clean)


def test_save_rejects_non_json_paths(tiny, tmp_path):
    with pytest.raises(SpecError, match="end in .json"):
        example_spec(tiny).save(tmp_path / "spec.txt")
    with pytest.raises(SpecError, match="no spec file"):
        InterventionSpec.load(tmp_path / "missing.json")
