"""Methods by name: register, look up (with a close-match hint), list, and resolve a spec's method."""
import pytest

from workbench.methods import get_method, list_methods, method_for_spec, register_method, registry


@pytest.fixture
def scratch_names():
    """Names registered by a test are removed afterwards, so the global registry stays as shipped."""
    before = dict(registry._METHODS)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(before)


def test_expert_heads_is_registered_on_import():
    from workbench.methods.expert_heads import expert_heads

    assert "expert_heads" in list_methods()
    assert get_method("expert_heads") is expert_heads


def test_register_as_decorator_and_as_function(scratch_names):
    @register_method("my_method")
    def my_method(model):
        return "ran"

    def other(model):
        return "other"

    assert register_method("other_method", other) is other
    assert get_method("my_method") is my_method and get_method("my_method")(None) == "ran"
    assert get_method("other_method") is other
    assert list_methods() == sorted(list_methods())
    assert {"my_method", "other_method", "expert_heads"} <= set(list_methods())


def test_registering_the_same_function_twice_is_a_no_op(scratch_names):
    def fn():
        pass

    register_method("twice", fn)
    register_method("twice", fn)
    assert get_method("twice") is fn


def test_a_taken_name_is_refused(scratch_names):
    with pytest.raises(ValueError, match=r"'expert_heads' is already registered to "
                                         r"workbench\.methods\.expert_heads\.expert_heads; pick another name"):
        register_method("expert_heads", lambda model: None)


@pytest.mark.parametrize("name", ["Expert", "expert-heads", "", "1st", None])
def test_names_must_be_snake_case(name):
    with pytest.raises(ValueError, match="method name must be snake_case"):
        register_method(name, lambda: None)


def test_only_callables_are_registered(scratch_names):
    with pytest.raises(TypeError, match=r"register_method\('not_callable'\) needs a callable .* got int"):
        register_method("not_callable", 3)


def test_unknown_name_gives_close_matches_and_the_registered_names():
    with pytest.raises(ValueError, match=r"unknown method 'expert_head'\. Did you mean 'expert_heads'\? "
                                         r"Registered methods: \[.*'expert_heads'.*\]"):
        get_method("expert_head")
    with pytest.raises(ValueError, match=r"unknown method 'zzz'\. Registered methods:"):
        get_method("zzz")
    with pytest.raises(TypeError, match="method name must be a string, got int"):
        get_method(3)


def _spec(method):
    from workbench.models import load_clip
    from workbench.primitives import InterventionSpec, ablate_heads

    return InterventionSpec.from_edits(load_clip("synthsocial"), ablate_heads([(5, 1)], op="zero"), method=method)


def test_a_spec_resolves_to_the_method_that_made_it(tmp_path):
    spec = _spec("expert_heads")
    assert method_for_spec(spec) is get_method("expert_heads")
    path = spec.save(tmp_path / "spec.json")
    assert method_for_spec(path) is get_method("expert_heads")
    assert method_for_spec(str(path)) is get_method("expert_heads")


def test_a_spec_without_a_method_or_with_an_unknown_one_is_a_clear_error():
    with pytest.raises(ValueError, match=r"the spec records no method \(provenance\['method'\] is missing or null\)"):
        method_for_spec(_spec(None))
    with pytest.raises(ValueError, match="unknown method 'expert_hedas'. Did you mean 'expert_heads'"):
        method_for_spec(_spec("expert_hedas"))
    with pytest.raises(TypeError, match="needs an InterventionSpec or a spec file path, got dict"):
        method_for_spec({"method": "expert_heads"})
