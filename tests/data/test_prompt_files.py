import pytest

from workbench.data.prompt_files import (
    PromptFileError, SoBITTaxonomy, load_debiaslens_prompts, load_sem_prompts, load_sobit,
)

# ------------------------------------------------------------------ So-B-IT

TAXONOMY = {"appearance": ["tall", "ugly"], "occupation": ["nurse", "CEO"], "religion": ["atheist"]}


def test_sobit_official_shape_with_word_types(tmp_path, files):
    taxonomy = files.json(tmp_path / "So-B-IT_taxonomy.json", TAXONOMY)
    types = files.json(tmp_path / "So-B-IT_categories.json",
                       {"tall": "ADJECTIVE", "ugly": "adjective", "nurse": "NOUN", "CEO": "NOUN", "atheist": "NOUN"})
    loaded = load_sobit(taxonomy, types)
    assert isinstance(loaded, SoBITTaxonomy) and isinstance(loaded, dict)
    assert loaded == TAXONOMY and list(loaded) == ["appearance", "occupation", "religion"]
    assert loaded.word_types["ugly"] == "ADJECTIVE"
    assert loaded.prompts()["appearance"] == ["a photo of a/an tall person", "a photo of a/an ugly person"]
    assert loaded.prompts(noun_template="a photo of {}")["occupation"] == ["a photo of nurse", "a photo of CEO"]


def test_sobit_list_of_objects_and_category_order(tmp_path, files):
    taxonomy = files.json(tmp_path / "tax.json", [{"category": "a", "words": ["x", " y "]}, {"name": "b", "words": ["z"]}])
    assert load_sobit(taxonomy) == {"a": ["x", "y"], "b": ["z"]}
    order = files.lines(tmp_path / "categories.txt", ["b", "a"])
    assert list(load_sobit(taxonomy, order).items()) == [("b", ["z"]), ("a", ["x", "y"])]
    assert list(load_sobit(taxonomy, files.json(tmp_path / "c.json", ["b"]))) == ["b"]


def test_sobit_errors_show_accepted_shapes(tmp_path, files):
    with pytest.raises(PromptFileError, match=r"taxonomy\['a'\] must be a non-empty list(.|\n)*accepted So-B-IT taxonomy shapes"):
        load_sobit(files.json(tmp_path / "t.json", {"a": "tall"}))
    taxonomy = files.json(tmp_path / "ok.json", TAXONOMY)
    with pytest.raises(PromptFileError, match=r"1 taxonomy words have no word type, e.g. \['atheist'\]"):
        load_sobit(taxonomy, files.json(tmp_path / "w.json", {w: "NOUN" for w in ["tall", "ugly", "nurse", "CEO"]}))
    with pytest.raises(PromptFileError, match=r"word types must be \('ADJECTIVE', 'NOUN'\)"):
        load_sobit(taxonomy, files.json(tmp_path / "v.json", {"tall": "VERB"}))
    with pytest.raises(PromptFileError, match=r"categories \['politics'\] are not in the taxonomy"):
        load_sobit(taxonomy, files.lines(tmp_path / "c.txt", ["politics"]))
    with pytest.raises(PromptFileError, match="appears twice"):
        load_sobit(files.json(tmp_path / "d.json", [{"category": "a", "words": ["x"]}, {"category": "a", "words": ["y"]}]))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_sobit(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="no word types loaded"):
        load_sobit(taxonomy).prompts()


# ------------------------------------------------------------------ SEM

BIAS = {"Male": ["A portrait of a man.", "A photo of him."], "Female": ["A portrait of a woman.", "A photo of her."]}


def _sem_block(query, paraphrases):
    return {"query": query, "extra prompts": {
        "orth_proj": {"spurious prompts": ["A photo of a male person."]},
        "sem": {"bias prompts": BIAS, "extra class prompts": [[query, *paraphrases]]},
    }}


def test_sem_official_query_templates_with_python_diverse_file(tmp_path, files):
    templates = files.json(tmp_path / "stereotype_gender_query_templates.json", {
        "thief": _sem_block("A photo of a thief.", ["An image of a thief."]),
        "hacker": _sem_block("A photo of a hacker.", ["A person hacking.", "A hacker at a laptop."]),
    })
    diverse = tmp_path / "diverse_prompts.py"
    diverse.write_text('diverse_prompts = [\n    "A dog in a park.",\n    "A city at night.",  # comment\n]\n')
    loaded = load_sem_prompts(templates, diverse=diverse)
    assert loaded == {
        "diverse": ["A dog in a park.", "A city at night."],
        "paraphrases": {
            "A photo of a thief.": ["A photo of a thief.", "An image of a thief."],
            "A photo of a hacker.": ["A photo of a hacker.", "A person hacking.", "A hacker at a laptop."],
        },
        "bias": BIAS,
        "queries": {"thief": "A photo of a thief.", "hacker": "A photo of a hacker."},
    }


def test_sem_official_zero_shot_templates(tmp_path, files):
    path = files.json(tmp_path / "waterbirds_prompt_templates.json", {"extra prompts": {"sem": {
        "bias prompts": {"land background": ["A forest."], "water background": ["An ocean."]},
        "extra class prompts": [["A landbird.", "A songbird."], ["A waterbird.", "A duck."]],
    }, "vanilla": {}}})
    loaded = load_sem_prompts(path)
    assert loaded["paraphrases"] == {"A landbird.": ["A landbird.", "A songbird."], "A waterbird.": ["A waterbird.", "A duck."]}
    assert loaded["bias"] == {"land background": ["A forest."], "water background": ["An ocean."]}
    assert loaded["diverse"] == [] and loaded["queries"] == {}
    with pytest.raises(PromptFileError, match=r"no \"extra prompts\" entry for method 'bendsem'; available: \['sem', 'vanilla'\]"):
        load_sem_prompts(path, method="bendsem")


def test_sem_simple_shapes(tmp_path, files):
    assert load_sem_prompts(files.lines(tmp_path / "d.txt", ["# diverse set", "A cat.", "", "A car."]))["diverse"] == ["A cat.", "A car."]
    assert load_sem_prompts(files.json(tmp_path / "d.json", ["A cat."]))["diverse"] == ["A cat."]
    canonical = files.json(tmp_path / "c.json", {"diverse": ["A cat."], "bias": {"a": ["x"], "b": ["y"]}})
    assert load_sem_prompts(canonical) == {"diverse": ["A cat."], "paraphrases": {}, "bias": {"a": ["x"], "b": ["y"]}, "queries": {}}


def test_sem_errors_show_accepted_shapes(tmp_path, files):
    with pytest.raises(PromptFileError, match=r"does not match any accepted shape(.|\n)*accepted SEM prompt files"):
        load_sem_prompts(files.json(tmp_path / "x.json", {"prompts": ["a"]}))
    with pytest.raises(PromptFileError, match=r"at least two classes, got only \['Male'\]"):
        load_sem_prompts(files.json(tmp_path / "one.json", {"bias": {"Male": ["A man."]}}))
    with pytest.raises(PromptFileError, match=r"diverse holds non-string or empty entries, e.g. \[3\]"):
        load_sem_prompts(files.json(tmp_path / "n.json", {"diverse": ["ok", 3]}))
    unsafe = tmp_path / "unsafe.py"
    unsafe.write_text("diverse_prompts = [open('/etc/passwd').read()]\n")
    with pytest.raises(PromptFileError, match="not a plain literal"):
        load_sem_prompts(unsafe)
    different = {"a": _sem_block("A photo of a.", []), "b": _sem_block("A photo of b.", [])}
    different["b"]["extra prompts"]["sem"]["bias prompts"] = {"x": ["1"], "y": ["2"]}
    with pytest.raises(PromptFileError, match="other bias prompts than earlier queries"):
        load_sem_prompts(files.json(tmp_path / "q.json", different))


# ------------------------------------------------------------------ DebiasLens


def test_debiaslens_official_csv_fills_every_template_with_every_concept(tmp_path, files):
    path = files.lines(tmp_path / "prompt_templates_adjectives.csv", [
        "template,concept", "A {} person,good", "This person is {},kind", ",evil",
    ])
    assert load_debiaslens_prompts(path) == {
        "good": ["A good person", "This person is good"],
        "kind": ["A kind person", "This person is kind"],
        "evil": ["A evil person", "This person is evil"],
    }


def test_debiaslens_text_and_json(tmp_path, files):
    assert load_debiaslens_prompts(files.lines(tmp_path / "adjectives.txt", ["A photo of a kind person", ""])) == {
        "adjectives": ["A photo of a kind person"]}
    assert load_debiaslens_prompts(files.json(tmp_path / "p.json", {"occupations": ["A doctor"]})) == {"occupations": ["A doctor"]}
    assert load_debiaslens_prompts(files.json(tmp_path / "l.json", ["A nurse"])) == {"l": ["A nurse"]}


def test_debiaslens_errors(tmp_path, files):
    with pytest.raises(PromptFileError, match=r"expected columns template,concept; found \['prompt'\](.|\n)*accepted DebiasLens"):
        load_debiaslens_prompts(files.lines(tmp_path / "a.csv", ["prompt", "x"]))
    with pytest.raises(PromptFileError, match=r"exactly one '\{\}' placeholder, e.g. \['A person'\]"):
        load_debiaslens_prompts(files.lines(tmp_path / "b.csv", ["template,concept", "A person,good"]))
    with pytest.raises(PromptFileError, match=r"concepts listed twice: \['good'\]"):
        load_debiaslens_prompts(files.lines(tmp_path / "c.csv", ["template,concept", "A {},good", ",good"]))
    with pytest.raises(PromptFileError, match="does not match any accepted shape"):
        load_debiaslens_prompts(files.json(tmp_path / "d.json", 42))


def test_prompt_files_with_a_utf8_bom_read_like_plain_utf8(tmp_path):
    import codecs

    csv = tmp_path / "prompt_templates_adjectives.csv"  # as Excel saves "CSV UTF-8"
    csv.write_bytes(codecs.BOM_UTF8 + b"template,concept\r\nA {} person,good\r\n")
    assert load_debiaslens_prompts(csv) == {"good": ["A good person"]}
    text = tmp_path / "adjectives.txt"
    text.write_bytes(codecs.BOM_UTF8 + b"A photo of a kind person\n")
    assert load_debiaslens_prompts(text) == {"adjectives": ["A photo of a kind person"]}
    data = tmp_path / "p.json"
    data.write_bytes(codecs.BOM_UTF8 + b'{"occupations": ["A doctor"]}')
    assert load_debiaslens_prompts(data) == {"occupations": ["A doctor"]}


@pytest.mark.parametrize("name, kind", [("t.csv", "CSV"), ("t.txt", "text"), ("t.json", "JSON")])
def test_binary_prompt_file_names_the_file(tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04\x00\x00binary")  # e.g. an .xlsx saved under the CSV's name
    with pytest.raises(PromptFileError, match=rf"{name}' is not an? text {kind} file: it holds binary content"):
        load_debiaslens_prompts(path)
