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
          + ablate_neurons([(2, 1, [3, 9])], op="scale", factor=0.1)                    # inline scalar
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
    small = Edit(target="neuron", op="replace", layer=0, index=list(range(16)), value=torch.arange(16.0))
    spec = InterventionSpec.from_edits(tiny, [small])
    doc, tensors = spec.to_json_dict()
    assert doc["edits"][0]["value"] == list(range(16)) and not tensors and doc["sidecar"] is None
    big = Edit(target="neuron", op="replace", layer=0, index=list(range(17)), value=torch.arange(17.0))
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
    bad = InterventionSpec(model=spec.model, edits=spec.edits + [Edit(target="head", op="zero", layer=5, head=0)])
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
            {"target": "head", "op": "zero", "layer": 1, "head": 2, "index": None, "position": "cls", "tower": "image", "value": None},
            {"target": "neuron", "op": "scale", "layer": 0, "head": None, "index": [1, 2], "position": "all", "tower": "image", "value": [0.5, 2.0]},
            {"target": "direction", "op": "add", "layer": None, "hook": "hook_image_embed", "position": "all", "tower": "image",
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
    ('{"schema": "workbench.intervention/v3"}', "unsupported version 'workbench.intervention/v3'"),
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
    (("edits", 0, "target"), None, "unknown target None"),
    (("edits", 0, "site"), "head", "unknown key(s) ['site']"),
    (("edits", 0, "reference"), [1.0], "reference only applies to modulate"),
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
                        "project_out", "modulate", "cls", "pooled", "all", "image", "text"})


@st.composite
def mutations(draw):
    doc = _valid_doc()
    kind = draw(st.sampled_from(["drop", "extra", "enum", "int", "str", "number", "value", "schema", "container"]))
    i = draw(st.integers(0, 2))
    edit = doc["edits"][i]
    if kind == "drop":
        where = draw(st.sampled_from(["schema", "model", "edits", "model.name", "edit.target", "edit.op", "sae.path"]))
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
                                                           "layer", "head", "index", "position", "value", "tower", "hook", "scale",
                                                           "reference"}))
        holder[key] = draw(st.integers())
    elif kind == "enum":
        edit[draw(st.sampled_from(["target", "op", "position", "tower"]))] = draw(st.one_of(UNKNOWN_WORD, NOT_STR, st.none()))
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
EDIT_KEYS = ["target", "op", "layer", "head", "index", "position", "value", "tower", "hook", "scale", "reference"]


def _outcome(doc):
    """'ok', or the class of the exception from_json_dict raised (asserted on outside)."""
    try:
        InterventionSpec.from_json_dict(doc, sidecar={})
    except Exception as err:  # noqa: BLE001 - the test asserts which kinds are allowed
        return type(err)
    return "ok"


# Field values near the valid ones reach the deeper checks (ranges, shapes, sidecar references).
PLAUSIBLE = st.one_of(JSON, st.integers(-2, 300), st.lists(st.integers(-2, 300), max_size=4),
                      st.sampled_from(["cls", "pooled", "all", "image", "text", "hook_image_embed", "text.hook_text_embed"]),
                      st.lists(st.floats(-1e40, 1e40), max_size=4), st.lists(st.lists(st.floats(-3, 3), max_size=3), max_size=3),
                      st.just({"sidecar": "edit0.value"}))


@st.composite
def edit_objects(draw):
    edit = draw(st.dictionaries(st.sampled_from(EDIT_KEYS), PLAUSIBLE, max_size=6))
    if draw(st.booleans()):
        edit["target"] = draw(st.sampled_from(["head", "neuron", "sae_latent", "direction"]))
        edit["op"] = draw(st.sampled_from(["zero", "mean", "replace", "scale", "set", "add", "project_out", "modulate"]))
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
    position = draw(st.sampled_from(["cls", "pooled", "all"]))
    if site == "direction":
        hook = draw(st.sampled_from([None, "hook_image_embed"]))
        width = 32 if hook else 64
        op = draw(st.sampled_from(["add", "project_out"]))
        return Edit(target=site, op=op, layer=None if hook else draw(st.integers(0, 2)), hook=hook, position=position,
                    value=draw(_nonzero(width)), scale=draw(st.sampled_from([1.0, 0.5, -2.25])))
    if site == "sae_latent":
        op = draw(st.sampled_from(["zero", "set", "scale", "modulate"]))
        if op == "modulate":  # every latent, with a reference: the SEM modulation
            return Edit(target=site, op=op, layer=2, position=position, value=draw(_vec(128)),
                        reference=draw(st.one_of(st.none(), F32, _vec(128))))
        index = draw(st.lists(st.integers(0, 127), min_size=1, max_size=3, unique=True))
        value = None if op == "zero" else draw(F32)
        return Edit(target=site, op=op, layer=2, index=index, position=position, value=value)
    head = draw(st.integers(0, 3)) if site == "head" else draw(st.one_of(st.none(), st.integers(0, 3)))
    layer = draw(st.integers(0, 2))
    op = draw(st.sampled_from(["zero", "mean", "replace", "scale", "set", "add", "project_out", "modulate"]))
    if site == "head":
        width, index = 64, None
    else:
        index = draw(st.one_of(st.integers(0, 63), st.lists(st.integers(0, 63), min_size=1, max_size=20, unique=True)))
        width = 1 if isinstance(index, int) else len(index)
    if op == "zero":
        value = None
    elif op == "project_out":
        value = draw(_nonzero(width))
    elif op in ("scale", "add", "modulate") or site != "head":
        value = draw(st.one_of(F32, _vec(width)))
    else:
        value = draw(_vec(width))
    reference = draw(st.one_of(st.none(), F32, _vec(width))) if op == "modulate" else None
    return Edit(target=site, op=op, layer=layer, head=head, index=index, position=position, value=value,
                reference=reference)


@HYPOTHESIS
@given(edits=st.lists(valid_edits(with_sae=True), max_size=5), alpha=st.floats(0, 1),
       method=st.one_of(st.none(), st.text(max_size=10)), threshold=st.sampled_from([0, 16, 10_000]))
def test_random_valid_specs_round_trip_exactly(edits, alpha, method, threshold):
    sae = SAERef("/data/saes/resid2", "e" * 64) if any(e.target == "sae_latent" for e in edits) else None
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
          + ablate_neurons([(0, None, [3, 4])], op="scale", factor=0.3, position="all", tower="text")
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


# ---------------------------------------------------------------------------------------------- versions
V1_DOCUMENT = """{
  "schema": "workbench.intervention/v1",
  "model": {"name": "wb-tiny", "pretrained": null, "fingerprint": null},
  "edits": [
    {"site": "head", "op": "replace", "layer": 2, "head": 1, "index": null, "position": "cls", "tower": "image",
     "value": [0.5, -1.0, 2.0, 0.25]},
    {"site": "neuron", "op": "scale", "layer": 1, "head": null, "index": [3, 9], "position": "all",
     "tower": "text", "value": 0.1},
    {"site": "direction", "op": "project_out", "layer": null, "head": null, "index": null, "position": "cls",
     "tower": "image", "hook": "hook_image_embed", "value": [1.0, 0.0], "scale": 0.5}
  ],
  "sidecar": null,
  "sae": null,
  "alpha": 1.0,
  "provenance": {"method": "expert_heads", "date": "2026-01-01T00:00:00+00:00", "workbench_version": "0.1.0"}
}"""


def test_version_1_files_are_still_read(tmp_path):
    spec = InterventionSpec.load(_write(tmp_path, V1_DOCUMENT))
    assert spec.edits == [
        Edit(target="head", op="replace", layer=2, head=1, position="pooled", value=[0.5, -1.0, 2.0, 0.25]),
        Edit(target="neuron", op="scale", layer=1, index=[3, 9], position="all", tower="text", value=0.1),
        Edit(target="direction", op="project_out", hook="hook_image_embed", position="pooled", value=[1.0, 0.0],
             scale=0.5),
    ]
    assert spec.provenance["method"] == "expert_heads"
    resaved = json.loads(spec.save(tmp_path / "v2.json").read_text())  # written back as version 2
    assert resaved["schema"] == SCHEMA == "workbench.intervention/v2"
    assert [e["target"] for e in resaved["edits"]] == ["head", "neuron", "direction"]
    assert resaved["edits"][0]["position"] == "pooled" and "site" not in resaved["edits"][0]
    v1_with_target = V1_DOCUMENT.replace('"site": "head"', '"target": "head"')
    with pytest.raises(SpecFormatError, match=r"edits\[0\]: unknown key\(s\) \['target'\] in a version 1 spec"):
        InterventionSpec.load(_write(tmp_path, v1_with_target))


# ---------------------------------------------------------------------------------------------- saving
def test_one_value_for_several_heads_is_stored_once_and_loads_equal(tiny, tmp_path):
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))
    iv = ablate_heads([(2, 1), (2, 3)], op="replace", value=v) + ablate_heads([(1, 0)], op="replace", value=-v)
    spec = iv.to_spec(tiny)
    path = spec.save(tmp_path / "shared.json")  # used to fail: "Some tensors share memory"
    doc = json.loads(path.read_text())
    assert [e["value"] for e in doc["edits"]] == [{"sidecar": "edit0.value"}, {"sidecar": "edit0.value"},
                                                  {"sidecar": "edit2.value"}]
    from safetensors.torch import load_file

    assert sorted(load_file(str(tmp_path / "shared.values.safetensors"))) == ["edit0.value", "edit2.value"]
    loaded = InterventionSpec.load(path)
    assert loaded == spec and torch.equal(loaded.edits[1].value, v)
    images = images_for(tiny, n=2)
    assert torch.equal(embed(tiny, images, loaded), embed(tiny, images, spec))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_spec_files_get_the_permissions_of_the_umask(tiny, tmp_path, umask, mode):
    import os
    import stat

    old = os.umask(umask)
    try:
        path = example_spec(tiny).save(tmp_path / "p.json")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "p.values.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == mode, p


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_save_leaves_the_previous_spec_whole(tiny, tmp_path, monkeypatch):
    import workbench.primitives.spec as spec_module

    path = example_spec(tiny).save(tmp_path / "s.json")
    before = _snapshot(tmp_path)
    g = torch.Generator().manual_seed(9)
    other = InterventionSpec.from_edits(tiny, ablate_heads([(0, 1)], op="replace", value=torch.randn(64, generator=g)))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    # 1. the JSON cannot be serialised: nothing is written at all
    monkeypatch.setattr(spec_module.json, "dumps", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before
    # 2. writing the JSON's temporary file fails: the sidecar was not replaced either
    monkeypatch.setattr(Path, "write_text", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before
    # 3. writing the sidecar fails: the JSON was not replaced
    monkeypatch.setattr(Path, "write_bytes", fail)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before  # no temporary files left either
    assert InterventionSpec.load(path).edits == example_spec(tiny).edits
    assert other.save(path) and InterventionSpec.load(path) == other


# ---------------------------------------------------------------------------------------------- modulation (SEM)
def test_latent_modulation_exports_and_equals_the_raw_sem_hook_bit_for_bit(tiny, tmp_path):
    from tests.primitives.conftest import random_sae
    from workbench.primitives import modulate_latents, sae_modulation_hook, steer

    text_sae = random_sae(32, 96, seed=1)  # on the text embedding (d_embed = 32)
    sae_dir = tmp_path / "text_sae"
    text_sae.save_model(sae_dir)
    M = torch.rand(96, generator=torch.Generator().manual_seed(1))
    m = torch.rand(96, generator=torch.Generator().manual_seed(2))
    edit = modulate_latents(M, m, hook="text.hook_text_embed")
    assert (edit.target, edit.op, edit.tower, edit.index) == ("sae_latent", "modulate", "text", None)
    path = InterventionSpec.from_edits(tiny, [edit], sae=sae_dir, method="sem").save(tmp_path / "sem.json")
    doc = json.loads(path.read_text())
    assert doc["edits"][0]["value"] == {"sidecar": "edit0.value"} and doc["edits"][0]["reference"] == {"sidecar": "edit0.reference"}
    loaded = InterventionSpec.load(path)
    assert torch.equal(loaded.edits[0].value, M) and torch.equal(loaded.edits[0].reference, m)
    tokens = tiny.tokenize(["a photo of a nurse", "a doctor", ""])
    with torch.no_grad():
        clean = tiny.encode_text(tokens)
        with steer(tiny, "text.hook_text_embed", sae_modulation_hook(text_sae, lambda z: M * z + (1 - M) * m)):
            raw = tiny.encode_text(tokens)
        with apply(tiny, loaded):
            exported = tiny.encode_text(tokens)
        with intervene(tiny, edit, sae=text_sae):
            direct = tiny.encode_text(tokens)
    assert torch.equal(exported, raw) and torch.equal(direct, raw) and not torch.allclose(raw, clean)
    with pytest.raises(SpecModelMismatchError, match=r"value has shape \[95\], expected \[96\] \(the SAE's d_sae"):
        InterventionSpec(model=loaded.model, edits=[modulate_latents(M[:95], hook="text.hook_text_embed")],
                         sae=loaded.sae, base_dir=tmp_path).validate(tiny)
