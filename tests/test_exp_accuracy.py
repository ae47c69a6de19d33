"""The kernels' exp over its whole range (src/exp.hpp: exp_poly, the float32 polynomial of
degree 4 in q): within one ulp of the correctly rounded exp, and correctly rounded for all
but a small fraction of the arguments.  The gradient through log_softmax exposes it alone:
out = g - exp(o) sum(g), and with g = (1, 0) the second entry is -exp(o_1), rounded once."""

from __future__ import annotations

import numpy as np
import pytest

#: arguments over the range where exp(x) is a normal number
SPANS = {"float32": (-87.0, 88.0), "float64": (-708.0, 709.0)}


def _exp_through_backward(frontend, o):
    g = np.zeros((o.size, 2), o.dtype)
    g[:, 0] = 1
    out = frontend.log_softmax_backward(g, np.stack([np.zeros_like(o), o], axis=1))
    return -out[:, 1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exp_within_one_ulp(kernel_frontend, dtype):
    if dtype == "float64" and np.finfo(np.longdouble).nmant < 60:
        pytest.skip("needs an extended-precision long double for the reference")
    rng = np.random.default_rng(2026)
    lo, hi = SPANS[dtype]
    o = np.concatenate([rng.uniform(lo, hi, 1 << 18), rng.uniform(-1.0, 1.0, 1 << 16),
                        np.linspace(lo, hi, 4097)]).astype(dtype)
    got = _exp_through_backward(kernel_frontend, o)
    ref = np.exp(o.astype(np.longdouble)).astype(dtype)   # rounded once
    err = np.abs(got.astype(np.longdouble) - ref.astype(np.longdouble)) / np.spacing(ref)
    # the compiled exp: 1 ulp of the rounded value; the NumPy twin's is NumPy's
    compiled = kernel_frontend.name.startswith("cython")
    assert err.max() <= (1 if compiled else 4), f"largest error {err.max()} ulp"
    if compiled:
        # three roundings (of r, u and 1 + u): about 9.5 % of these arguments are not
        # correctly rounded, float32 and float64 alike (AVX2 and baseline, measured; 9.4 %
        # with float32's polynomial of degree 5); one of degree 3 misrounds 57 % and
        # errs by 2 ulp (a numerical model of the same steps)
        assert np.mean(err != 0) < 0.12, f"{np.mean(err != 0):.2%} not correctly rounded"
