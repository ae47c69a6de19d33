"""The exponentials where they underflow: subnormal probabilities and the clamp of the
kernels' exp (src/rowops.hpp, exp_nonpositive) below which every argument gives +0, -inf
included.  A row [0, d, -inf, ...] sums to exactly 1 (in double, 1 + exp(d) rounds to 1), so
its softmax at d, and the cross-entropy gradient there with reduction="none", is exp(d)
as the kernel's exp gives it: within one ulp of exp(d) rounded once, and +0
exactly where that rounds to 0, on every compiled variant, for short rows (the tiles), long
rows, a class axis that is not the last (the strided kernels) and a mask."""

from __future__ import annotations

import numpy as np
import pytest
from arrays import assert_bitwise_equal

#: arguments d = x - max over the subnormal range of exp and past the clamp
#: (float32: exp(d) < 2^-126 below -87.3, 0 below -103.97; float64: below -708.4 and -745.1)
SPANS = {"float32": (-108.0, -85.0), "float64": (-750.0, -705.0)}


def _rows(dtype, n):
    lo, hi = SPANS[dtype]
    d = np.linspace(lo, hi, 2001).astype(dtype)
    d = np.concatenate([d, np.array([-np.inf, -1e30, np.finfo(dtype).min], dtype)])
    x = np.full((d.size, n), -np.inf, dtype)
    x[:, 0] = 0
    x[:, 1] = d
    return x, d


def _expected(d):
    # exp in extended precision, then one rounding (np.longdouble is 80-bit on x86)
    with np.errstate(under="ignore"):
        return np.exp(d.astype(np.longdouble)).astype(d.dtype)


def _check_exp(got, expected, ulps, what):
    ulp = np.spacing(expected)       # the smallest subnormal below the normal range
    err = np.abs(got.astype(np.longdouble) - expected.astype(np.longdouble))
    assert np.all(err <= ulps * ulp), what
    zero = expected == 0
    assert_bitwise_equal(got[zero], np.zeros(int(zero.sum()), got.dtype), what + " (+0)")


@pytest.mark.parametrize("n", [2, 10, 100])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_and_gradient_underflow(kernel_frontend, dtype, n):
    if np.finfo(np.longdouble).nmant < 60:
        pytest.skip("needs an extended-precision long double for the reference")
    x, d = _rows(dtype, n)
    expected = _expected(d)
    p = kernel_frontend.softmax(x)
    # the compiled exp: 1 ulp; the NumPy twin's is NumPy's (2 ulp seen near 2^-126)
    ulps = 1 if kernel_frontend.name.startswith("cython") else 4
    _check_exp(p[:, 1], expected, ulps, f"softmax at d, {n} columns")
    assert np.all(p[:, 0] == 1) and np.all(p[:, 2:] == 0)
    pt = kernel_frontend.softmax(np.ascontiguousarray(x.T), axis=0)
    assert_bitwise_equal(pt[1], p[:, 1], "softmax over axis 0")
    assert_bitwise_equal(kernel_frontend.softmax(x, where=x > -np.inf), p, "softmax, where=")
    loss, g = kernel_frontend.cross_entropy_with_grad(x, np.zeros(len(x), np.int64),
                                                      reduction="none")
    assert_bitwise_equal(g[:, 1], p[:, 1], f"gradient at d, {n} columns")
    assert np.all(loss == 0) and np.all(g[:, 0] == 0)
    assert_bitwise_equal(kernel_frontend.logsumexp(x), np.zeros(len(x), dtype), "logsumexp")
