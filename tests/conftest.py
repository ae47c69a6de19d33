"""Fixtures: the frontend under test (compiled kernels and the NumPy twin) and seeded data.

Generators, the function registry and comparison helpers live in ``arrays.py``; the float64
reference in ``reference.py``.  With ``CSOFTMAX_BACKEND=numpy`` only the NumPy frontend runs,
so a second CI run exercises the fallback end to end.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# The helper modules sit next to this file; make them importable whatever pytest's import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from arrays import FRONTEND_NAMES, KERNEL_FRONTENDS, make_rng  # noqa: E402

from csoftmax._dispatch import FRONTENDS  # noqa: E402

# The default profile (CI) draws the same examples every run, so that a run's verdict
# does not depend on luck; HYPOTHESIS_PROFILE=thorough explores new ones, many more.
settings.register_profile(
    "csoftmax",
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("csoftmax"), max_examples=1000,
                          derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "csoftmax"))


@pytest.fixture(params=FRONTEND_NAMES, scope="session")
def frontend(request):
    """A frontend object with the seven public functions ("cython" and/or "numpy")."""
    return FRONTENDS[request.param]


@pytest.fixture(params=list(KERNEL_FRONTENDS), scope="session")
def kernel_frontend(request):
    """Like ``frontend``, plus every compiled instruction-set variant (baseline, AVX2, ...)."""
    return KERNEL_FRONTENDS[request.param]


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: the same data on every run."""
    return make_rng(request.node.nodeid)
