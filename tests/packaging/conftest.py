"""The wheel, built once per test run from this checkout (``pip wheel --no-build-isolation``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of hotcache-<version>-py3-none-any.whl, as `pip install .` would build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("hotcache-*.whl")
    return built
