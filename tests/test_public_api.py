import importlib

import pytest

import hotcache

MODULES = ["hotcache", "hotcache.keys", "hotcache.exceptions", "hotcache.metering", "hotcache.testing",
           "hotcache.backends.redis", "hotcache.backends.mongo", "hotcache.backends.health"]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_importable(name):
    module = importlib.import_module(name)
    # isort-style order, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions
    def order(n):
        return (0 if n.isupper() else 1 if n[:1].isupper() else 2, n)

    assert list(module.__all__) == sorted(module.__all__, key=order)
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_version():
    assert hotcache.__version__
