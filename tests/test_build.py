"""The build: the compiled kernels are the ones loaded (a broken build must never pass quietly on
the NumPy fallback), OpenMP is on where the build promises it, and show_config() says so."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
from arrays import FORCED_NUMPY

import csoftmax
from csoftmax._dispatch import FRONTENDS


def test_compiled_backend_is_loaded():
    """Fails (never skips) on the fallback, unless CSOFTMAX_BACKEND=numpy asked for it."""
    if FORCED_NUMPY:
        assert csoftmax.BACKEND == "numpy"
        return
    assert csoftmax.BACKEND == "cython", (
        f"csoftmax runs on the {csoftmax.BACKEND!r} backend: the compiled kernels did not "
        "load (set CSOFTMAX_BACKEND=numpy to test the fallback on purpose)"
    )
    assert "cython" in FRONTENDS and "numpy" in FRONTENDS
    kernels = importlib.import_module("csoftmax._kernels")
    assert kernels.__file__.endswith((".so", ".pyd")), kernels.__file__


def test_show_config(capsys):
    csoftmax.show_config()
    text = capsys.readouterr().out
    low = text.lower()
    assert csoftmax.__version__ in text
    assert csoftmax.BACKEND in low
    assert "openmp" in low
    assert "simd" in low or "avx" in low or "sse" in low or "neon" in low
    assert "thread" in low and str(csoftmax.get_num_threads()) in text
    assert "compiler" in low


@pytest.mark.skipif(
    FORCED_NUMPY or not sys.platform.startswith("linux"),
    reason="OpenMP is promised for the compiled build on Linux",
)
def test_openmp_enabled_on_linux(capsys):
    csoftmax.show_config()
    lines = [ln for ln in capsys.readouterr().out.lower().splitlines() if "openmp" in ln]
    assert lines, "show_config() has no OpenMP line"
    assert not re.search(r"\b(off|no|false|disabled|none|unavailable|serial)\b", lines[0]), (
        f"the Linux build has no OpenMP: {lines[0]!r}"
    )
