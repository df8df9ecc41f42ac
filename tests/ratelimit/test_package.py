"""The shape of hotcache.ratelimit: the public surface of the old module paths, one module per concept, and
only the middleware touching Django's request machinery."""

import ast
import importlib
from pathlib import Path

import pytest

import hotcache.ratelimit

PACKAGE = Path(hotcache.ratelimit.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_the_public_names_of_hotcache_ratelimit_are_unchanged():
    assert hotcache.ratelimit.__all__ == [
        "ALL", "MISSING_KEY_CHOICES", "POLICIES", "UNSAFE", "Decision", "InvalidRate", "Limit", "Ratelimited",
        "RuleResult", "aevaluate", "aget_usage", "default_on_missing_key", "evaluate", "get_usage", "is_ratelimited",
        "key_value", "limit_keys", "parse_rate", "ratelimit", "refuse_missing", "reset_local_state",
    ]


def test_names_other_modules_imported_from_the_old_paths_still_import():
    from hotcache.middleware import RateLimitMiddleware
    from hotcache.ratelimit import (  # noqa: F401
        ACCESSOR_KEYS,
        ADDRESS_KEYS,
        MAX_IDENTIFIER,
        MAX_NAME,
        SHARED_IDENTIFIER,
        SIMPLE_KEYS,
        settings_snapshot,
    )
    from hotcache.ratelimit_middleware import RateLimitMiddleware as Old
    from hotcache.ratelimit_middleware import add_headers  # noqa: F401

    assert Old is RateLimitMiddleware
    assert hotcache.ratelimit.ratelimit.ALL is hotcache.ratelimit.ALL


@pytest.mark.parametrize("name", MODULES)
def test_each_module_has_a_sorted_importable_all_and_stays_small(name):
    module = importlib.import_module(f"hotcache.ratelimit.{name}")

    def order(n):
        return (0 if n.isupper() else 1 if n[:1].isupper() else 2, n)

    assert list(module.__all__) == sorted(module.__all__, key=order)
    assert all(hasattr(module, attr) for attr in module.__all__)
    assert len((PACKAGE / f"{name}.py").read_text(encoding="utf-8").splitlines()) <= 400


@pytest.mark.parametrize("name", [m for m in MODULES if m != "middleware"])
def test_only_the_middleware_imports_request_machinery(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m and m.startswith(("django.http", "django.urls"))}
