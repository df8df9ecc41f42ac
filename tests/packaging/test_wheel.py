"""What `pip install hotcache` ships: the library only (no demo, benchmarks or tests), typed, licensed."""

from __future__ import annotations

import zipfile
from email.parser import Parser
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel(built_wheel: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(built_wheel)


def test_the_wheel_holds_the_library_only(wheel: zipfile.ZipFile) -> None:
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert top == {"hotcache", next(t for t in top if t.endswith(".dist-info"))}
    names = wheel.namelist()
    assert not [n for n in names if n.startswith(("hotcache/demo/", "hotcache/bench/", "config/", "tests/"))]
    assert not [n for n in names if n.endswith(("hotcache_demo.py", "hotcache_bench.py"))]
    assert "hotcache/testing.py" in names  # public helpers for users' own tests are part of the library
    assert "hotcache/backends/lua/ratelimit.lua" in names or any(n.endswith(".lua") for n in names)


def test_the_wheel_is_typed_licensed_and_described_for_pypi(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert "hotcache/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = Parser().parsestr(wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert "Typing :: Typed" in meta.get_all("Classifier")
    body = meta.get_payload()
    assert "](" not in body  # no relative links that would break on PyPI
    assert len(body) < 5000
    requires = meta.get_all("Requires-Dist")
    assert not [r for r in requires if r.startswith("celery") and "extra ==" not in r]  # Celery is an extra
    assert any(r.startswith("celery") and 'extra == "celery"' in r for r in requires)
