import pytest

from tests.models.archs import ALL_ARCHS, build_pair, register_tiny_configs


@pytest.fixture(scope="session", autouse=True)
def _tiny_configs():
    register_tiny_configs()  # load_clip("wb-tiny") in the loading tests needs them before any build


@pytest.fixture(params=ALL_ARCHS)
def pair(request):
    return build_pair(request.param)


@pytest.fixture
def tiny():
    return build_pair("wb-tiny")


@pytest.fixture
def tiny_avg():
    return build_pair("wb-tiny-avg")
